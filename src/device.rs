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
    for section in LOCKABLE {
        let size =
            driver.section_size(&section.name(), section.anchor()).ok_or(status::UNSUCCESSFUL)?;
        // MmLockPagableCodeSection / MmLockPagableDataSection at PASSIVE_LEVEL, then
        // MmUnlockPagableImageSection: the handle stays valid, the section pageable.
        section.take_handle(size)?;
    }
    let device = Device::create(driver, &DEVICE_NAME, DEVICE_TYPE)?;
    // On failure `device` drops here, deleting the device.
    SymbolicLink::create(&LINK_NAME, &DEVICE_NAME)?.keep();
    device.keep();
    kernel::log_info(c"loaded; sections pageable until a handle opens");
    Ok(())
}

/// Unload, at `PASSIVE_LEVEL` once every handle is closed.
#[paged]
pub fn unload(driver: &Driver) {
    kernel::remove_link(&LINK_NAME);
    kernel::delete_devices(driver);
    for section in LOCKABLE {
        section.release_leftovers();
    }
    kernel::log_info(c"unloaded");
}
