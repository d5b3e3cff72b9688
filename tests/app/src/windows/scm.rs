//! The `pagelock` service through the service control manager.

use std::ptr;
use std::time::{Duration, Instant};

use windows_sys::Win32::Storage::FileSystem::DELETE;
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ControlService, DeleteService, OpenSCManagerW, OpenServiceW,
    QUERY_SERVICE_CONFIGW, QueryServiceConfigW, QueryServiceStatus, SC_HANDLE, SC_MANAGER_CONNECT,
    SERVICE_CONTROL_STOP, SERVICE_QUERY_CONFIG, SERVICE_QUERY_STATUS, SERVICE_START,
    SERVICE_STATUS, SERVICE_STOP, SERVICE_STOPPED, StartServiceW,
};

use super::system::{dword, error, failed, last_error, wide};
use crate::app::Change;
use crate::errors::{Win32Error, win32};

/// The service the INF adds.
pub const SERVICE: &str = "pagelock";
/// How long a stop may take before it is reported as stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A service control manager or service handle, closed on drop.
///
/// # Invariants
/// The handle is open and owned by nothing else.
struct ServiceHandle(SC_HANDLE);

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        // SAFETY: by the invariant the handle is open and only this value closes it.
        unsafe { CloseServiceHandle(self.0) };
    }
}

/// Opens the `pagelock` service with `access`.
fn open(access: u32) -> Result<ServiceHandle, Win32Error> {
    // SAFETY: NULL machine and database names mean the local, active database.
    let manager = unsafe { OpenSCManagerW(ptr::null(), ptr::null(), SC_MANAGER_CONNECT) };
    if manager.is_null() {
        return Err(failed("OpenSCManagerW"));
    }
    // INVARIANT: opened just now and handed to nothing else.
    let manager = ServiceHandle(manager);
    let name = wide(SERVICE);
    // SAFETY: `manager` is open; `name` is NUL-terminated and outlives the call.
    let service = unsafe { OpenServiceW(manager.0, name.as_ptr(), access) };
    if service.is_null() {
        return Err(failed(format!("OpenServiceW({SERVICE})")));
    }
    // INVARIANT: as for `manager`.
    Ok(ServiceHandle(service))
}

/// `StartServiceW`: loads the driver.
pub fn start() -> Result<Change, Win32Error> {
    let service = open(SERVICE_START)?;
    // SAFETY: `service` was opened with SERVICE_START; a driver takes no arguments.
    if unsafe { StartServiceW(service.0, 0, ptr::null()) } != 0 {
        return Ok(Change::Done);
    }
    match last_error() {
        win32::SERVICE_ALREADY_RUNNING => Ok(Change::Already),
        code => Err(error(format!("StartServiceW({SERVICE})"), code)),
    }
}

/// `ControlService(SERVICE_CONTROL_STOP)`, then waits until the service has stopped: the
/// driver is unloaded once its last handle is closed.
pub fn stop() -> Result<Change, Win32Error> {
    let service = open(SERVICE_STOP | SERVICE_QUERY_STATUS)?;
    let mut status = SERVICE_STATUS::default();
    // SAFETY: `service` was opened with SERVICE_STOP; `status` is writable.
    if unsafe { ControlService(service.0, SERVICE_CONTROL_STOP, &raw mut status) } == 0 {
        return match last_error() {
            win32::SERVICE_NOT_ACTIVE => Ok(Change::Already),
            code => Err(error(format!("ControlService({SERVICE}, SERVICE_CONTROL_STOP)"), code)),
        };
    }
    let start = Instant::now();
    while status.dwCurrentState != SERVICE_STOPPED {
        if start.elapsed() > STOP_TIMEOUT {
            return Err(Win32Error {
                call: format!("waiting for {SERVICE} to stop"),
                code: win32::SERVICE_REQUEST_TIMEOUT,
                message: format!(
                    "still stopping after {} s: a handle to \\\\.\\PageLock is probably still \
                     open (close the program holding it)",
                    STOP_TIMEOUT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: `service` was opened with SERVICE_QUERY_STATUS; `status` is writable.
        if unsafe { QueryServiceStatus(service.0, &raw mut status) } == 0 {
            return Err(failed(format!("QueryServiceStatus({SERVICE})")));
        }
    }
    Ok(Change::Done)
}

/// The service's binary path (`ImagePath`), as `QueryServiceConfigW` reports it.
pub fn binary_path() -> Result<String, Win32Error> {
    let service = open(SERVICE_QUERY_CONFIG)?;
    let call = format!("QueryServiceConfigW({SERVICE})");
    let mut needed = 0u32;
    // SAFETY: a NULL buffer of size 0 asks for the size needed, written to `needed`.
    let sized = unsafe { QueryServiceConfigW(service.0, ptr::null_mut(), 0, &raw mut needed) };
    let code = last_error();
    if sized == 0 && code != win32::INSUFFICIENT_BUFFER {
        return Err(error(call, code));
    }
    // u64 units keep the buffer aligned for QUERY_SERVICE_CONFIGW, whose strings follow it.
    let bytes = usize::try_from(needed).unwrap_or(0).max(size_of::<QUERY_SERVICE_CONFIGW>());
    let mut buffer = vec![0u64; bytes.div_ceil(8)];
    // SAFETY: `buffer` is writable for the size passed and aligned for QUERY_SERVICE_CONFIGW.
    let ok = unsafe {
        QueryServiceConfigW(
            service.0,
            buffer.as_mut_ptr().cast(),
            dword(buffer.len() * 8),
            &raw mut needed,
        )
    };
    if ok == 0 {
        return Err(failed(call));
    }
    // SAFETY: the call filled the start of `buffer` with a QUERY_SERVICE_CONFIGW, and the
    // buffer is aligned for it.
    let config = unsafe { buffer.as_ptr().cast::<QUERY_SERVICE_CONFIGW>().read() };
    // SAFETY: `buffer` holds `buffer.len() * 8` initialized bytes; u16 needs less alignment.
    let units =
        unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u16>(), buffer.len() * 4) };
    // The strings lie inside the buffer: find the path as an offset into it, without
    // following the pointer.
    let offset = (config.lpBinaryPathName as usize)
        .checked_sub(buffer.as_ptr() as usize)
        .map(|bytes| bytes / 2);
    let path = offset.and_then(|start| units.get(start..)).map(|rest| {
        let end = rest.iter().position(|&unit| unit == 0).unwrap_or(rest.len());
        String::from_utf16_lossy(&rest[..end])
    });
    path.ok_or_else(|| Win32Error {
        call,
        code: win32::INSUFFICIENT_BUFFER,
        message: "the binary path is not inside the returned buffer".to_owned(),
    })
}

/// Deletes the service if it is still registered; whether it was.
pub fn delete_if_present() -> Result<bool, Win32Error> {
    let service = match open(DELETE) {
        Ok(service) => service,
        Err(error) if error.code == win32::SERVICE_DOES_NOT_EXIST => return Ok(false),
        Err(error) => return Err(error),
    };
    // SAFETY: `service` was opened with DELETE.
    if unsafe { DeleteService(service.0) } != 0 {
        return Ok(true);
    }
    match last_error() {
        // Already on its way out: gone once the last handle to it closes.
        win32::SERVICE_MARKED_FOR_DELETE => Ok(true),
        code => Err(error(format!("DeleteService({SERVICE})"), code)),
    }
}
