//! Load and unload: the device, its link, and the section handles.

use pagelock_macros::{init, paged};
use pagelock_protocol::DEVICE_TYPE;

use crate::{
    kernel::{self, Device, Driver, Status, SymbolicLink, WideName, status},
    sections::LOCKABLE,
};

/// `\Device\PageLock`.
static DEVICE_NAME: WideName = crate::wide_name!(pagelock_protocol::DEVICE_NAME);
/// `\DosDevices\PageLock`.
static LINK_NAME: WideName = crate::wide_name!(pagelock_protocol::DOS_DEVICE_NAME);

/// `DriverEntry`'s work. Takes a handle to each lockable section and releases it at once,
/// then creates the device and its link. Any failure undoes what was done before it.
///
/// # Errors
/// The status of the step that failed.
#[init]
pub fn load(driver: &Driver) -> Result<(), Status> {
    for section in &LOCKABLE {
        let size =
            driver.section_size(&section.name(), section.anchor()).ok_or(status::UNSUCCESSFUL)?;
        // MmLockPagableCodeSection / MmLockPagableDataSection at PASSIVE_LEVEL, then
        // MmUnlockPagableImageSection: the handle stays valid, the section pageable.
        section.take_handle(size)?;
    }
    // The queue of pending WAITs, its timer and DPC: resident objects, set up before any
    // dispatch routine can reach them.
    kernel::init_queue()?;
    let device = Device::create(driver, &DEVICE_NAME, DEVICE_TYPE)?;
    // On failure `device` drops here, deleting the device.
    SymbolicLink::create(&LINK_NAME, &DEVICE_NAME)?.keep();
    device.keep();
    kernel::log_info(c"loaded; sections pageable until a handle opens");
    Ok(())
}

/// Unload, at `PASSIVE_LEVEL` once every handle is closed.
///
/// Every handle's cleanup has drained its waits by now, so nothing is queued; the timer may
/// still be armed, or its DPC queued or running. So, in this order: no arming any more,
/// `KeCancelTimer`, `KeFlushQueuedDpcs`; only then are devices deleted and leftover locks
/// released, and the image freed after this returns.
#[paged]
pub fn unload(driver: &Driver) {
    crate::pending::stop();
    kernel::remove_link(&LINK_NAME);
    kernel::delete_devices(driver);
    for section in &LOCKABLE {
        section.release_leftovers();
    }
    kernel::log_info(c"unloaded");
}
