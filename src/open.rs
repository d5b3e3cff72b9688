//! Per-open state: the locks one handle holds, owned so that closing cannot forget one.
//!
//! Several requests of one handle can be inside the driver at once: the I/O manager serialises
//! the requests of a file object only when it was opened for synchronous I/O, so a handle
//! opened with `FILE_FLAG_OVERLAPPED` can have several `IOCTL_LOCK` and `IOCTL_UNLOCK` running
//! on several processors. The state is therefore only ever shared (`&Open`), and its counts
//! are atomics changed in an order that keeps the memory manager's lock count at or above the
//! driver's own at every instant: a lock is taken before it is counted, and uncounted before it
//! is released.

use core::sync::atomic::{AtomicU32, Ordering};

use pagelock_macros::paged;
use pagelock_protocol::MAX_EXTRA_LOCKS;

use crate::{
    kernel::{CreateRequest, QueueGate, Status, status},
    sections::{LOCKED_CODE, PAGED_DATA},
};

/// Checks what an `IRP_MJ_CREATE` asks to open, before anything is allocated or locked, so
/// that a refusal changes nothing.
///
/// The device has no namespace (Microsoft's "Controlling Device Namespace Access": a driver
/// that has none fails a create whose `FileObject->FileName` is not empty; the device's
/// `FILE_DEVICE_SECURE_OPEN` only extends its DACL to such names). A name below it names
/// nothing: `STATUS_OBJECT_NAME_NOT_FOUND`, what the object manager answers for a name that does
/// not exist, and what `CreateFileW` reports as `ERROR_FILE_NOT_FOUND`.
/// (`STATUS_OBJECT_PATH_NOT_FOUND` would say that a directory on the way is missing; the device
/// is the end of the path.) Nor is it a directory: `STATUS_NOT_A_DIRECTORY`, as the serial and
/// parallel-port drivers (Microsoft's samples, the `serial.sys` of `ReactOS`) answer
/// `FILE_DIRECTORY_FILE`.
///
/// # Errors
/// `STATUS_OBJECT_NAME_NOT_FOUND` for a name below the device's, else `STATUS_NOT_A_DIRECTORY`
/// for a directory.
#[paged]
pub fn check_create(request: CreateRequest) -> Result<(), Status> {
    if request.names_a_file {
        Err(status::OBJECT_NAME_NOT_FOUND)
    } else if request.directory {
        Err(status::NOT_A_DIRECTORY)
    } else {
        Ok(())
    }
}

/// At most this many pairs per handle: the one taken at create and the extra ones.
const MAX_PAIRS: u32 = MAX_EXTRA_LOCKS + 1;

/// What one open handle holds: pairs of locks, one on each lockable section, from create to
/// close; the first taken at create, one more with each `IOCTL_LOCK`. Lives in nonpaged pool,
/// in the file object.
///
/// # Invariants
/// - The driver holds at least `held` locks on each of `PAGELK` and `PAGEDATA` on behalf of this
///   value, at every instant (a pair is counted only after both locks are taken, and uncounted
///   before either is released).
/// - `held <= reserved <= MAX_PAIRS`: `reserved` also counts the pairs a `LOCK` in progress is
///   taking, so concurrent `LOCK`s cannot pass the nesting limit together.
/// - After [`Open::lock_sections`] succeeded, `held >= 1` until the value drops.
/// - `waits` is closed by the handle's `IRP_MJ_CLEANUP` and stays closed (see [`QueueGate`]).
pub struct Open {
    held: AtomicU32,
    reserved: AtomicU32,
    waits: QueueGate,
}

impl Open {
    /// A state that holds nothing yet; allocate it first, then lock, so a failed allocation
    /// needs no unwinding.
    #[must_use]
    pub const fn new() -> Self {
        // INVARIANT: nothing held, nothing reserved, the queue open to the handle's waits.
        Self { held: AtomicU32::new(0), reserved: AtomicU32::new(0), waits: QueueGate::new() }
    }

