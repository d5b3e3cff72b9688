//! The Windows kernel, through whichever binding source the build selected.

use core::{
    ffi::{CStr, c_void},
    ptr::{self, NonNull},
};

use pagelock_macros::{init, paged, resident};

#[cfg(feature = "wdk")]
use wdk_sys as sys;

#[cfg(all(not(feature = "wdk"), feature = "mingw-ddk"))]
use pagelock_ddk as sys;

#[cfg(not(any(feature = "wdk", feature = "mingw-ddk")))]
compile_error!(
    "select a binding source: feature `wdk` (Windows + WDK) or `mingw-ddk` (cross build)"
);

#[cfg(not(feature = "wdk"))]
mod runtime;

mod irp;
mod queue;
mod rundown;
mod security;

pub use irp::{Control, Irp};
pub use queue::{
    QueuedWait, close_gate, dequeue, file_of, flush_dpcs, init_queue, queue_wait, timer_start,
    timer_stop,
};
use sys::{DEVICE_OBJECT, DRIVER_OBJECT, IRP, NTSTATUS, PCUNICODE_STRING, UNICODE_STRING, ntddk};

use super::{Irql, Status, status};

/// `DPFLTR_IHVDRIVER_ID`: the debug-print component for third-party drivers.
const DPFLTR_IHVDRIVER_ID: u32 = 77;
/// `DPFLTR_ERROR_LEVEL`: always shown.
const DPFLTR_ERROR_LEVEL: u32 = 0;
/// `DPFLTR_INFO_LEVEL`: shown when the component's filter asks for it.
const DPFLTR_INFO_LEVEL: u32 = 3;

/// The current IRQL of this processor. Inlined into its caller's section, whichever it is:
/// the routine it calls is the kernel's.
#[inline]
#[must_use]
pub fn current_irql() -> Irql {
    // SAFETY: KeGetCurrentIrql has no preconditions and is callable at any IRQL.
    unsafe { ntddk::KeGetCurrentIrql() }
}

/// Writes a line to the kernel debugger at informational level.
#[paged]
pub fn log_info(message: &CStr) {
    // SAFETY: the format is ours and takes exactly the one NUL-terminated string passed.
    unsafe {
        ntddk::DbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            DPFLTR_INFO_LEVEL,
            c"pagelock: %s\n".as_ptr(),
            message.as_ptr(),
        );
    }
}

/// Writes a line with two numbers to the kernel debugger at error level (always shown).
#[paged]
pub fn log_error(message: &CStr, first: u32, second: u32) {
    // SAFETY: the format is ours and takes exactly one string and two 32-bit integers.
    unsafe {
        ntddk::DbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            DPFLTR_ERROR_LEVEL,
            c"pagelock: %s (%u, %u)\n".as_ptr(),
            message.as_ptr(),
            first,
            second,
        );
    }
}

/// The performance counter now, and its frequency in counts per second.
///
/// Resident: the timer's DPC reads it to expire waits, whether or not a handle holds the
/// lockable sections. Callable at any IRQL.
#[must_use]
#[resident]
pub fn performance_counter() -> (u64, u64) {
    let mut frequency = sys::LARGE_INTEGER::default();
    // SAFETY: callable at any IRQL; `frequency` is a valid out-parameter.
    let now = unsafe { ntddk::KeQueryPerformanceCounter(&raw mut frequency) };
    // SAFETY: LARGE_INTEGER is a union whose every member covers the same 64 bits.
    let now = unsafe { now.QuadPart };
    // SAFETY: as above.
    let frequency = unsafe { frequency.QuadPart };
    (now.cast_unsigned(), frequency.cast_unsigned())
}

/// Moves `value` into nonpaged pool, or gives it back if the pool is exhausted.
///
/// `Box::new` would bugcheck on failure; a driver must fail the request instead.
///
/// # Errors
/// Returns `value` when the allocation fails.
pub fn try_box<T>(value: T) -> Result<alloc::boxed::Box<T>, T> {
    const { assert!(size_of::<T>() != 0) };
    let layout = core::alloc::Layout::new::<T>();
    // SAFETY: `layout` has a non-zero size (asserted at compile time above), as `alloc` requires.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if raw.is_null() {
        return Err(value);
    }
    // SAFETY: `raw` is a fresh allocation of `T`'s layout from the global allocator, which is
    // exactly what `Box::from_raw` requires once it holds a valid `T`.
    unsafe {
        raw.write(value);
    }
    // SAFETY: see above; `raw` now holds an initialised `T`.
    Ok(unsafe { alloc::boxed::Box::from_raw(raw) })
}

/// A handle to one of this image's pageable sections, as `MmLockPagableDataSection` returns it.
///
/// # Invariants
/// The value came from `MmLockPagableDataSection` for this driver's image, and so stays valid
/// until the driver unloads, whatever its lock count.
#[derive(Clone, Copy)]
pub struct SectionHandle(NonNull<c_void>);

