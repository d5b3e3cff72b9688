//! A driver on the bed: load, open, control, close, unload, and the report of what happened.
//!
//! Everything here runs in the isolated child (see [`crate::isolate`]).

use std::{
    ffi::c_void,
    path::Path,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    ex, exports,
    io::{
        self, STATUS_NO_SUCH_DEVICE, STATUS_OBJECT_NAME_NOT_FOUND, device,
        irp::{self, Control, Request, Sent},
        major,
    },
    isolate,
    ke::{self, irql},
    loader::{self, Image},
    mm::{self, Mm},
    ob, record,
    report::{Bugcheck, Report, SectionReport, Step, hex},
    routine::{self, Routine},
    sched,
    se::{self, Caller},
    trace,
    verifier::{Rule, Violation, bed_number},
};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Force IRQL checking (on by default, as in Driver Verifier's standard settings).
    pub force_irql: bool,
    /// The identity the access check at create uses.
    pub caller: Caller,
    /// The access each handle asks for: `FILE_READ_DATA` (1) | `FILE_WRITE_DATA` (2).
    pub access: u32,
    /// Fault injection: the Nth call (from 1) of this routine fails.
    pub fail_call: Option<(Routine, u64)>,
    /// Record every IRP with the lock counts after it (off for benchmarks).
    pub trace: bool,
    /// Every handle is opened as a directory (`FILE_DIRECTORY_FILE`, see [`OpenOptions`]).
    pub as_directory: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            force_irql: true,
            caller: Caller::Admin,
            access: 3,
            fail_call: None,
            trace: true,
            as_directory: false,
        }
    }
}

/// What unwritten bytes of a system buffer hold.
const POISON: u8 = 0xCD;
/// `IO_TYPE_DRIVER`.
const IO_TYPE_DRIVER: i16 = 4;

/// An open handle: a file object on a device.
pub struct Handle {
    file: *mut ddk::FILE_OBJECT,
    device: usize,
    access: u32,
    number: u64,
    /// Opened for synchronous I/O: the I/O manager lets one request of the file object into
    /// the driver at a time (`FO_SYNCHRONOUS_IO`). Opened for overlapped I/O
    /// (`FILE_FLAG_OVERLAPPED`), several requests may be in the driver at once.
    synchronous: bool,
    /// A request of this synchronous file object is in the driver (shared with that request's
    /// [`Pending`], which releases it).
    busy: std::sync::Arc<AtomicBool>,
    /// The handle's entry in the process's handle table, which any thread may close while
    /// others use the handle.
    entry: std::sync::Arc<HandleEntry>,
    /// What the file object's `FileName` points at, kept as long as the file object.
    file_name: std::sync::Arc<[u16]>,
}

/// How a handle is opened, as the caller's flags reach the create IRP.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// For synchronous I/O (`CreateFileW` without `FILE_FLAG_OVERLAPPED`):
    /// `FILE_SYNCHRONOUS_IO_NONALERT`.
    pub synchronous: bool,
    /// As a directory: `FILE_DIRECTORY_FILE`, which only the native `NtCreateFile` can send;
    /// otherwise `FILE_NON_DIRECTORY_FILE`, which `CreateFileW` always sends (unless told
    /// `FILE_FLAG_BACKUP_SEMANTICS`, which drops it and still asks for no directory).
    pub directory: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { synchronous: true, directory: false }
    }
}

impl OpenOptions {
    /// `FILE_OPEN`, the disposition of `OPEN_EXISTING`, in the top 8 bits.
    const FILE_OPEN: u32 = 1 << 24;
    /// `FILE_DIRECTORY_FILE`.
    const FILE_DIRECTORY_FILE: u32 = 0x01;
    /// `FILE_SYNCHRONOUS_IO_NONALERT`.
    const FILE_SYNCHRONOUS_IO_NONALERT: u32 = 0x20;
    /// `FILE_NON_DIRECTORY_FILE`.
    const FILE_NON_DIRECTORY_FILE: u32 = 0x40;

    /// `Parameters.Create.Options` of the create IRP.
    #[must_use]
    pub const fn create_options(self) -> u32 {
        let kind =
            if self.directory { Self::FILE_DIRECTORY_FILE } else { Self::FILE_NON_DIRECTORY_FILE };
        let io = if self.synchronous { Self::FILE_SYNCHRONOUS_IO_NONALERT } else { 0 };
        Self::FILE_OPEN | kind | io
    }
}

/// A handle's entry in the handle table, as the object manager keeps it: whether the handle is
/// closed, and the requests that looked the handle up and have not yet reached the driver.
///
/// A request references the file object by handle (`ObReferenceObjectByHandle`, which fails
/// once the handle is closed) and then hands that reference to its IRP, which holds it until
/// completion. So a `CloseHandle` on another thread may run cleanup between the lookup and the
/// dispatch: nothing serialises the two on a file object opened for overlapped I/O.
#[derive(Default)]
struct HandleEntry {
    closed: AtomicBool,
    /// Lookups not yet handed to an IRP ([`crate::io::irp::file_busy`] covers the IRP after).
    looking_up: std::sync::atomic::AtomicU32,
}

/// A lookup of a handle (`ObReferenceObjectByHandle`): the file object's reference of a request
/// between the lookup and the dispatch. Dropping it hands the reference on, to the IRP the
/// request became, or releases it.
struct Lookup<'a>(&'a HandleEntry);

