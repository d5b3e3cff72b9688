//! The kernel boundary: the only module that touches raw kernel types and calls kernel routines.
//!
//! Everything here is a thin, safe wrapper named after what it means. The rest of the driver is
//! safe Rust over these wrappers and never learns which binding source is in use: with the `wdk`
//! feature the bindings come from windows-drivers-rs (`wdk-sys`), without it from
//! `pagelock-ddk` (mingw-w64's headers, for hosts without the WDK). On a non-Windows host the
//! same API is served by small in-process stand-ins so the portable logic can be unit-tested.

#[cfg(target_os = "windows")]
mod nt;
#[cfg(target_os = "windows")]
pub use nt::*;

#[cfg(not(target_os = "windows"))]
mod host;
#[cfg(not(target_os = "windows"))]
pub use host::*;

mod lock;
pub use lock::{SpinLock, SpinLockGuard};

use core::{
    cell::UnsafeCell,
    ffi::c_void,
    ptr::NonNull,
    sync::atomic::{AtomicPtr, Ordering},
};

use pagelock_macros::paged;

/// Major function codes of the IRPs the driver serves (fixed by the kernel ABI).
pub mod major {
    /// `IRP_MJ_CREATE`: a handle is being opened.
    pub const CREATE: u32 = 0x00;
    /// `IRP_MJ_CLOSE`: the last reference to a file object is gone.
    pub const CLOSE: u32 = 0x02;
    /// `IRP_MJ_DEVICE_CONTROL`: `DeviceIoControl`.
    pub const DEVICE_CONTROL: u32 = 0x0E;
    /// `IRP_MJ_CLEANUP`: the last handle to a file object was closed.
    pub const CLEANUP: u32 = 0x12;
}

/// A slot for one [`SectionHandle`], written once at load and read from any thread.
pub struct HandleSlot(AtomicPtr<c_void>);

impl HandleSlot {
    /// An empty slot.
    #[must_use]
    pub const fn new() -> Self {
        Self(AtomicPtr::new(core::ptr::null_mut()))
    }

    /// Stores `handle`.
    pub fn set(&self, handle: SectionHandle) {
        self.0.store(handle.into_raw(), Ordering::Release);
    }

    /// The stored handle, if any.
    #[must_use]
    pub fn get(&self) -> Option<SectionHandle> {
        // SAFETY: only `set` writes the slot, with a handle from `into_raw`.
        NonNull::new(self.0.load(Ordering::Acquire))
            .map(|raw| unsafe { SectionHandle::from_raw(raw) })
    }
}

impl Default for HandleSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Data that may only be touched while a given [`SpinLock`] is held.
///
/// The data can live in a pageable section while the lock lives in resident memory: the
/// type only ties access to the lock, not placement.
///
/// The tie is checked at run time, as Rust-for-Linux's `LockedBy` checks it: [`Self::access`]
/// compares the guard's lock with the owner, one pointer comparison per access. Tying it at
/// compile time would need the lock in the type: a `&'static SpinLock` const generic (unstable,
/// `adt_const_params`), or a brand type per lock, which safe code cannot keep unique (nothing
/// stops a second lock of the same brand), so it would need an unsafe constructor: a contract
/// for every lock declared instead of a check the compiler cannot get wrong.
pub struct LockedBy<T> {
    owner: &'static SpinLock,
    data: UnsafeCell<T>,
}

// SAFETY: every access to `data` requires a guard of `owner`, which serialises the threads.
unsafe impl<T: Send> Sync for LockedBy<T> {}

impl<T> LockedBy<T> {
    /// `data`, guarded by `owner`.
    pub const fn new(owner: &'static SpinLock, data: T) -> Self {
        Self { owner, data: UnsafeCell::new(data) }
    }

    /// The data's address, without touching it (for `MmLockPagableDataSection`).
    pub const fn address(&self) -> *const c_void {
        self.data.get().cast_const().cast()
    }

    /// The data, for as long as the guard of its owner is held.
    ///
    /// Always inlined: it runs in its caller's section (the locked work's, `PAGELK`), not as
    /// a resident function of its own that only locked code calls.
    ///
    /// # Panics
    /// If `guard` holds another lock.
    #[expect(clippy::inline_always, reason = "a resident copy would be called by PAGELK only")]
    #[inline(always)]
    pub fn access<'a>(&'a self, guard: &'a mut SpinLockGuard<'_>) -> &'a mut T {
        assert!(guard.holds(self.owner), "data reached with a guard held by another lock");
        // SAFETY: the guard proves this thread holds `owner`, and borrowing it mutably for
        // `'a` keeps any other access through the same guard out for that long.
        unsafe { &mut *self.data.get() }
    }
}

/// A due time `ms` milliseconds from now, as `KeSetTimerEx` takes it.
///
/// A negative `DueTime` is relative to the current system time, in 100 ns units (Microsoft's
/// `KeSetTimerEx` page); a positive one is an absolute time, long past for small values.
#[must_use]
#[inline]
pub const fn relative_due_time(ms: u32) -> i64 {
    -(ms as i64 * 10_000)
}