// SAFETY: the handle is an opaque token the memory manager accepts from any thread.
unsafe impl Send for SectionHandle {}
// SAFETY: as above; sharing it only lets other threads pass it to the Mm routines.
unsafe impl Sync for SectionHandle {}

impl SectionHandle {
    /// The raw handle, for [`super::HandleSlot`].
    pub(super) const fn into_raw(self) -> *mut c_void {
        self.0.as_ptr()
    }

    /// A handle back from [`Self::into_raw`].
    ///
    /// # Safety
    /// `raw` must come from `into_raw` of a handle of this image.
    pub(super) const unsafe fn from_raw(raw: NonNull<c_void>) -> Self {
        // INVARIANT: by the caller's contract `raw` is such a handle, taken apart by `into_raw`.
        Self(raw)
    }

    /// Locks the section that contains `address` (the expensive path) and returns its handle.
    /// The section's count goes up by one. Call at IRQL <= `APC_LEVEL`.
    #[must_use]
    pub fn lock_by_address(address: *const c_void) -> Option<Self> {
        // SAFETY: the callers pass the address of an item of this image's own pageable
        // sections, at PASSIVE_LEVEL (asserted by the section placement of every caller).
        let raw = unsafe { ntddk::MmLockPagableDataSection(address.cast_mut()) };
        // INVARIANT: a non-null return of `MmLockPagableDataSection` for this image's address.
        NonNull::new(raw).map(Self)
    }

    /// Adds one lock by handle (the cheap path). Call at IRQL <= `APC_LEVEL`.
    pub fn lock(self) {
        // SAFETY: by the type's invariant the handle is valid while the driver is loaded.
        unsafe { ntddk::MmLockPagableSectionByHandle(self.0.as_ptr()) }
    }

    /// Removes one lock; at zero the section may be paged out. Call at IRQL <= `APC_LEVEL`,
    /// and only to release a lock this driver took.
    pub fn unlock(self) {
        // SAFETY: by the type's invariant the handle is valid; the lock-count bookkeeping in
        // `sections` pairs every call with an earlier lock.
        unsafe { ntddk::MmUnlockPagableImageSection(self.0.as_ptr()) }
    }
}

/// The kernel's spin lock routines: the backend of [`super::SpinLock`].
pub(super) struct SpinBackend;

// SAFETY: KeAcquireSpinLockRaiseToDpc raises to DISPATCH_LEVEL, spins until this processor
// owns the lock, and returns the IRQL from before; KeReleaseSpinLock releases it and returns
// to that IRQL; both order memory as a lock must. A zeroed KSPIN_LOCK is a released one (all
// that KeInitializeSpinLock does).
unsafe impl super::lock::Backend for SpinBackend {
    type State = sys::KSPIN_LOCK;
    const UNLOCKED: sys::KSPIN_LOCK = 0;

    #[inline]
    unsafe fn acquire(state: *mut sys::KSPIN_LOCK) -> Irql {
        // SAFETY: by the caller's contract `state` is a live, initialised spin lock, not held
        // by this thread, and the IRQL is <= DISPATCH_LEVEL.
        unsafe { ntddk::KeAcquireSpinLockRaiseToDpc(state) }
    }

    #[inline]
    unsafe fn release(state: *mut sys::KSPIN_LOCK, previous: Irql) {
        // SAFETY: by the caller's contract this thread holds the lock on this processor and
        // `previous` is the IRQL its acquire returned.
        unsafe { ntddk::KeReleaseSpinLock(state, previous) }
    }
}