impl Drop for Lookup<'_> {
    fn drop(&mut self) {
        self.0.looking_up.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HandleEntry {
    /// Looks the handle up; None once it is closed (`STATUS_INVALID_HANDLE`).
    fn look_up(&self) -> Option<Lookup<'_>> {
        self.looking_up.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.looking_up.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Lookup(self))
    }
}

/// A file object whose handle is closed and whose `IRP_MJ_CLOSE` is still to come, after its
/// last request.
struct Closing {
    file: *mut ddk::FILE_OBJECT,
    device: usize,
    number: u64,
    entry: std::sync::Arc<HandleEntry>,
    /// The buffer of the file object's `FileName`, freed with it.
    _file_name: std::sync::Arc<[u16]>,
}

// SAFETY: as for `Handle`: the file object is the bed's, reached by the driver through IRPs.
unsafe impl Send for Closing {}

impl Handle {
    /// The I/O manager's file object lock (`IopAcquireFileObjectLock`), which only a file object
    /// opened for synchronous I/O has: waits until no request of it is in the driver and takes
    /// it (true; release it with `busy`); false for an overlapped one, which has none.
    fn lock_file_object(&self, what: &dyn Fn() -> String) -> bool {
        if !self.synchronous {
            return false;
        }
        while self.busy.swap(true, Ordering::Acquire) {
            if !sched::wait_on_other_cpu() {
                record::stop(
                    Rule::Deadlock,
                    None,
                    [self.file as u64, 0, 0, 0],
                    format!("{}: the file object's request never finishes", what()),
                );
            }
        }
        true
    }
}

// SAFETY: the file object is the bed's; the driver reaches it only through IRPs on this handle,
// from whichever thread sends them, as on Windows.
unsafe impl Send for Handle {}
// SAFETY: as above; the bed itself never writes the file object after create.
unsafe impl Sync for Handle {}

/// The race the bed names when `DriverUnload` begins while a dispatch routine still runs on
/// another CPU.
pub const UNLOAD_MEETS_A_DISPATCH: &str =
    "DriverUnload called while another CPU is in a dispatch routine";

/// A driver loaded on the bed.
pub struct Bed {
    image: Image,
    driver: *mut ddk::DRIVER_OBJECT,
    options: Options,
    /// Open handles. Held across a create and across the last-close check, so that the check
    /// never sees the locks of a create still in flight on another thread.
    open_handles: std::sync::Mutex<i64>,
    handles_opened: AtomicU64,
    /// Handles whose cleanup was sent and whose close is left to the system worker CPU of a
    /// scheduled run (see [`Bed::close_worker`]); None outside such a run.
    deferred: std::sync::Mutex<Option<Vec<Closing>>>,
    /// The driver's service was stopped ([`Bed::stop_service`]): `DriverUnload` runs once the
    /// last handle's close returns.
    stopping: AtomicBool,
    unloaded: AtomicBool,
    _names: [Vec<u16>; 2],
}

// SAFETY: the driver object is shared with the driver the way the kernel shares it: written by
// DriverEntry before any other thread exists, read afterwards. The bed's own mutable state is
// behind atomics or the kernel's lock.
unsafe impl Send for Bed {}
// SAFETY: as above.
unsafe impl Sync for Bed {}

/// `DriverEntry` and `DriverUnload`, called the Win64 way.
type Entry = unsafe extern "win64" fn(*mut ddk::DRIVER_OBJECT, *const ddk::UNICODE_STRING) -> i32;
type Unload = unsafe extern "win64" fn(*mut ddk::DRIVER_OBJECT);

fn counted(units: &[u16]) -> ddk::UNICODE_STRING {
    let bytes = u16::try_from(units.len() * 2).unwrap_or(u16::MAX);
    ddk::UNICODE_STRING { Length: bytes, MaximumLength: bytes, Buffer: units.as_ptr().cast_mut() }
}

