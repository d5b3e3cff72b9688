//! `\\.\PageLock` through `CreateFileW`, `DeviceIoControl` and `CloseHandle`.

use std::ptr;

use pagelock_protocol::{WIN32_PATH, status};
use windows_sys::Win32::Foundation::{
    CloseHandle, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::DeviceIoControl;

use super::system::{failed, last_error, wide};
use crate::device::{Device, Reply, TransportError};
use crate::errors::status_from_win32;

/// The device transport of a Windows machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowsDevice;

/// An open handle to `\\.\PageLock`, closed by [`Device::close`].
///
/// INVARIANT: the handle is open until `close` consumes this value.
#[derive(Debug)]
pub struct DeviceHandle(HANDLE);

impl Device for WindowsDevice {
    type Handle = DeviceHandle;

    fn open(&self) -> Result<Result<DeviceHandle, i32>, TransportError> {
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
                FILE_ATTRIBUTE_NORMAL,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Ok(Err(status_from_win32(last_error())));
        }
        Ok(Ok(DeviceHandle(handle)))
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
        // SAFETY: the handle is open (invariant of DeviceHandle) and was opened without
        // FILE_FLAG_OVERLAPPED, so the call is synchronous and needs no OVERLAPPED; the input
        // is readable and the output writable for the lengths passed, and both outlive the
        // call.
        let ok = unsafe {
            DeviceIoControl(
                handle.0,
                code,
                input_ptr,
                input_len,
                output_ptr,
                output_len,
                &raw mut returned,
                ptr::null_mut(),
            )
        };
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

    fn close(&self, handle: DeviceHandle) -> Result<(), TransportError> {
        // SAFETY: the handle is open (invariant) and `handle` is consumed, so it is closed once.
        if unsafe { CloseHandle(handle.0) } == 0 {
            return Err(TransportError(failed(format!("CloseHandle({WIN32_PATH})")).to_string()));
        }
        Ok(())
    }
}