/// UTF-16 of an ASCII string, NUL-terminated; `N` is its length plus one.
///
/// # Panics
/// At compile time, if `ascii` is not ASCII or `N` is not its length plus one.
#[must_use]
pub const fn ascii_to_utf16<const N: usize>(ascii: &str) -> [u16; N] {
    let bytes = ascii.as_bytes();
    assert!(bytes.len() + 1 == N);
    let mut wide = [0u16; N];
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii());
        wide[i] = bytes[i] as u16;
        i += 1;
    }
    wide
}

/// A [`WideName`] from a constant ASCII string, converted at compile time.
#[macro_export]
#[doc(hidden)]
macro_rules! wide_name {
    ($ascii:expr) => {{
        const WIDE: [u16; $ascii.len() + 1] = $crate::kernel::ascii_to_utf16($ascii);
        $crate::kernel::WideName::new(&WIDE)
    }};
}

/// Whether the queue of `WAIT`s still takes a handle's requests: open from create until the
/// handle's `IRP_MJ_CLEANUP`, closed from then on. Part of the per-open state.
///
/// Cleanup comes when the last handle to the file object is closed, not when its requests are
/// done: on a handle opened for overlapped I/O, a `WAIT` of it may still be in its dispatch
/// routine on another processor, on its way to the queue. Queued after cleanup drained the
/// handle's waits, it would stay queued until its timeout, holding the file object, so its
/// close, its locks and an unload with it.
///
/// # Invariants
/// Closed only under the queue's spin lock ([`close_gate`]), and read by the queue's insert
/// callback under the same lock; never opened again. Cleanup closes it before it drains the
/// handle's waits (whose removals take the lock after the close), so every `WAIT` of the handle
/// is either queued before the drain, which completes it, or refused by the insert.
pub struct QueueGate(core::sync::atomic::AtomicBool);

impl QueueGate {
    /// An open gate.
    #[must_use]
    pub const fn new() -> Self {
        Self(core::sync::atomic::AtomicBool::new(false))
    }

    /// Whether cleanup closed it. Meaningful under the queue's lock, where it cannot change.
    #[inline]
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Closes it: only [`close_gate`] calls this, under the queue's lock.
    #[inline]
    fn close(&self) {
        // INVARIANT: callers hold the queue's lock.
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Default for QueueGate {
    fn default() -> Self {
        Self::new()
    }
}

/// Deletes every item of the list linked from `first` through `next`, each once.
///
/// `delete` may leave the item it deletes on the list: each item's successor is read before
/// the item is deleted, never after, and the list's head is read once.
///
/// The driver's devices are such a list: `IoDeleteDevice` only marks a device for deletion,
/// and the I/O manager unlinks it from its driver's list (and frees it) in
/// `IopCompleteUnloadOrDelete`, once its reference count is zero (the WRK's
/// `io/iomgr/iosubs.c` and `internal.c`). Reading the head again after each delete would meet a
/// device that is still referenced again and again; reading a device's successor after its
/// delete could read freed memory.
#[paged]
pub fn delete_each<T: Copy>(
    first: Option<T>,
    next: impl Fn(T) -> Option<T>,
    delete: impl FnMut(T),
) {
    let mut delete = delete;
    let mut current = first;
    while let Some(item) = current {
        current = next(item);
        delete(item);
    }
}

/// What an `IRP_MJ_CREATE` asks to open besides the device itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateRequest {
    /// A name below the device's (`\Device\PageLock\anything`): the file object's `FileName`,
    /// what is left of the path once the object manager reached the device, is not empty.
    pub names_a_file: bool,
    /// The caller asked for a directory: `FILE_DIRECTORY_FILE` in the create options.
    pub directory: bool,
}

/// Which file object a request came on: its address, compared and never dereferenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId(pub usize);

/// Which queued waits a removal takes ([`dequeue`]), passed to the queue's peek routine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Any queued wait (`SIGNAL` of every handle).
    Any,
    /// The waits of one file object (`SIGNAL` of the caller's, `IRP_MJ_CLEANUP`).
    File(FileId),
    /// The waits whose deadline this performance-counter reading has reached (the timer's DPC).
    ExpiredBy(u64),
}

impl Filter {
    /// Whether a wait queued on `file` with `deadline` is one this filter takes.
    ///
    /// Resident: the queue's peek routine calls it under the queue's spin lock.
    #[must_use]
    #[inline]
    pub fn matches(self, file: FileId, deadline: u64) -> bool {
        match self {
            Self::Any => true,
            Self::File(wanted) => wanted == file,
            Self::ExpiredBy(now) => deadline <= now,
        }
    }
}

/// A kernel status code.
pub type Status = i32;

/// Interrupt request level, as the kernel reports it.
pub type Irql = u8;
/// `PASSIVE_LEVEL`: threads run here; anything may page.
pub const PASSIVE_LEVEL: Irql = 0;
/// `APC_LEVEL`: the highest level at which pageable code and the Mm lock routines may run.
pub const APC_LEVEL: Irql = 1;
/// `DISPATCH_LEVEL`: spin locks hold the processor here; a page fault is a bugcheck.
pub const DISPATCH_LEVEL: Irql = 2;

/// Status codes the driver returns: the protocol's, which callers compare against.
pub use pagelock_protocol::status;
