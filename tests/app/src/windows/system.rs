//! Error text, wide strings, owned kernel handles and the token's elevation.

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;
use std::ptr;

use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE};
use windows_sys::Win32::Security::{
    GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
};
use windows_sys::Win32::System::Diagnostics::Debug::{
    FORMAT_MESSAGE_FROM_SYSTEM, FORMAT_MESSAGE_IGNORE_INSERTS, FormatMessageW,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use crate::errors::Win32Error;

/// `text` as a NUL-terminated UTF-16 string.
pub fn wide(text: impl AsRef<OsStr>) -> Vec<u16> {
    text.as_ref().encode_wide().chain(std::iter::once(0)).collect()
}

/// A length as a `DWORD`, saturating (no buffer here comes near 4 GiB).
pub fn dword(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The calling thread's last Win32 error.
pub fn last_error() -> u32 {
    // SAFETY: reads the thread's last-error value; no arguments, no preconditions.
    unsafe { GetLastError() }
}

/// The system's text for `code`, without its trailing line break.
pub fn message(code: u32) -> String {
    let mut buffer = [0u16; 1024];
    // SAFETY: `buffer` is writable for `buffer.len()` UTF-16 units; IGNORE_INSERTS means no
    // arguments are read, and no source module is needed with FROM_SYSTEM.
    let written = unsafe {
        FormatMessageW(
            FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
            ptr::null(),
            code,
            0,
            buffer.as_mut_ptr(),
            dword(buffer.len()),
            ptr::null(),
        )
    };
    let written = usize::try_from(written).unwrap_or(0).min(buffer.len());
    if written == 0 {
        return "(Windows has no text for this code)".to_owned();
    }
    String::from_utf16_lossy(&buffer[..written]).trim_end().to_owned()
}

/// `call` failed with `code`.
pub fn error(call: impl Into<String>, code: u32) -> Win32Error {
    Win32Error { call: call.into(), code, message: message(code) }
}

/// `call` just failed: its error is the thread's last error.
pub fn failed(call: impl Into<String>) -> Win32Error {
    error(call, last_error())
}

/// A kernel handle this process owns, closed on drop.
///
/// # Invariants
/// The handle is open and owned by nothing else.
pub struct OwnedHandle(HANDLE);

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        // SAFETY: by the invariant the handle is open and only this value closes it.
        unsafe { CloseHandle(self.0) };
    }
}

/// Whether this process runs elevated (`TokenElevation` of its token).
pub fn is_elevated() -> Result<bool, Win32Error> {
    // SAFETY: no arguments; returns a pseudo-handle that needs no closing.
    let process = unsafe { GetCurrentProcess() };
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is this process's pseudo-handle and `token` a writable handle slot.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &raw mut token) } == 0 {
        return Err(failed("OpenProcessToken"));
    }
    // INVARIANT: opened just now and handed to nothing else.
    let token = OwnedHandle(token);
    let mut elevation = TOKEN_ELEVATION::default();
    let mut returned = 0u32;
    // SAFETY: `token` was opened with TOKEN_QUERY; the buffer is a TOKEN_ELEVATION of the size
    // passed, which is what this information class writes.
    let ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenElevation,
            (&raw mut elevation).cast(),
            dword(size_of::<TOKEN_ELEVATION>()),
            &raw mut returned,
        )
    };
    if ok == 0 {
        return Err(failed("GetTokenInformation(TokenElevation)"));
    }
    Ok(elevation.TokenIsElevated != 0)
}
