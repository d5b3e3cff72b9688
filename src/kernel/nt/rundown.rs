//! Rundown protection of the dispatch routines (`EX_RUNDOWN_REF`): unload waits until no thread
//! is running the driver's dispatch code.
//!
//! The I/O manager calls `DriverUnload` once the last reference to the driver's devices is
//! gone, and frees the image when it returns. A request's reference goes away when it is
//! completed, not when its dispatch routine returns: the I/O manager finishes a completed
//! device control request in a special kernel APC of the requesting thread
//! (`IopfCompleteRequest`, the WRK's `io/iomgr/iosubs.c`; it defers that work to the system
//! service only for file-system controls, `IopXxxControlFile` in `internal.c`), and the APC can
//! run as soon as the IRP is completed, by another processor or by the dispatch routine itself,
//! while the thread is still returning through `PAGE` code. The file object's last reference can
//! go there, its close then comes from a worker thread, and the unload after it. Each dispatch
//! routine therefore holds a rundown reference for as long as it runs, and unload first waits
//! for the last one.
//!
//! What stays is the return from the dispatch trampoline after `ExReleaseRundownProtection`
//! returns: a few instructions, against the rest of unload and the kernel's own work before it
//! frees the image. It is the window that `IoReleaseRemoveLockAndWait` leaves too. Those few
//! instructions are resident (`.text`), the release's and the trampoline's: from pageable code
//! the way back could fault on a trimmed page and wait for the disk while the image is freed.

use core::cell::UnsafeCell;

use super::sys::{EX_RUNDOWN_REF, ntddk};

/// The rundown reference of the dispatch routines. Resident (`.data`): dispatch takes it
/// whatever is locked.
///
/// # Invariants
/// Initialised by [`init`] in `DriverEntry` before any dispatch routine is set; touched only
/// through the kernel's rundown routines afterwards.
pub struct Rundown(UnsafeCell<EX_RUNDOWN_REF>);

// SAFETY: the kernel's rundown routines synchronise every access (interlocked operations).
unsafe impl Sync for Rundown {}

/// The dispatch routines' rundown reference.
pub static DISPATCHING: Rundown = Rundown(UnsafeCell::new(EX_RUNDOWN_REF {
    __bindgen_anon_1: super::sys::_EX_RUNDOWN_REF__bindgen_ty_1 { Count: 0 },
}));

/// A dispatch routine running: dropping it releases its reference on the rundown it came from.
///
/// # Invariants
/// Holds one reference on its `Rundown`, taken by [`Rundown::enter`].
#[must_use = "the reference is released when the guard drops"]
pub struct Running(&'static Rundown);

impl Rundown {
    /// `ExInitializeRundownProtection`: no reference held, none refused. `DriverEntry` only.
    #[pagelock_macros::init]
    pub fn init(&self) {
        // SAFETY: the reference is resident storage that no dispatch routine can reach yet.
        unsafe { ntddk::ExInitializeRundownProtection(self.0.get()) };
        // INVARIANT: initialised before any dispatch routine is set.
    }

    /// `ExAcquireRundownProtection`: a reference for the calling dispatch routine, held until
    /// the guard drops; None once unload began waiting.
    #[pagelock_macros::paged]
    pub fn enter(&'static self) -> Option<Running> {
        // SAFETY: initialised at load (invariant); any IRQL up to DISPATCH_LEVEL.
        let taken = unsafe { ntddk::ExAcquireRundownProtection(self.0.get()) };
        // INVARIANT: the reference was granted; the guard releases it on this rundown.
        (taken != 0).then_some(Running(self))
    }

    /// `ExWaitForRundownProtectionRelease`: refuses new references and waits until every
    /// dispatch routine has released its own. Unload only, at `PASSIVE_LEVEL`.
    #[pagelock_macros::paged]
    pub fn wait(&self) {
        // SAFETY: initialised at load (invariant); unload runs at PASSIVE_LEVEL.
        unsafe { ntddk::ExWaitForRundownProtectionRelease(self.0.get()) };
    }
}

impl Drop for Running {
    /// `ExReleaseRundownProtection`: the last call of a dispatch routine into the kernel.
    /// Resident, as the dispatch trampoline it returns to: after the release, the way back out
    /// of the image must not fault.
    #[pagelock_macros::resident]
    fn drop(&mut self) {
        // SAFETY: by the invariant this guard holds one reference on `self.0`, released once.
        unsafe { ntddk::ExReleaseRundownProtection(self.0.0.get()) };
    }
}