/// A NUL-terminated UTF-16 kernel object name, built at compile time by [`crate::wide_name`].
///
/// # Invariants
/// The slice is not empty and its last element is NUL: `unicode` counts the length without
/// it.
pub struct WideName(&'static [u16]);

impl WideName {
    /// Wraps a NUL-terminated UTF-16 name.
    ///
    /// # Panics
    /// At compile time, if `wide` is not NUL-terminated.
    #[must_use]
    pub const fn new(wide: &'static [u16]) -> Self {
        assert!(!wide.is_empty() && wide[wide.len() - 1] == 0);
        // INVARIANT: asserted just above.
        Self(wide)
    }

    /// A `UNICODE_STRING` over this name: `MaximumLength` is the buffer's size in bytes (the
    /// kernel may read that much of it: `NtCreateSymbolicLinkObject` copies a link target's
    /// whole `MaximumLength`), `Length` the name's, without its NUL.
    const fn unicode(&self) -> UNICODE_STRING {
        #[expect(clippy::cast_possible_truncation, reason = "names are a few dozen characters")]
        let size = size_of_val(self.0) as u16;
        UNICODE_STRING { Length: size - 2, MaximumLength: size, Buffer: self.0.as_ptr().cast_mut() }
    }
}

/// The driver object the I/O manager handed to `DriverEntry`.
///
/// # Invariants
/// Points to this driver's live `DRIVER_OBJECT`.
pub struct Driver(NonNull<DRIVER_OBJECT>);

impl Driver {
    /// The bounds of the loaded image in memory.
    const fn image(&self) -> (*const u8, usize) {
        // SAFETY: by the invariant the object is live; these fields are set before DriverEntry.
        let driver = unsafe { self.0.as_ref() };
        (driver.DriverStart.cast::<u8>().cast_const(), driver.DriverSize as usize)
    }

    /// Size of the image section called `name`, from the image's own section table, if
    /// `address` lies inside it.
    #[must_use]
    #[init]
    pub fn section_size(&self, name: &[u8; 8], address: *const c_void) -> Option<u32> {
        let (base, size) = self.image();
        // SAFETY: the image stays mapped while the driver is loaded, and its headers, which the
        // loader validated, lie in its first page; the slice covers no more than the image.
        let headers = unsafe { core::slice::from_raw_parts(base, size.min(4096)) };
        let offset = (address as usize).checked_sub(base as usize)?;
        crate::sections::size_in_image(headers, name, offset)
    }

    /// Routes the four major functions the driver serves to the dispatch trampoline, and sets
    /// the unload routine.
    #[init]
    fn set_routines(&mut self) {
        // SAFETY: by the invariant the object is live, and DriverEntry owns it exclusively.
        let driver = unsafe { self.0.as_mut() };
        for major in
            [sys::IRP_MJ_CREATE, sys::IRP_MJ_CLEANUP, sys::IRP_MJ_CLOSE, sys::IRP_MJ_DEVICE_CONTROL]
        {
            driver.MajorFunction[major as usize] = Some(dispatch_irp);
        }
        driver.DriverUnload = Some(driver_unload);
    }
}

/// A device object this driver created, deleted when the value drops.
///
/// # Invariants
/// Points to a device created by `IoCreateDevice` and not yet deleted.
pub struct Device(NonNull<DEVICE_OBJECT>);

// SAFETY: device objects are kernel objects usable from any thread.
unsafe impl Send for Device {}

impl Device {
    /// Creates an unnamed-extension device `name` of `device_type`, opened only with
    /// `FILE_DEVICE_SECURE_OPEN` semantics, and gives it a DACL that admits only
    /// Administrators and SYSTEM.
    ///
    /// # Errors
    /// The status of the routine that failed; nothing is left behind.
    #[init]
    pub fn create(driver: &Driver, name: &WideName, device_type: u32) -> Result<Self, Status> {
        let mut unicode = name.unicode();
        let mut raw: *mut DEVICE_OBJECT = ptr::null_mut();
        // SAFETY: the driver object is live; `unicode` points to a NUL-terminated name that
        // outlives the call; `raw` is a valid out-parameter. PASSIVE_LEVEL (DriverEntry).
        let status = unsafe {
            ntddk::IoCreateDevice(
                driver.0.as_ptr(),
                0,
                &raw mut unicode,
                device_type,
                sys::FILE_DEVICE_SECURE_OPEN,
                0,
                &raw mut raw,
            )
        };
        if !status::is_success(status) {
            return Err(status);
        }
        // INVARIANT: `IoCreateDevice` succeeded, and nothing has deleted the device since.
        let device = Self(NonNull::new(raw).ok_or(status::UNSUCCESSFUL)?);
        security::admit_only_administrators_and_system(device.0.as_ptr().cast())?;
        Ok(device)
    }

    /// Keeps the device until unload: the I/O manager owns it through the driver object.
    pub const fn keep(self) {
        core::mem::forget(self);
    }
}

impl Drop for Device {
    #[paged]
    fn drop(&mut self) {
        // SAFETY: by the invariant the device exists and nothing else deletes it.
        unsafe { ntddk::IoDeleteDevice(self.0.as_ptr()) }
    }
}

/// Deletes every device this driver still owns (at unload).
///
/// Each device's `NextDevice` is read before the device is deleted ([`super::delete_each`]):
/// `IoDeleteDevice` only marks a device, which stays on `DriverObject->DeviceObject` until
/// `IopCompleteUnloadOrDelete` unlinks it at a reference count of zero. Unload comes only once
/// every reference is gone (the I/O manager defers it until then), so today each delete
/// unlinks at once; the walk does not depend on it.
#[paged]
pub fn delete_devices(driver: &Driver) {
    // SAFETY: the driver object is live; its device list is only changed by this driver and by
    // the I/O manager's deletes, and Unload runs with no other routine of the driver active.
    let first = unsafe { driver.0.as_ref() }.DeviceObject;
    super::delete_each(
        NonNull::new(first),
        |device| {
            // SAFETY: a device of the driver's list that this walk has not deleted yet (it
            // reads a device's successor before deleting it), so it is live.
            NonNull::new(unsafe { device.as_ref() }.NextDevice)
        },
        // INVARIANT: the driver's list holds only devices it created, and the walk meets each
        // once, so none has been deleted before.
        |device| drop(Device(device)),
    );
}

/// A symbolic link from a DOS name to a device, removed when the value drops.
///
/// # Invariants
/// The link `name` exists and was created by this value (or by the one [`remove_link`]
/// stands in for).
pub struct SymbolicLink {
    name: &'static WideName,
}

impl SymbolicLink {
    /// Links `name` to `target`.
    ///
    /// # Errors
    /// The status of `IoCreateSymbolicLink`.
    #[init]
    pub fn create(name: &'static WideName, target: &WideName) -> Result<Self, Status> {
        let mut link = name.unicode();
        let mut device = target.unicode();
        // SAFETY: both strings are valid for the call; PASSIVE_LEVEL (DriverEntry).
        let status = unsafe { ntddk::IoCreateSymbolicLink(&raw mut link, &raw mut device) };
        // INVARIANT: on success the link `name` exists, created here.
        if status::is_success(status) { Ok(Self { name }) } else { Err(status) }
    }

    /// Keeps the link until [`remove_link`] at unload.
    pub const fn keep(self) {
        core::mem::forget(self);
    }
}

/// Removes a link kept with [`SymbolicLink::keep`].
pub fn remove_link(name: &'static WideName) {
    // INVARIANT: the caller (unload) passes the name of the link that load created and kept.
    drop(SymbolicLink { name });
}

impl Drop for SymbolicLink {
    #[paged]
    fn drop(&mut self) {
        let mut link = self.name.unicode();
        // SAFETY: the string is valid for the call; the link exists (invariant). The status
        // is ignored: a driver can do nothing about a link that is already gone.
        let _ = unsafe { ntddk::IoDeleteSymbolicLink(&raw mut link) };
    }
}

/// The driver's entry point, called once at `PASSIVE_LEVEL` when the driver loads.
///
/// # Safety
/// Called only by the I/O manager, with its driver object and registry path.
// SAFETY: `DriverEntry` is defined once in the image, with the signature the I/O manager
// calls (DRIVER_INITIALIZE); `/ENTRY:DriverEntry` names it. It is also exported (see
// `_fltused` in pagelock-runtime for why that is harmless).
#[unsafe(export_name = "DriverEntry")]
#[init]
pub unsafe extern "C" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    let Some(raw) = NonNull::new(driver) else {
        return status::INVALID_PARAMETER;
    };
    // INVARIANT: the I/O manager passes this driver's object, live until the driver unloads.
    let mut driver = Driver(raw);
    rundown::DISPATCHING.init();
    match crate::device::load(&driver) {
        Ok(()) => {
            driver.set_routines();
            status::SUCCESS
        }
        Err(status) => status,
    }
}

