//! The driver package through the driver store: `DiInstallDriverW` and `DiUninstallDriverW`.

use std::path::Path;
use std::ptr;

use windows_sys::Win32::Devices::DeviceAndDriverInstallation::{
    DiInstallDriverW, DiUninstallDriverW, SetupGetInfDriverStoreLocationW,
};
use windows_sys::Win32::System::SystemInformation::GetSystemWindowsDirectoryW;
use windows_sys::core::BOOL;

use super::scm;
use super::system::{dword, failed, wide};
use crate::app::Removed;
use crate::errors::{Win32Error, win32};
use crate::paths;

/// Longest path the driver store functions return (`MAX_PATH`), with room to spare.
const PATH_UNITS: usize = 1024;

/// Installs the package from `inf` into the driver store and runs its install section, which
/// adds the `pagelock` service; whether Windows asks for a restart.
pub fn install(inf: &Path) -> Result<bool, Win32Error> {
    let path = wide(inf);
    let mut need_reboot: BOOL = 0;
    // SAFETY: `path` is NUL-terminated and outlives the call; no parent window; passing
    // `need_reboot` keeps Windows from showing a restart dialog.
    if unsafe { DiInstallDriverW(ptr::null_mut(), path.as_ptr(), 0, &raw mut need_reboot) } == 0 {
        return Err(failed(format!("DiInstallDriverW({})", inf.display())));
    }
    Ok(need_reboot != 0)
}

/// Removes the package of `inf`, or by default the one the service runs from, then the service
/// if the package left it registered.
pub fn uninstall(inf: Option<&Path>) -> Result<Removed, Win32Error> {
    let inf = match inf {
        Some(inf) => inf.display().to_string(),
        None => installed_inf()?,
    };
    let path = wide(&inf);
    let mut need_reboot: BOOL = 0;
    // SAFETY: `path` is NUL-terminated and outlives the call; no parent window; passing
    // `need_reboot` keeps Windows from showing a restart dialog.
    if unsafe { DiUninstallDriverW(ptr::null_mut(), path.as_ptr(), 0, &raw mut need_reboot) } == 0 {
        return Err(failed(format!("DiUninstallDriverW({inf})")));
    }
    let service_deleted = scm::delete_if_present()?;
    Ok(Removed { inf, need_reboot: need_reboot != 0, service_deleted })
}

/// The driver store INF of the package the service's binary belongs to.
fn installed_inf() -> Result<String, Win32Error> {
    let image = scm::binary_path()?;
    let windows = windows_directory()?;
    let not_found = |why: String| Win32Error {
        call: "finding the installed package".to_owned(),
        code: win32::FILE_NOT_FOUND,
        message: why,
    };
    let candidate = paths::package_inf(&image, &windows)
        .ok_or_else(|| not_found(format!("the service's binary path {image:?} names no folder")))?;
    if !paths::in_driver_store(&candidate) {
        return Err(not_found(format!(
            "the service runs {image:?}, outside the Driver Store: pass the package's INF"
        )));
    }
    // The driver store confirms the INF is one of its packages, and names it canonically.
    let name = wide(&candidate);
    let mut buffer = vec![0u16; PATH_UNITS];
    let mut needed = 0u32;
    // SAFETY: `name` is NUL-terminated; `buffer` is writable for the length passed; the
    // platform and locale arguments are reserved and NULL.
    let ok = unsafe {
        SetupGetInfDriverStoreLocationW(
            name.as_ptr(),
            ptr::null(),
            ptr::null(),
            buffer.as_mut_ptr(),
            dword(buffer.len()),
            &raw mut needed,
        )
    };
    if ok == 0 {
        return Err(failed(format!("SetupGetInfDriverStoreLocationW({candidate})")));
    }
    let end = buffer.iter().position(|&unit| unit == 0).unwrap_or(buffer.len());
    Ok(String::from_utf16_lossy(&buffer[..end]))
}

/// The Windows folder, for `\SystemRoot`.
fn windows_directory() -> Result<String, Win32Error> {
    let mut buffer = vec![0u16; PATH_UNITS];
    // SAFETY: `buffer` is writable for the length passed.
    let written = unsafe { GetSystemWindowsDirectoryW(buffer.as_mut_ptr(), dword(buffer.len())) };
    let written = usize::try_from(written).unwrap_or(usize::MAX);
    if written == 0 || written > buffer.len() {
        return Err(failed("GetSystemWindowsDirectoryW"));
    }
    Ok(String::from_utf16_lossy(&buffer[..written]))
}