impl Bed {
    /// Maps the image, installs the emulated kernel and runs `DriverEntry`. A failed
    /// `DriverEntry` comes back as `Ok(Err((status, report)))`: Windows never unloads such a
    /// driver, so the report checks what it left behind instead.
    ///
    /// # Errors
    /// When the image cannot be loaded (not a PE, an unsupported import: named).
    pub fn load(path: &Path, options: Options) -> Result<Result<Self, (i32, Report)>> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = loader::map(&data, exports::resolve)
            .with_context(|| format!("loading {}", path.display()))?;
        RUN.set(Run { driver: path.display().to_string(), force_irql: options.force_irql })
            .map_err(|_| anyhow::anyhow!("one driver per process: a driver is already loaded"))?;
        install_hooks(options.force_irql);
        let mm = mm::install(Mm::new(&image))?;
        if let Some((routine, nth)) = options.fail_call {
            routine::fail_call(routine, nth)?;
        }
        ke::trap::install()?;
        let stem = path.file_stem().map_or_else(|| "driver".into(), |s| s.to_string_lossy());
        let driver_name: Vec<u16> = format!(r"\Driver\{stem}").encode_utf16().collect();
        let registry: Vec<u16> =
            format!(r"\Registry\Machine\System\CurrentControlSet\Services\{stem}")
                .encode_utf16()
                .collect();
        let driver = Box::into_raw(Box::new(ddk::DRIVER_OBJECT {
            Type: IO_TYPE_DRIVER,
            Size: i16::try_from(size_of::<ddk::DRIVER_OBJECT>()).unwrap_or(0),
            DriverStart: image.base.as_ptr().cast::<c_void>(),
            DriverSize: u32::try_from(image.size).unwrap_or(u32::MAX),
            DriverName: counted(&driver_name),
            ..Default::default()
        }));
        let registry_path = counted(&registry);
        // SAFETY: the entry point of the mapped, relocated and bound image, an
        // `extern "win64"` DriverEntry as PE's AddressOfEntryPoint promises for a driver.
        let entry = unsafe {
            std::mem::transmute::<usize, Entry>(image.base.as_ptr() as usize + image.entry)
        };
        // SAFETY: DriverEntry with the bed's driver object and registry path, as Windows calls it.
        let status = unsafe { entry(driver, &raw const registry_path) };
        record::get().entry_status = Some(status);
        // The loader frees INIT once DriverEntry returns, whatever it returned.
        mm.discard();
        let bed = Self {
            image,
            driver,
            options,
            open_handles: std::sync::Mutex::new(0),
            deferred: std::sync::Mutex::new(None),
            handles_opened: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            unloaded: AtomicBool::new(false),
            _names: [driver_name, registry],
        };
        bed.step(|| Step {
            what: "DriverEntry".to_owned(),
            status: Some(status),
            ..Step::default()
        });
        if !status::is_success(status) {
            // A failed DriverEntry must undo what it did: the image goes away without unload.
            bed.check_left_behind("after the failed DriverEntry");
            bed.unloaded.store(true, Ordering::SeqCst);
            return Ok(Err((status, bed.report())));
        }
        // Nothing is locked while the driver is idle: the memory manager may page it all out.
        mm.page_out_unlocked();
        Ok(Ok(bed))
    }

    fn driver(&self) -> &ddk::DRIVER_OBJECT {
        // SAFETY: the bed's driver object, alive as long as the bed, written only by
        // DriverEntry (before any other reference existed).
        unsafe { &*self.driver }
    }

    /// Records a step of the run with the lock counts after it (when tracing).
    fn step(&self, step: impl FnOnce() -> Step) {
        if self.options.trace {
            let mut step = step();
            step.lock_counts = mm::get().counts();
            record::get().steps.push(step);
        }
    }

    /// Opens `name` (a device or a link: `\Device\X`, `\DosDevices\X`, `\\.\X`, or a name
    /// below one of them), as `CreateFileW` would.
    ///
    /// # Errors
    /// The status the open failed with: `STATUS_OBJECT_NAME_NOT_FOUND`, the access check's
    /// `STATUS_ACCESS_DENIED`, or the driver's. A failed create gets no cleanup or close.
    pub fn open(&self, name: &str) -> std::result::Result<Handle, i32> {
        let directory = self.options.as_directory;
        self.open_with(name, OpenOptions { directory, ..OpenOptions::default() })
    }

    /// Opens `name` for overlapped I/O (`FILE_FLAG_OVERLAPPED`): requests on the handle from
    /// several threads reach the driver at once.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_overlapped(&self, name: &str) -> std::result::Result<Handle, i32> {
        let directory = self.options.as_directory;
        self.open_with(name, OpenOptions { synchronous: false, directory })
    }

    /// Opens `name` with `options`, as `CreateFileW` or (for a directory) `NtCreateFile`
    /// would.
    ///
    /// The create IRP carries what the I/O manager puts in it: the rest of the name below the
    /// device in the file object's `FileName` (empty for the device itself), and the
    /// disposition and create options in `Parameters.Create.Options`.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_with(&self, name: &str, options: OpenOptions) -> std::result::Result<Handle, i32> {
        let synchronous = options.synchronous;
        let number = self.handles_opened.fetch_add(1, Ordering::SeqCst) + 1;
        let directory = if options.directory { ", as a directory" } else { "" };
        let what = format!("{} {name}{directory} (handle {number})", major::name(major::CREATE));
        if self.stopping.load(Ordering::SeqCst) {
            // IopParseDevice: a device whose driver is marked for unload opens nothing more.
            self.step(|| Step {
                what: format!("{what}: the driver is being unloaded"),
                status: Some(STATUS_NO_SUCH_DEVICE),
                ..Step::default()
            });
            return Err(STATUS_NO_SUCH_DEVICE);
        }
        let Some((device, below)) = device::resolve(name) else {
            self.step(|| Step {
                what: format!("{what}: no such object"),
                status: Some(STATUS_OBJECT_NAME_NOT_FOUND),
                ..Step::default()
            });
            return Err(STATUS_OBJECT_NAME_NOT_FOUND);
        };
        let wanted = self.options.access.max(1);
        if !se::access_granted(ob::dacl_of(device).as_deref(), self.options.caller, wanted) {
            self.step(|| Step {
                what: format!(
                    "{what}: denied by the device's DACL (caller {:?})",
                    self.options.caller
                ),
                status: Some(status::ACCESS_DENIED),
                ..Step::default()
            });
            return Err(status::ACCESS_DENIED);
        }
        // The name below the device, kept as long as the file object that points at it.
        let file_name: std::sync::Arc<[u16]> = below.encode_utf16().collect();
        let file = Box::into_raw(Box::new(ddk::FILE_OBJECT {
            Type: io::IO_TYPE_FILE,
            Size: i16::try_from(size_of::<ddk::FILE_OBJECT>()).unwrap_or(0),
            DeviceObject: device as *mut ddk::DEVICE_OBJECT,
            ReadAccess: u8::from(wanted & 1 != 0),
            WriteAccess: u8::from(wanted & 2 != 0),
            FileName: if file_name.is_empty() {
                ddk::UNICODE_STRING::default()
            } else {
                counted(&file_name)
            },
            ..Default::default()
        }));
        let mut open_handles = sched::lock(&self.open_handles);
        device::reference_device(device);
        // SAFETY: the loaded driver's object and one of its devices.
        let completion = unsafe {
            irp::send(
                self.driver,
                device as *mut _,
                Request {
                    major: major::CREATE,
                    file,
                    control: None,
                    create_options: options.create_options(),
                },
            )
        };
        self.step(|| Step {
            what,
            status: Some(completion.status),
            information: Some(completion.information),
            ..Step::default()
        });
        if !status::is_success(completion.status) {
            // SAFETY: the file object made above; the driver's create failed, so nothing
            // refers to it any more.
            drop(unsafe { Box::from_raw(file) });
            drop(open_handles);
            device::dereference_device(device as *mut _);
            return Err(completion.status);
        }
        *open_handles += 1;
        drop(open_handles);
        Ok(Handle {
            file,
            device,
            access: wanted,
            number,
            synchronous,
            busy: std::sync::Arc::new(AtomicBool::new(false)),
            entry: std::sync::Arc::default(),
            file_name,
        })
    }

    /// Sends a control request, as `DeviceIoControl` would: the access check on the code's
    /// access bits, then the IRP; returns the status and the bytes copied back once the request
    /// completes (a pended one is waited for, as a synchronous `DeviceIoControl` waits).
    pub fn control(
        &self,
        handle: &Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> (i32, Vec<u8>) {
        self.finish(self.control_overlapped(handle, code, input, output_capacity))
    }

    /// Sends a control request and returns at once, as `DeviceIoControl` with an `OVERLAPPED`
    /// does: [`Bed::finish`] waits for its end, [`Bed::cancel`] cancels it. On a synchronous
    /// handle the I/O manager lets one request of the file object in at a time, and this one
    /// holds it until it is finished.
    pub fn control_overlapped(
        &self,
        handle: &Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Pending {
        let what = format!(
            "{} {code:#010x} (in {}, out {output_capacity}) on handle {}",
            major::name(major::DEVICE_CONTROL),
            input.len(),
            handle.number
        );
        // ObReferenceObjectByHandle: a handle closed on another thread is gone.
        let Some(lookup) = handle.entry.look_up() else {
            self.step(|| Step {
                what: format!("{what}: the handle is closed"),
                status: Some(ob::STATUS_INVALID_HANDLE),
                ..Step::default()
            });
            return Pending::refused(what, ob::STATUS_INVALID_HANDLE);
        };
        let required = pagelock_protocol::required_access(code);
        if required & handle.access != required {
            self.step(|| Step {
                what: format!("{what}: access denied by the I/O manager"),
                status: Some(status::ACCESS_DENIED),
                ..Step::default()
            });
            return Pending::refused(what, status::ACCESS_DENIED);
        }
        // Buffered: one system buffer, the input copied in and the rest poisoned so that output
        // the driver did not write shows. Direct: the input in the system buffer, the output
        // described by an MDL, which the bed does not build (MdlAddress stays NULL). Neither:
        // the caller's buffers themselves.
        let method = code & 3;
        let buffered = method == pagelock_protocol::METHOD_BUFFERED;
        let mut system = vec![
            POISON;
            if buffered {
                input.len().max(output_capacity)
            } else if method == 3 {
                0
            } else {
                input.len()
            }
        ];
        let copied = input.len().min(system.len());
        system[..copied].copy_from_slice(&input[..copied]);
        let mut caller_input = input.to_vec();
        let mut caller_output = vec![POISON; if buffered { 0 } else { output_capacity }];
        let pointer = |bytes: &mut Vec<u8>| {
            if bytes.is_empty() {
                std::ptr::null_mut()
            } else {
                bytes.as_mut_ptr().cast::<c_void>()
            }
        };
        let control = Control {
            code,
            input_len: input.len(),
            output_len: output_capacity,
            system_buffer: pointer(&mut system),
            type3_input: if method == 3 {
                pointer(&mut caller_input)
            } else {
                std::ptr::null_mut()
            },
            user_buffer: if method == 3 {
                pointer(&mut caller_output)
            } else {
                std::ptr::null_mut()
            },
        };
        // The I/O manager's file object lock: one request at a time on a synchronous handle.
        handle.lock_file_object(&|| what.clone());
        // SAFETY: the loaded driver's object and the handle's device; the buffers are the
        // Pending's, which waits for the IRP's end before it lets them go.
        let sent = unsafe {
            irp::start(
                self.driver,
                handle.device as *mut _,
                Request {
                    major: major::DEVICE_CONTROL,
                    file: handle.file,
                    control: Some(control),
                    create_options: 0,
                },
                move || drop(lookup),
            )
        };
        Pending {
            sent: Some(sent),
            buffers: [system, caller_input, caller_output],
            buffered,
            output_capacity,
            busy: handle.synchronous.then(|| handle.busy.clone()),
            what,
            refused: None,
        }
    }

    /// Waits for a request's end, as `GetOverlappedResult` with `bWait` does; returns its status
    /// and the bytes copied back.
    pub fn finish(&self, mut pending: Pending) -> (i32, Vec<u8>) {
        if let Some(status) = pending.refused {
            return (status, Vec::new());
        }
        let completion = pending.complete();
        let [system, _, caller_output] = std::mem::take(&mut pending.buffers);
        let mut buffer = if pending.buffered { system } else { caller_output };
        // Windows copies Information bytes back unless the status is an error.
        let error = completion.status.cast_unsigned() >> 30 == 3;
        let output = if error {
            Vec::new()
        } else {
            let n = usize::try_from(completion.information)
                .unwrap_or(usize::MAX)
                .min(pending.output_capacity);
            buffer.truncate(n);
            buffer
        };
        self.step(|| Step {
            what: pending.what.clone(),
            status: Some(completion.status),
            information: Some(completion.information),
            output: Some(hex(&output)),
            times: Some(completion.times),
            ..Step::default()
        });
        (completion.status, output)
    }

    /// Cancels every request of `handle` still with the driver, as `CancelIoEx(handle, NULL)`
    /// does: each is marked cancelled and its cancel routine, if it has one, called (one still
    /// in its dispatch on another CPU is cancelled when the driver queues it). Returns how many
    /// cancel routines ran.
    pub fn cancel_all(&self, handle: &Handle) -> usize {
        let irps = irp::in_flight(handle.file as usize);
        let ran = irps.iter().filter(|i| irp::cancel(**i as *mut _)).count();
        self.step(|| Step {
            what: format!(
                "CancelIoEx on handle {}: {} request(s) in flight, {ran} cancel routine(s) ran",
                handle.number,
                irps.len()
            ),
            ..Step::default()
        });
        ran
    }

    /// IRPs the driver has pended and not completed.
    #[must_use]
    pub fn irps_outstanding(&self) -> usize {
        irp::pended(None).len()
    }

    /// Whether `handle` was opened for overlapped I/O.
    #[must_use]
    pub const fn overlapped(handle: &Handle) -> bool {
        !handle.synchronous
    }

    /// Cancels a request, as `CancelIoEx` does (`IoCancelIrp`); false when it has ended already
    /// or the driver set no cancel routine on it.
    pub fn cancel(&self, pending: &Pending) -> bool {
        match &pending.sent {
            Some(sent) if !sent.completed() => {
                let cancelled = irp::cancel(sent.irp());
                self.step(|| Step {
                    what: format!(
                        "IoCancelIrp of {}: {}",
                        pending.what,
                        if cancelled { "its cancel routine ran" } else { "no cancel routine" }
                    ),
                    ..Step::default()
                });
                cancelled
            }
            _ => false,
        }
    }

    /// Closes a handle (`CloseHandle`): cleanup, then close, as the I/O manager sends them.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "closing takes the handle: it cannot be used again"
    )]
    pub fn close(&self, handle: Handle) {
        self.close_shared(&handle);
    }

    /// Closes a handle that other threads may be using at this moment, as `CloseHandle` on one
    /// thread does while others send requests on the same handle; their later requests find it
    /// gone (`STATUS_INVALID_HANDLE`). Closing a closed handle does nothing.
    ///
    /// `IRP_MJ_CLEANUP` comes at once, in the closing thread, whatever requests of the file
    /// object are still in the driver: the I/O manager sends it when the handle count drops to
    /// zero (`IopCloseFile`, called by the object manager as it closes the last handle), not
    /// when the references do. Each request holds a reference to the file object, so
    /// `IRP_MJ_CLOSE` comes only after the last of them (`IopDeleteFile`, when the reference
    /// count reaches zero), which in a scheduled run with a system worker (see
    /// [`Bed::close_worker`]) is on the worker's CPU, at `PASSIVE_LEVEL` or `APC_LEVEL`, as
    /// Windows may deliver it.
    ///
    /// Cleanup must leave none of the file object's IRPs queued in the driver (each one would
    /// hold the file object, and its close, forever); the bed cancels what is left, as the
    /// I/O manager cancels a thread's requests when it exits, and sends the close once the last
    /// of them has completed.
    pub fn close_shared(&self, handle: &Handle) {
        if handle.entry.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let file = handle.file as usize;
        if ke::dpc::running() > 0 {
            record::reached("IRP_MJ_CLEANUP sent while a DPC runs on another CPU");
        }
        if irp::in_dispatch(file) {
            record::reached(
                "IRP_MJ_CLEANUP sent while a request of the file object is in its dispatch routine",
            );
        }
        let closing = Closing {
            file: handle.file,
            device: handle.device,
            number: handle.number,
            entry: std::sync::Arc::clone(&handle.entry),
            _file_name: std::sync::Arc::clone(&handle.file_name),
        };
        // A synchronous file object: IopCloseFile first takes the file object's lock, waiting
        // for a request of it still in the driver. An overlapped one: no wait at all.
        let locked =
            handle.lock_file_object(&|| format!("CloseHandle of handle {}", handle.number));
        let queued_before: Vec<usize> = irp::pended(Some(file)).iter().map(|p| p.0).collect();
        self.send_close_major(&closing, major::CLEANUP, "");
        if locked {
            handle.busy.store(false, Ordering::Release);
        }
        Self::cancel_left_queued(&closing, &queued_before);
        let mut deferred = sched::lock(&self.deferred);
        if let Some(queue) = deferred.as_mut() {
            queue.push(closing);
            return;
        }
        drop(deferred);
        self.finish_close(closing);
        self.unload_if_stopped();
    }

    /// What the driver left queued once cleanup returned: an IRP of the file object that still
    /// has a cancel routine. (One without is being completed on another CPU, which is legal:
    /// close waits for it.) The bed cancels each, as the I/O manager cancels a thread's
    /// requests. One in `queued_before` (queued before cleanup began) is one cleanup failed to
    /// drain; one that was still on its way, in its dispatch routine, is one the driver let in
    /// after cleanup had drained.
    fn cancel_left_queued(closing: &Closing, queued_before: &[usize]) {
        let file = closing.file as usize;
        for (irp, m) in irp::pended(Some(file)) {
            if irp::cancel(irp as *mut _) {
                let (rule, when) = if queued_before.contains(&irp) {
                    (Rule::QueuedAfterCleanup, "still queued")
                } else {
                    (Rule::PendedAfterCleanup, "queued by a request that raced the cleanup")
                };
                record::violation(
                    rule,
                    [irp as u64, file as u64, u64::from(m), 0],
                    format!(
                        "{} of handle {} {when} (cancellable) when IRP_MJ_CLEANUP returned",
                        major::name(m),
                        closing.number
                    ),
                );
            }
        }
    }

    fn send_close_major(&self, closing: &Closing, m: u8, how: &str) {
        let request = Request { major: m, file: closing.file, control: None, create_options: 0 };
        // SAFETY: the loaded driver's object and the handle's device.
        let completion = unsafe { irp::send(self.driver, closing.device as *mut _, request) };
        self.step(|| Step {
            what: format!("{} (handle {}){how}", major::name(m), closing.number),
            status: Some(completion.status),
            ..Step::default()
        });
    }

    /// Sends `IRP_MJ_CLOSE` once the file object's last reference is gone, and frees it.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the file object is freed: nothing may close it again"
    )]
    fn finish_close(&self, closing: Closing) {
        // Each request holds a reference to the file object: close comes after the last, the
        // requests still looking the handle up included.
        let file = closing.file as usize;
        irp::wait_for(
            &|| closing.entry.looking_up.load(Ordering::SeqCst) == 0 && !irp::file_busy(file),
            &|| format!("IRP_MJ_CLOSE of handle {} waits for its requests", closing.number),
        );
        let irql = irql::current();
        let how = if sched::active() {
            format!(", on CPU {} at IRQL {irql}", sched::current_cpu().unwrap_or(0))
        } else {
            String::new()
        };
        self.send_close_major(&closing, major::CLOSE, &how);
        // SAFETY: the handle's file object, made in `open`; after close the driver may no
        // longer refer to it, and the closed handle can no longer reach it.
        drop(unsafe { Box::from_raw(closing.file) });
        device::dereference_device(closing.device as *mut _);
        let mut open_handles = sched::lock(&self.open_handles);
        *open_handles -= 1;
        if *open_handles == 0 {
            report_locked_sections(Rule::LockedAfterLastClose, "after the last handle closed");
        }
        drop(open_handles);
        mm::get().page_out_unlocked();
    }

    /// Stops the driver's service (`sc stop`, `NtUnloadDriver`), as the I/O manager does: it
    /// marks the driver for unload, from then on refuses opens of its devices
    /// (`STATUS_NO_SUCH_DEVICE`, `IopParseDevice`), and runs `DriverUnload` once the last
    /// reference to them is gone, at once when none is left, or else in the thread whose close
    /// dropped the last at `PASSIVE_LEVEL` (`IopCompleteUnloadOrDelete`), which may be while
    /// other threads still return from the driver's dispatch routines.
    pub fn stop_service(&self) {
        self.step(|| Step { what: "service stopped".to_owned(), ..Step::default() });
        self.stopping.store(true, Ordering::SeqCst);
        self.unload_if_stopped();
    }

    /// Whether the driver's service was stopped.
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Unloads the driver when its service was stopped and no handle is open any more.
    fn unload_if_stopped(&self) {
        if self.stopping.load(Ordering::SeqCst) && *sched::lock(&self.open_handles) == 0 {
            self.unload();
        }
    }

    /// The system worker of a scheduled run: from here on, closes are deferred to it, and it
    /// sends them, each at `PASSIVE_LEVEL` or `APC_LEVEL` as the schedule draws, whenever the
    /// scheduler runs its CPU; between them it lets timers fire and runs DPCs, as the schedule
    /// draws. It returns once `others_done()` and nothing is left to close.
    pub fn close_worker(&self, others_done: &dyn Fn() -> bool) {
        loop {
            let next = sched::lock(&self.deferred).as_mut().and_then(Vec::pop);
            if let Some(closing) = next {
                let apc = sched::choose_below(2) == 1;
                if apc {
                    irql::set(irql::APC_LEVEL);
                }
                self.finish_close(closing);
                if apc {
                    irql::set(irql::PASSIVE_LEVEL);
                }
                self.unload_if_stopped();
            } else if sched::choose_below(2) == 0 && ke::idle() {
                // Nothing to close: as the schedule draws, this CPU lets timers fire and runs
                // DPCs, so that they meet the other CPUs' requests at any point.
            } else if others_done() || !sched::wait_on_other_cpu() {
                break;
            }
        }
    }

    /// Defers closes to a system worker ([`Bed::close_worker`]) from now until
    /// [`Bed::close_now`].
    pub fn defer_closes(&self) {
        *sched::lock(&self.deferred) = Some(Vec::new());
    }

    /// Closes at once again, sending the closes still deferred.
    pub fn close_now(&self) {
        let left = sched::lock(&self.deferred).take().unwrap_or_default();
        for closing in left {
            self.finish_close(closing);
        }
        self.unload_if_stopped();
    }

    /// Lock counts of the pageable sections, as the memory manager keeps them.
    #[must_use]
    pub fn lock_counts(&self) -> Vec<(String, i64)> {
        mm::get().counts()
    }

    /// The rules that fired so far.
    #[must_use]
    pub fn violations(&self) -> Vec<Violation> {
        record::get().violations.clone()
    }

    /// Runs `DriverUnload` (once), checks that nothing is left behind, and frees the image.
    pub fn unload(&self) {
        if self.unloaded.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(unload) = self.driver().DriverUnload else {
            record::note("bed: no DriverUnload: Windows cannot unload this driver".to_owned());
            return;
        };
        // SAFETY: the bindings are compiled for this host, so the pointer says "C"; it is the
        // Win64 unload routine of the image.
        let unload = unsafe {
            std::mem::transmute::<unsafe extern "C" fn(*mut ddk::DRIVER_OBJECT), Unload>(unload)
        };
        // A service stop can come at any moment, the one a timer of the driver falls due
        // included: the clock interrupt has then queued the timer's DPC on a processor that has
        // not run it yet when DriverUnload begins, and the driver must wait for it
        // (KeFlushQueuedDpcs) before it returns and its image goes.
        if ke::timer::expire_next() {
            record::note("bed: a timer of the driver fell due as DriverUnload began".to_owned());
        }
        if irp::dispatching() > 0 {
            record::reached(UNLOAD_MEETS_A_DISPATCH);
        }
        // SAFETY: the unload routine with its driver object, at PASSIVE_LEVEL, no handle open.
        unsafe { unload(self.driver) };
        self.step(|| Step { what: "DriverUnload".to_owned(), ..Step::default() });
        self.check_left_behind("at unload");
        // The kernel frees the image once DriverUnload has returned (MmUnloadSystemImage):
        // a thread still returning into it, or a timer or DPC left behind, faults there.
        mm::get().free_image();
    }

    fn check_left_behind(&self, when: &str) {
        if irql::current() != irql::PASSIVE_LEVEL {
            irql::set(irql::PASSIVE_LEVEL);
        }
        report_locked_sections(Rule::LockedAtUnload, when);
        // No IRP can be outstanding here: each handle's close waited for its requests.
        let mm = mm::get();
        for (timer, _) in ke::timer::set_timers() {
            record::violation(
                Rule::TimerOrDpcAtUnload,
                [bed_number(0x22), timer as u64, 0, 0],
                format!("the KTIMER at {} still set {when}", mm.describe(timer)),
            );
        }
        for dpc in ke::dpc::queued() {
            record::violation(
                Rule::TimerOrDpcAtUnload,
                [bed_number(0x22), dpc as u64, 0, 0],
                format!("the KDPC at {} still queued {when}", mm.describe(dpc)),
            );
        }
        ex::check_at_unload();
        let (devices, links) = device::left_behind();
        for (object, name) in devices {
            record::violation(
                Rule::DeviceLeftAtUnload,
                [object as u64, 0, 0, 0],
                format!("device {name} left {when}"),
            );
        }
        for link in links {
            record::violation(
                Rule::LinkLeftAtUnload,
                [0; 4],
                format!("symbolic link {link} left {when}"),
            );
        }
        let _ = &self.image;
    }

    /// The report so far.
    #[must_use]
    pub fn report(&self) -> Report {
        report_now(None, true)
    }
}