    /// Whether the queue still takes this handle's `WAIT`s (closed by its cleanup).
    #[must_use]
    pub const fn waits(&self) -> &QueueGate {
        &self.waits
    }

    /// Locks both sections by handle for this open (`IRP_MJ_CREATE`).
    ///
    /// # Errors
    /// `STATUS_INVALID_DEVICE_STATE` when the handles were never taken; nothing changes.
    #[paged]
    pub fn lock_sections(&self) -> Result<(), Status> {
        self.add_pair(|reserved| reserved == 0).map(|_| ())
    }

    /// Locks held on each section by this handle.
    #[must_use]
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Acquire)
    }

    /// `IOCTL_LOCK`: one more lock on each section. Returns the extra locks held after it.
    ///
    /// # Errors
    /// `STATUS_INVALID_DEVICE_STATE` at the nesting limit; nothing changes.
    #[paged]
    pub fn lock_extra(&self) -> Result<u32, Status> {
        // The count this LOCK made, not a later reading that another LOCK may have raised.
        let held = self.add_pair(|reserved| (1..MAX_PAIRS).contains(&reserved))?;
        Ok(held - 1)
    }

    /// `IOCTL_UNLOCK`: releases one extra lock on each section. Returns the extra locks
    /// held after it.
    ///
    /// # Errors
    /// `STATUS_INVALID_DEVICE_STATE` when no extra lock is held; nothing changes.
    #[paged]
    pub fn unlock_extra(&self) -> Result<u32, Status> {
        // INVARIANT: uncounted first (so the count never exceeds the memory manager's), then
        // released; the check and the decrement are one atomic step, and `held >= 1` stays
        // true for the pair taken at create.
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| (h >= 2).then(|| h - 1))
            .map_err(|_| status::INVALID_DEVICE_STATE)?;
        Self::release_pair();
        // INVARIANT: `held` fell before `reserved`, so `held <= reserved` still holds.
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        Ok(before - 2)
    }

    /// Releases the `held` pairs a handle counted.
    #[paged]
    fn release_pairs(held: u32) {
        for _ in 0..held {
            Self::release_pair();
        }
    }

    /// Reserves a pair when `allowed(reserved)` says so, locks both sections, then counts
    /// the pair; returns the pairs held counting it. On failure nothing stays changed.
    #[paged]
    fn add_pair(&self, allowed: impl Fn(u32) -> bool) -> Result<u32, Status> {
        // INVARIANT: `reserved` rises before `held`, and only where `allowed` (which its
        // callers bound by `MAX_PAIRS`) admits it, so `held <= reserved <= MAX_PAIRS`.
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| allowed(r).then(|| r + 1))
            .map_err(|_| status::INVALID_DEVICE_STATE)?;
        // MmLockPagableSectionByHandle at PASSIVE_LEVEL, code then data.
        let locked = LOCKED_CODE.lock_by_handle()
            && (PAGED_DATA.lock_by_handle() || {
                LOCKED_CODE.unlock_held();
                false
            });
        if !locked {
            // INVARIANT: `held` never counted this pair; the reservation is undone.
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(status::INVALID_DEVICE_STATE);
        }
        // INVARIANT: both locks are taken before the pair is counted.
        Ok(self.held.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Releases one pair that is no longer counted.
    #[paged]
    fn release_pair() {
        // MmUnlockPagableImageSection at PASSIVE_LEVEL (UNLOCK, close), data then code;
        // at zero a section may page out, so nothing of it may run at DISPATCH_LEVEL after.
        PAGED_DATA.unlock_held();
        LOCKED_CODE.unlock_held();
    }
}

impl Default for Open {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Open {
    /// `IRP_MJ_CLOSE`: releases every pair this handle still holds. Exclusive by then: close
    /// comes only after the last request of the file object has completed.
    #[paged]
    fn drop(&mut self) {
        Self::release_pairs(*self.held.get_mut());
        // INVARIANT: the value is gone; nothing is held on its behalf.
        *self.held.get_mut() = 0;
        *self.reserved.get_mut() = 0;
    }
}
