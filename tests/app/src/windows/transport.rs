//! `\\.\PageLock` through `CreateFileW`, `DeviceIoControl` and `CloseHandle`; and, for the one
//! open `CreateFileW` cannot ask for (a directory), the native `NtCreateFile`.

use std::ptr;

use pagelock_protocol::{WIN32_PATH, status};
use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::{
    FILE_DIRECTORY_FILE, FILE_OPEN, FILE_SYNCHRONOUS_IO_NONALERT, NtCreateFile,
};
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_IO_PENDING, ERROR_NOT_FOUND, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, OBJ_CASE_INSENSITIVE, UNICODE_STRING,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE,
    OPEN_EXISTING, SYNCHRONIZE,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, DeviceIoControl, GetOverlappedResult, IO_STATUS_BLOCK, OVERLAPPED,
};
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Threading::CreateEventW;

use super::system::{failed, last_error, wide};
use crate::device::{BadOpen, BadOpenOutcome, Device, Reply, TransportError};
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
        Self::open_path(WIN32_PATH, flags)
    }

    /// Opens `path` with `CreateFileW` and `flags`; a refusal is the status its error maps to.
    fn open_path(path: &str, flags: u32) -> Result<DeviceHandle, i32> {
        let path = wide(path);
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

    /// Opens the device asking for a directory (`FILE_DIRECTORY_FILE`) through the native
    /// `NtCreateFile`: `CreateFileW` cannot ask for one. A refusal is the `NTSTATUS` itself.
    fn open_as_directory() -> Result<DeviceHandle, i32> {
        let mut name: Vec<u16> = nt_path().encode_utf16().collect();
        let bytes = u16::try_from(name.len() * 2).unwrap_or(u16::MAX);
        let unicode =
            UNICODE_STRING { Length: bytes, MaximumLength: bytes, Buffer: name.as_mut_ptr() };
        let attributes = OBJECT_ATTRIBUTES {
            Length: u32::try_from(size_of::<OBJECT_ATTRIBUTES>()).unwrap_or(u32::MAX),
            ObjectName: &raw const unicode,
            Attributes: OBJ_CASE_INSENSITIVE,
            ..Default::default()
        };
        let mut handle: HANDLE = ptr::null_mut();
        let mut io_status = IO_STATUS_BLOCK::default();
        // SAFETY: every pointer is to a live local for the call's duration (the name's buffer
        // outlives `unicode`, which outlives `attributes`); no allocation size, no extended
        // attributes. A synchronous open, as `open` makes without FILE_FLAG_OVERLAPPED.
        let status = unsafe {
            NtCreateFile(
                &raw mut handle,
                GENERIC_READ | SYNCHRONIZE,
                &raw const attributes,
                &raw mut io_status,
                ptr::null(),
                FILE_ATTRIBUTE_NORMAL,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                FILE_OPEN,
                FILE_DIRECTORY_FILE | FILE_SYNCHRONOUS_IO_NONALERT,
                ptr::null(),
                0,
            )
        };
        if !status::is_success(status) {
            return Err(status);
        }
        // INVARIANT: opened just now, for synchronous I/O.
        Ok(DeviceHandle { handle, overlapped: false })
    }
}

/// Whether this process runs under Wine: its ntdll exports `wine_get_version`, Windows' does
/// not.
fn under_wine() -> bool {
    let ntdll = wide("ntdll.dll");
    // SAFETY: a NUL-terminated module name; ntdll is loaded in every process, and the handle is
    // not reference-counted (nothing to release).
    let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
    // SAFETY: a module handle or null, and a NUL-terminated export name.
    !module.is_null()
        && unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }.is_some()
}

/// The device's name in the object manager's namespace, as `NtCreateFile` takes it: `\??\`
/// where Win32 says `\\.\`.
fn nt_path() -> String {
    WIN32_PATH.replacen(r"\\.\", r"\??\", 1)
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

// SAFETY: an event handle is a process-wide value: any thread may wait on it or close it.
unsafe impl Send for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was created by `new` and is closed once, here.
        unsafe { CloseHandle(self.0) };
    }
}

/// A request sent with [`Device::start`]: its `OVERLAPPED`, the event in it and the output
/// buffer, boxed so that their addresses stay put until the request has completed.
///
/// # Invariants
/// Unless `failed_at_once` is set, a request was started on `handle` with this `overlapped`
/// and `output`, and may still be in flight: none of them is freed before it has completed
/// (waited for in [`Device::finish`], or by `Drop`).
pub struct PendingRequest(Box<InFlight>);

struct InFlight {
    overlapped: OVERLAPPED,
    /// The OVERLAPPED's event, closed after the request (`Drop` waits for it first).
    _event: Event,
    output: Vec<u8>,
    handle: HANDLE,
    /// The status of a request `DeviceIoControl` refused before it was in flight.
    failed_at_once: Option<i32>,
    /// Whether the request has completed and been waited for.
    finished: bool,
}

// SAFETY: the OVERLAPPED, its event and the buffer belong to this request alone, and the
// kernel lets any thread of the process wait for an overlapped request to complete.
unsafe impl Send for InFlight {}

