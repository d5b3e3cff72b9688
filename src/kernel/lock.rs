//! The driver's spin lock: one lock type and one guard over a two-function backend, the
//! kernel's routines in the image (`nt`) and an in-process stand-in on the build host (`host`).
//!
//! The lock lives in resident memory; the data it guards may be pageable ([`super::LockedBy`]).
//! Holding it means running at `DISPATCH_LEVEL` on this processor, which is why the guard is
//! neither `Send` nor `Sync`: dropping it on another processor would restore an IRQL there that
//! was never raised.

use core::{cell::UnsafeCell, marker::PhantomData, ptr};

use super::{Irql, SpinBackend};

/// What a spin lock is made of: its storage and the two routines that take and give it back.
///
/// # Safety
/// An implementation guarantees, for a `state` that started as [`Self::UNLOCKED`] and that only
/// these two functions ever touch:
/// - [`acquire`](Self::acquire) returns only once the calling thread holds the lock, with no
///   other thread holding it, and the IRQL raised to `DISPATCH_LEVEL`; it returns the IRQL from
///   before the raise;
/// - [`release`](Self::release), given that IRQL, gives the lock back and returns to it;
/// - accesses made while holding the lock happen before those of the next holder.
pub unsafe trait Backend {
    /// The lock's storage.
    type State;
    /// The storage of a released lock.
    const UNLOCKED: Self::State;

    /// Raises to `DISPATCH_LEVEL` and takes the lock; returns the IRQL from before.
    ///
    /// # Safety
    /// `state` points to this backend's storage of a live lock; the caller runs at IRQL <=
    /// `DISPATCH_LEVEL` and does not hold this lock already.
    unsafe fn acquire(state: *mut Self::State) -> Irql;

    /// Releases the lock and returns to `previous`.
    ///
    /// # Safety
    /// The calling thread holds the lock through [`Self::acquire`] on `state`, which returned
    /// `previous`, and has not released it since; it runs on the processor it acquired on.
    unsafe fn release(state: *mut Self::State, previous: Irql);
}

/// A spin lock.
pub struct SpinLock {
    state: UnsafeCell<<SpinBackend as Backend>::State>,
}

// SAFETY: the state is made to be shared between processors, and every access to it goes
// through the backend's acquire and release, which serialise the holders (`Backend`'s contract).
unsafe impl Sync for SpinLock {}

impl SpinLock {
    /// A released lock.
    #[must_use]
    pub const fn new() -> Self {
        Self { state: UnsafeCell::new(SpinBackend::UNLOCKED) }
    }

    /// Raises to `DISPATCH_LEVEL` and takes the lock; the guard releases it when dropped.
    ///
    /// Resident and never inlined: the acquire must run from resident code whatever section
    /// its caller is in. Call at IRQL <= `DISPATCH_LEVEL`, never while holding this lock.
    #[pagelock_macros::resident]
    pub fn acquire(&self) -> SpinLockGuard<'_> {
        // SAFETY: `state` is this live lock's storage, started as `UNLOCKED` and touched only
        // by the backend; every path to here runs at IRQL <= DISPATCH_LEVEL, and the driver
        // takes its one lock only where it does not hold it.
        let previous = unsafe { SpinBackend::acquire(self.state.get()) };
        // INVARIANT: this thread holds `self`, and `previous` is the IRQL from before.
        SpinLockGuard { lock: self, previous, not_send: PhantomData }
    }
}

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

/// Proof that a [`SpinLock`] is held; dropping it releases the lock and restores the IRQL.
///
/// # Invariants
/// `lock` is held by this thread, which runs at `DISPATCH_LEVEL` on the processor it acquired
/// on, and `previous` is the IRQL from before the acquire.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a> {
    lock: &'a SpinLock,
    previous: Irql,
    /// Neither `Send` nor `Sync`: the IRQL it restores belongs to this processor.
    not_send: PhantomData<*mut ()>,
}

impl SpinLockGuard<'_> {
    /// Whether this guard holds `lock`.
    #[must_use]
    pub fn holds(&self, lock: &SpinLock) -> bool {
        ptr::eq(self.lock, lock)
    }
}

impl Drop for SpinLockGuard<'_> {
    /// Resident and never inlined, like the acquire.
    #[pagelock_macros::resident]
    fn drop(&mut self) {
        // SAFETY: by the invariant this thread holds the lock, acquired on this processor
        // (the guard cannot leave the thread), and `previous` is what the acquire returned.
        unsafe { SpinBackend::release(self.lock.state.get(), self.previous) }
    }
}