/// Unload: called at `PASSIVE_LEVEL` after every handle is closed.
#[paged]
unsafe extern "C" fn driver_unload(driver: *mut DRIVER_OBJECT) {
    // ExWaitForRundownProtectionRelease at PASSIVE_LEVEL: a dispatch routine whose request is
    // done (and whose handle's close led here) may still be returning through the image.
    rundown::DISPATCHING.wait();
    if let Some(raw) = NonNull::new(driver) {
        // INVARIANT: the I/O manager passes this driver's object, live until unload returns.
        crate::device::unload(&Driver(raw));
    }
}

/// Every IRP the driver serves arrives here at `PASSIVE_LEVEL`, in the caller's thread, and
/// runs under a rundown reference that unload waits for (see [`rundown`]).
///
/// Resident, unlike the routines it calls: once the reference is released, unload may go on
/// and the kernel free the image, so the way back to the I/O manager must never wait. From
/// pageable code it could: a page no lock holds may be trimmed at any moment, and the thread
/// would fault and wait for the disk while the image goes.
#[resident]
unsafe extern "C" fn dispatch_irp(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let Some(raw) = NonNull::new(irp) else { return status::INVALID_PARAMETER };
    // SAFETY: the I/O manager passes an IRP it owns until this driver completes it.
    let irp = unsafe { Irp::from_raw(raw) };
    // ExAcquireRundownProtection: released as `_running` drops, after the dispatch routine's
    // last line, the last call before the return to the I/O manager.
    let Some(_running) = rundown::DISPATCHING.enter() else {
        // Unload is waiting: no handle is open, so no request can come; refused if one did.
        return irp.complete(status::INVALID_DEVICE_STATE, &[]);
    };
    crate::dispatch::dispatch(irp)
}