/// Reports `rule` for every pageable section whose lock count is not zero `when`.
fn report_locked_sections(rule: Rule, when: &str) {
    for (index, s) in mm::get().sections.iter().enumerate().filter(|(_, s)| s.pageable()) {
        let count = s.count.load(Ordering::SeqCst);
        if count != 0 {
            record::violation(
                rule,
                [Mm::handle(index) as u64, count.cast_unsigned(), 0, 0],
                format!("{} has lock count {count} {when}", s.name),
            );
        }
    }
}

/// What the report says of the run besides the kernel's records.
struct Run {
    driver: String,
    force_irql: bool,
}

static RUN: OnceLock<Run> = OnceLock::new();

/// Installs the hooks through which the components below reach this layer and each other:
/// the bugcheck's report, the scheduler's watchdog, and Force IRQL checking (a raise to
/// `DISPATCH_LEVEL`, and a switch to a CPU at it, page out every unlocked section).
fn install_hooks(force_irql: bool) {
    record::on_stop(stopped);
    // The clock interrupt, on a CPU of a scheduled run, at one kernel entry in four as the
    // schedule draws: DPCs then run interrupting whatever that CPU was doing below
    // DISPATCH_LEVEL, as on Windows, not only where a CPU is idle.
    routine::on_enter(|| {
        if sched::active()
            && sched::current_cpu().is_some()
            && ke::interrupt_pending()
            && sched::choose_below(4) == 0
        {
            let _ = ke::idle();
        }
    });
    sched::on_stuck(|cpu| {
        record::stop(
            Rule::CpuStuck,
            None,
            [u64::from(cpu), sched::STUCK_AFTER.as_secs(), 0, 0],
            format!(
                "CPU {cpu} reached no switch point for {} s: driver code waiting on memory that \
                 only another CPU could change",
                sched::STUCK_AFTER.as_secs()
            ),
        )
    });
    mm::on_released(|handle, section| {
        if ke::dpc::running() > 0 {
            record::reached("a section unlocked to zero while a DPC runs on another CPU");
        }
        let pended = irp::pended(None);
        if !pended.is_empty() {
            record::violation(
                Rule::ReleasedWithIrpsOutstanding,
                [handle as u64, pended.len() as u64, 0, 0],
                format!(
                    "{} unlocked to a lock count of 0 with {} IRP(s) pended",
                    section.name,
                    pended.len()
                ),
            );
        }
    });
    if force_irql {
        irql::on_raise_to_dispatch(|| {
            if let Some(mm) = mm::try_get() {
                mm.page_out_unlocked();
            }
        });
        sched::on_switched_in(irql::switched_in);
    }
}