impl InFlight {
    /// Waits until the request has completed: (whether it succeeded, bytes returned, error).
    fn wait(&mut self) -> (bool, u32, u32) {
        let mut returned = 0u32;
        // SAFETY: the request was started with this OVERLAPPED (invariant), which is alive.
        // Waiting (TRUE) waits on the OVERLAPPED's event, not on the file handle, so this holds
        // after the handle was closed too (kernelbase and Wine wait on `hFile` only when
        // `hEvent` is NULL).
        let ok = unsafe {
            GetOverlappedResult(self.handle, &raw const self.overlapped, &raw mut returned, 1)
        };
        let error = if ok == 0 { last_error() } else { 0 };
        self.finished = true;
        (ok != 0, returned, error)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.failed_at_once.is_some() || self.finished {
            return;
        }
        // Dropped while it may be in flight: cancel it (this one request; harmless when it has
        // completed or its handle is closed), then wait, so that the kernel writes no status
        // or output into freed memory.
        // SAFETY: `overlapped` is the one this request was started with.
        unsafe { CancelIoEx(self.handle, &raw const self.overlapped) };
        let _ = self.wait();
    }
}

impl Device for WindowsDevice {
    type Handle = DeviceHandle;
    type Pending = PendingRequest;

    fn open(&self) -> Result<Result<DeviceHandle, i32>, TransportError> {
        Ok(Self::open_with(FILE_ATTRIBUTE_NORMAL))
    }

    fn open_overlapped(&self) -> Result<Result<DeviceHandle, i32>, TransportError> {
        Ok(Self::open_with(FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OVERLAPPED))
    }

    /// Both, as a program can ask them: a name below the device through `CreateFileW`
    /// (`\\.\PageLock\anything`, whose `ERROR_FILE_NOT_FOUND` maps back to
    /// `STATUS_OBJECT_NAME_NOT_FOUND`), and a directory through `NtCreateFile`. On Windows each
    /// open fails with the status the driver completed `IRP_MJ_CREATE` with.
    ///
    /// Wine 8 differs in both. Its server resolves no name below a device, and its
    /// `IRP_MJ_CREATE` carries no `FileName`: a name below the device never reaches the driver,
    /// and Wine's own refusal is reported as not delivered. A directory open does reach the
    /// driver, with `FILE_DIRECTORY_FILE` in the create options, but the server returns the
    /// handle as soon as it has queued the `IRP_MJ_CREATE`, whatever the driver answers: the
    /// scenario then checks that the driver keeps no state for that handle.
    fn open_bad(&self, open: BadOpen) -> Result<BadOpenOutcome<DeviceHandle>, TransportError> {
        let wine = under_wine();
        let opened = match open {
            BadOpen::NameBelowDevice => Self::open_path(
                &format!("{WIN32_PATH}{}", BadOpen::NAME_BELOW),
                FILE_ATTRIBUTE_NORMAL,
            ),
            BadOpen::AsDirectory => Self::open_as_directory(),
        };
        Ok(match opened {
            Err(status) if wine && open == BadOpen::NameBelowDevice => {
                BadOpenOutcome::NotDelivered(format!(
                    "refused by Wine itself ({}), which resolves no name below a device and \
                     passes the driver no FileName",
                    crate::errors::status_text(status)
                ))
            }
            Err(status) => BadOpenOutcome::Refused(status),
            Ok(handle) if wine => BadOpenOutcome::OpenedBeforeTheDriverAnswered(handle),
            Ok(handle) => BadOpenOutcome::Opened(handle),
        })
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

    fn start(
        &self,
        handle: &DeviceHandle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<PendingRequest, TransportError> {
        if !handle.overlapped {
            return Err(TransportError(
                "a request is started only on a handle opened for overlapped I/O".to_owned(),
            ));
        }
        let too_long = |what: &str| TransportError(format!("the {what} buffer is over 4 GiB"));
        let input_len = u32::try_from(input.len()).map_err(|_| too_long("input"))?;
        let output_len = u32::try_from(output_capacity).map_err(|_| too_long("output"))?;
        let event = Event::new()?;
        let overlapped = OVERLAPPED { hEvent: event.0, ..Default::default() };
        let mut flight = Box::new(InFlight {
            overlapped,
            _event: event,
            output: vec![0u8; output_capacity],
            handle: handle.handle,
            failed_at_once: None,
            finished: false,
        });
        let input_ptr = if input.is_empty() { ptr::null() } else { input.as_ptr().cast() };
        let output_ptr =
            if output_len == 0 { ptr::null_mut() } else { flight.output.as_mut_ptr().cast() };
        // SAFETY: the handle is open and overlapped; the OVERLAPPED, its event and the output
        // buffer are boxed and live until the request has completed (invariant of
        // PendingRequest); the input is copied by the I/O manager (METHOD_BUFFERED) during the
        // call. The byte count is the OVERLAPPED's to report, so none is passed.
        let ok = unsafe {
            DeviceIoControl(
                handle.handle,
                code,
                input_ptr,
                input_len,
                output_ptr,
                output_len,
                ptr::null_mut(),
                &raw mut flight.overlapped,
            )
        };
        if ok == 0 {
            let error = last_error();
            if error != ERROR_IO_PENDING {
                // INVARIANT: refused before it was in flight; nothing to wait for.
                flight.failed_at_once = Some(status_from_win32(error));
            }
        }
        Ok(PendingRequest(flight))
    }

    fn finish(&self, pending: PendingRequest) -> Result<Reply, TransportError> {
        let mut flight = pending.0;
        if let Some(status) = flight.failed_at_once {
            return Ok(Reply { status, output: Vec::new() });
        }
        let (ok, returned, error) = flight.wait();
        if !ok {
            return Ok(Reply { status: status_from_win32(error), output: Vec::new() });
        }
        let returned = usize::try_from(returned).unwrap_or(usize::MAX);
        if returned > flight.output.len() {
            return Err(TransportError(format!(
                "GetOverlappedResult reported {returned} bytes returned into a buffer of {}",
                flight.output.len()
            )));
        }
        let mut output = std::mem::take(&mut flight.output);
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
