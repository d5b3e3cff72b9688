//! `\\.\PageLock` through `CreateFileW`, `DeviceIoControl` and `CloseHandle`.

use std::ptr;

use pagelock_protocol::{WIN32_PATH, status};
use windows_sys::Win32::Foundation::ERROR_NOT_FOUND;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE,
    OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, DeviceIoControl, GetOverlappedResult, OVERLAPPED,
};
use windows_sys::Win32::System::Threading::CreateEventW;

use super::system::{failed, last_error, wide};
use crate::device::{Device, Reply, TransportError};
use crate::errors::status_from_win32;

/// The device transport of a Windows machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowsDevice;

/// An open handle to `\\.\PageLock`, closed by [`Device::close`].
///
/// # Invariants
/// The handle is open until `close` consumes this value; `overlapped` says whether it was
/// opened with `FILE_FLAG_OVERLAPPED`.
#[derive(Debug)]
pub struct DeviceHandle {
    handle: HANDLE,
    overlapped: bool,
}

// SAFETY: a kernel handle is a process-wide value: any thread may use or close it.
unsafe impl Send for DeviceHandle {}
// SAFETY: as above; `DeviceIoControl` on a handle from several threads at once is what overlapped
// handles are for, and a synchronous handle's requests wait for each other in the I/O manager.
unsafe impl Sync for DeviceHandle {}

impl WindowsDevice {
    /// Opens the device with `flags`; a refusal is the status `CreateFileW`'s error maps to.
    fn open_with(flags: u32) -> Result<DeviceHandle, i32> {
        let path = wide(WIN32_PATH);
        // SAFETY: `path` is NUL-terminated and outlives the call; no security attributes and
        // no template file.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                ptr::null(),
                OPEN_EXISTING,
                flags,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(status_from_win32(last_error()));
        }
        // INVARIANT: opened just now, with FILE_FLAG_OVERLAPPED exactly when asked.
        Ok(DeviceHandle { handle, overlapped: flags & FILE_FLAG_OVERLAPPED != 0 })
    }
}

/// An event for one overlapped request, closed when dropped.
struct Event(HANDLE);

impl Event {
    fn new() -> Result<Self, TransportError> {
        // SAFETY: no security attributes, no name; a manual-reset event, initially clear, as
        // an OVERLAPPED's event must be.
        let event = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if event.is_null() {
            return Err(TransportError(failed("CreateEventW").to_string()));
        }
        Ok(Self(event))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was created by `new` and is closed once, here.
        unsafe { CloseHandle(self.0) };
    }
}

impl Device for WindowsDevice {
    type Handle = DeviceHandle;

    fn open(&self) -> Result<Result<DeviceHandle, i32>, TransportError> {
        Ok(Self::open_with(FILE_ATTRIBUTE_NORMAL))
    }

    fn open_overlapped(&self) -> Result<Result<DeviceHandle, i32>, TransportError> {
        Ok(Self::open_with(FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OVERLAPPED))
    }

    fn control(
        &self,
        handle: &DeviceHandle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Reply, TransportError> {
        let too_long = |what: &str| TransportError(format!("the {what} buffer is over 4 GiB"));
        let input_len = u32::try_from(input.len()).map_err(|_| too_long("input"))?;
        let output_len = u32::try_from(output_capacity).map_err(|_| too_long("output"))?;
        let mut output = vec![0u8; output_capacity];
        // Empty buffers go down as NULL, as a caller with no buffer would send them.
        let input_ptr = if input.is_empty() { ptr::null() } else { input.as_ptr().cast() };
        let output_ptr =
            if output.is_empty() { ptr::null_mut() } else { output.as_mut_ptr().cast() };
        let mut returned = 0u32;
        // An overlapped handle needs an OVERLAPPED with its own event for each request; the
        // request is then waited for here, so the call behaves as a synchronous one for its
        // thread while other threads' requests on the handle are in the driver too.
        let event = if handle.overlapped { Some(Event::new()?) } else { None };
        let mut overlapped = OVERLAPPED {
            hEvent: event.as_ref().map_or(ptr::null_mut(), |e| e.0),
            ..Default::default()
        };
        let overlapped_ptr: *mut OVERLAPPED =
            if handle.overlapped { &raw mut overlapped } else { ptr::null_mut() };
        // SAFETY: the handle is open (invariant of DeviceHandle); on an overlapped handle the
        // OVERLAPPED and its event live until the request has completed (waited for below,
        // before either is dropped), on a synchronous one none is passed. The input is readable
        // and the output writable for the lengths passed, and both outlive the request.
        let mut ok = unsafe {
            DeviceIoControl(
                handle.handle,
                code,
                input_ptr,
                input_len,
                output_ptr,
                output_len,
                &raw mut returned,
                overlapped_ptr,
            )
        };
        if handle.overlapped && (ok != 0 || last_error() == ERROR_IO_PENDING) {
            // Done at once or pending: either way the byte count is the OVERLAPPED's to report.
            // SAFETY: the request was started on this handle with this OVERLAPPED, which is
            // still alive; waiting (TRUE) returns once it has completed.
            ok = unsafe {
                GetOverlappedResult(handle.handle, &raw const overlapped, &raw mut returned, 1)
            };
        }
        if ok == 0 {
            return Ok(Reply { status: status_from_win32(last_error()), output: Vec::new() });
        }
        let returned = usize::try_from(returned).unwrap_or(usize::MAX);
        if returned > output_capacity {
            return Err(TransportError(format!(
                "DeviceIoControl reported {returned} bytes returned into a buffer of {output_capacity}"
            )));
        }
        output.truncate(returned);
        Ok(Reply { status: status::SUCCESS, output })
    }

    fn cancel(&self, handle: &DeviceHandle) -> Result<(), TransportError> {
        // SAFETY: the handle is open (invariant); a null OVERLAPPED cancels every request of
        // the handle, from any thread.
        if unsafe { CancelIoEx(handle.handle, ptr::null()) } == 0 && last_error() != ERROR_NOT_FOUND
        {
            return Err(TransportError(failed(format!("CancelIoEx({WIN32_PATH})")).to_string()));
        }
        Ok(())
    }

    fn close(&self, handle: DeviceHandle) -> Result<(), TransportError> {
        // SAFETY: the handle is open (invariant) and `handle` is consumed, so it is closed once.
        if unsafe { CloseHandle(handle.handle) } == 0 {
            return Err(TransportError(failed(format!("CloseHandle({WIN32_PATH})")).to_string()));
        }
        Ok(())
    }
}