/// The bugcheck hook: the picture and the report up to this point, then the end of the run.
fn stopped(bugcheck: Bugcheck) -> ! {
    write_trace(Some(&format!("{}: {}", bugcheck.rule, bugcheck.detail)));
    let report = report_now(Some(bugcheck), false);
    isolate::stopped(report)
}

/// Starts drawing the run into `file` (see [`crate::trace`]); call before [`Bed::load`].
pub fn trace_to(file: std::path::PathBuf) {
    trace::start(file, || {
        let mut counts = [0u16; 4];
        if let Some(mm) = mm::try_get() {
            for (slot, s) in counts.iter_mut().zip(mm.pageable()) {
                *slot = u16::try_from(s.count.load(Ordering::Relaxed).clamp(0, 0xFFFF))
                    .unwrap_or(u16::MAX);
            }
        }
        counts
    });
}

/// Writes the picture of the run, if one was asked for; `why` names what ended it.
pub fn write_trace(why: Option<&str>) {
    let sections: Vec<String> = mm::try_get()
        .map(|mm| mm.pageable().take(4).map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    let routine = |index: u16| {
        Routine::ALL
            .get(usize::from(index))
            .map_or_else(|| format!("routine {index}"), |r| r.name().to_owned())
    };
    trace::write(&sections, &routine, why);
}

/// The report from the components' records. With `wait` false (the bugcheck path, which must
/// not wait) a record whose lock is held is left out, and the report says so.
#[must_use]
pub fn report_now(bugcheck: Option<Bugcheck>, wait: bool) -> Report {
    let sections = mm::try_get()
        .into_iter()
        .flat_map(Mm::pageable)
        .map(|s| SectionReport {
            name: s.name.clone(),
            lock_count: s.count.load(Ordering::SeqCst),
            page_outs: s.page_outs.load(Ordering::Relaxed),
            page_ins: s.page_ins.load(Ordering::Relaxed),
        })
        .collect();
    let run = RUN.get();
    let mut report = Report {
        driver: run.map(|r| r.driver.clone()).unwrap_or_default(),
        sections,
        calls: routine::calls(),
        bugcheck,
        ..Report::default()
    };
    if let Some(record) = if wait { Some(record::get()) } else { record::try_get() } {
        report.entry_status = record.entry_status;
        report.steps.clone_from(&record.steps);
        report.log.clone_from(&record.log);
        report.violations.clone_from(&record.violations);
        report.races = record.races.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        drop(record);
    } else {
        report.notes.push(
            "the run's record was locked when the run stopped: steps and log are missing"
                .to_owned(),
        );
    }
    if let Some(injection) = routine::injection(wait) {
        report.injected = injection.injected.len() as u64;
        report.injected_failures = injection.injected;
        report.failable_calls = injection.failable_calls.iter().map(|c| (*c).to_owned()).collect();
    }
    report.pool_outstanding = ex::outstanding(wait).unwrap_or(0);
    if run.is_some_and(|r| !r.force_irql) {
        report.notes.push("Force IRQL checking was off".to_owned());
    }
    report.schedule = sched::ran().then(sched::summary);
    report
}

/// A control request sent with [`Bed::control_overlapped`].
///
/// It holds its IRP and the buffers the driver may still write. Dropped unfinished, it waits for
/// the IRP's end first, so that no buffer goes away under the driver.
#[must_use = "a request is finished with `Bed::finish`"]
pub struct Pending {
    sent: Option<Sent>,
    /// The system buffer, the caller's input and the caller's output.
    buffers: [Vec<u8>; 3],
    buffered: bool,
    output_capacity: usize,
    /// The synchronous file object's busy flag, released when the request ends.
    busy: Option<std::sync::Arc<AtomicBool>>,
    what: String,
    /// The I/O manager refused the request with this status before it reached the driver.
    refused: Option<i32>,
}

// SAFETY: the IRP and the buffers are the bed's; the driver reaches them through the IRP from
// whichever CPU it runs on, as on Windows, and the requester only reads them once it ended.
unsafe impl Send for Pending {}

impl Pending {
    const fn refused(what: String, status: i32) -> Self {
        Self {
            sent: None,
            buffers: [Vec::new(), Vec::new(), Vec::new()],
            buffered: true,
            output_capacity: 0,
            busy: None,
            what,
            refused: Some(status),
        }
    }

    /// Waits for the IRP's end (once) and releases the file object to the next request.
    fn complete(&mut self) -> irp::Completion {
        let completion = self.sent.take().map_or_else(
            || irp::Completion {
                status: status::UNSUCCESSFUL,
                information: 0,
                times: crate::report::RequestTimes::default(),
            },
            Sent::wait,
        );
        if let Some(busy) = self.busy.take() {
            busy.store(false, Ordering::Release);
        }
        completion
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.sent.is_some() {
            let _ = self.complete();
        }
    }
}
