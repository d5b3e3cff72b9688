//! The I/O manager (`Io`): device objects and symbolic links by name, IRPs with one stack
//! location, completion, and the checks I/O verification makes around every dispatch.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    ffi::c_void,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    ke::irql,
    ob, record,
    routine::{self, Routine},
    rtl::unicode_text,
    verifier::{Rule, bed_number},
};

/// A device object the driver created.
#[derive(Debug)]
struct DeviceRecord {
    /// The object (0x150 bytes plus the extension, as the kernel allocates it).
    object: usize,
    /// Its name.
    name: String,
    /// File objects open on it: each holds a reference, as in the kernel.
    references: u32,
    /// `IoDeleteDevice` was called while it was referenced: no longer opened by name, freed
    /// when the last reference goes (the kernel's `DOE_DELETE_PENDING`).
    delete_pending: bool,
}

/// The devices and links the driver made.
struct Names {
    devices: Vec<DeviceRecord>,
    /// Symbolic links: name to target.
    links: BTreeMap<String, String>,
}

static NAMES: Mutex<Names> = Mutex::new(Names { devices: Vec::new(), links: BTreeMap::new() });

fn names() -> MutexGuard<'static, Names> {
    crate::sched::lock(&NAMES)
}

/// The device object `name` (a device name or a symbolic link) resolves to; a device whose
/// deletion is pending is no longer found by name.
#[must_use]
pub fn find_device(name: &str) -> Option<usize> {
    let names = names();
    let name = canonical_name(name);
    let target = names.links.get(&name).cloned().unwrap_or(name);
    names.devices.iter().find(|d| d.name == target && !d.delete_pending).map(|d| d.object)
}

/// A file object now references `device`, from before its create is dispatched, as in the
/// kernel: a driver that deletes its device during the create cannot free it.
pub fn reference_device(device: usize) {
    if let Some(record) = names().devices.iter_mut().find(|d| d.object == device) {
        record.references += 1;
    }
}

/// The devices (address and name) and links the driver has not deleted.
#[must_use]
pub fn left_behind() -> (Vec<(usize, String)>, Vec<String>) {
    let names = names();
    (
        names.devices.iter().map(|d| (d.object, d.name.clone())).collect(),
        names.links.keys().cloned().collect(),
    )
}

/// The x64 kernel's `DEVICE_OBJECT` size (mingw-w64's definition is 8 bytes short).
const DEVICE_OBJECT_SIZE: usize = 0x150;
/// `STATUS_PENDING`.
pub const STATUS_PENDING: i32 = 0x103;
/// `STATUS_OBJECT_NAME_NOT_FOUND`.
pub const STATUS_OBJECT_NAME_NOT_FOUND: i32 = 0xC000_0034_u32.cast_signed();
/// `STATUS_OBJECT_NAME_COLLISION`.
const STATUS_OBJECT_NAME_COLLISION: i32 = 0xC000_0035_u32.cast_signed();
/// `IO_TYPE_DEVICE`, `IO_TYPE_IRP`, `IO_TYPE_FILE`.
const IO_TYPE_DEVICE: i16 = 3;
const IO_TYPE_IRP: i16 = 6;
/// `IO_TYPE_FILE`.
pub const IO_TYPE_FILE: i16 = 5;
/// `DO_DEVICE_INITIALIZING`.
const DO_DEVICE_INITIALIZING: u32 = 0x80;

/// Major function codes the bed sends.
pub mod major {
    /// `IRP_MJ_CREATE`.
    pub const CREATE: u8 = 0x00;
    /// `IRP_MJ_CLOSE`.
    pub const CLOSE: u8 = 0x02;
    /// `IRP_MJ_DEVICE_CONTROL`.
    pub const DEVICE_CONTROL: u8 = 0x0E;
    /// `IRP_MJ_CLEANUP`.
    pub const CLEANUP: u8 = 0x12;

    /// The name of a major function code.
    #[must_use]
    pub const fn name(major: u8) -> &'static str {
        match major {
            CREATE => "IRP_MJ_CREATE",
            CLOSE => "IRP_MJ_CLOSE",
            DEVICE_CONTROL => "IRP_MJ_DEVICE_CONTROL",
            CLEANUP => "IRP_MJ_CLEANUP",
            _ => "IRP_MJ_(other)",
        }
    }
}

/// A name as the object manager resolves it: `\\.\X`, `\??\X` and `\GLOBAL??\X` all mean
/// `\DosDevices\X`.
#[must_use]
pub fn canonical_name(name: &str) -> String {
    for prefix in [r"\\.\", r"\??\", r"\GLOBAL??\"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return format!(r"\DosDevices\{rest}");
        }
    }
    name.to_owned()
}

/// `IoCreateDevice`.
pub(crate) extern "win64" fn create_device(
    driver: *mut ddk::DRIVER_OBJECT,
    extension_size: u32,
    name: *const ddk::UNICODE_STRING,
    device_type: u32,
    characteristics: u32,
    _exclusive: u8,
    out: *mut *mut ddk::DEVICE_OBJECT,
) -> i32 {
    if routine::enter(Routine::IoCreateDevice) {
        return status::INSUFFICIENT_RESOURCES;
    }
    // SAFETY: the driver passes a valid name (or NULL for an unnamed device).
    let name = unsafe { unicode_text(name) };
    if !name.is_empty() && names().devices.iter().any(|d| d.name == name) {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    // SAFETY: calloc has no preconditions; the result is checked for null.
    let object = unsafe { libc::calloc(1, DEVICE_OBJECT_SIZE + extension_size as usize) }
        .cast::<ddk::DEVICE_OBJECT>();
    if object.is_null() {
        return status::INSUFFICIENT_RESOURCES;
    }
    // SAFETY: a fresh zeroed block large enough for the kernel's DEVICE_OBJECT, ours alone.
    let device = unsafe { &mut *object };
    device.Type = IO_TYPE_DEVICE;
    device.Size = u16::try_from(DEVICE_OBJECT_SIZE).unwrap_or(0);
    device.ReferenceCount = 0;
    device.DriverObject = driver;
    device.DeviceType = device_type;
    device.Characteristics = characteristics;
    device.Flags = DO_DEVICE_INITIALIZING;
    device.StackSize = 1;
    if extension_size > 0 {
        device.DeviceExtension = object.wrapping_byte_add(DEVICE_OBJECT_SIZE).cast();
    }
    // SAFETY: the driver passes its own driver object, which the bed owns and keeps alive.
    let driver_object = unsafe { &mut *driver };
    device.NextDevice = driver_object.DeviceObject;
    driver_object.DeviceObject = object;
    // SAFETY: the driver passes a PDEVICE_OBJECT to fill.
    unsafe { out.write(object) };
    names().devices.push(DeviceRecord {
        object: object as usize,
        name,
        references: 0,
        delete_pending: false,
    });
    status::SUCCESS
}

/// `IoDeleteDevice`: deferred while file objects reference the device, as in the kernel.
pub(crate) extern "win64" fn delete_device(device: *mut ddk::DEVICE_OBJECT) {
    routine::enter(Routine::IoDeleteDevice);
    let references = names().devices.iter_mut().find(|d| d.object == device as usize).map(|d| {
        d.delete_pending = true;
        d.references
    });
    match references {
        None => {
            // Windows would fault on a device that is not one; the bed says so and goes on.
            record::note(format!("bed: IoDeleteDevice({device:p}) of an unknown device ignored"));
        }
        Some(0) => free_device(device),
        Some(n) => {
            // As the kernel: marked for deletion, freed when the last reference goes.
            let note = format!(
                "bed: IoDeleteDevice({device:p}) with {n} file object(s) open on it: deletion deferred to the last close"
            );
            record::note(note);
        }
    }
}

/// Drops a file object's reference to `device`; frees a device whose deletion was deferred
/// once its last reference goes.
pub fn dereference_device(device: *mut ddk::DEVICE_OBJECT) {
    let free = names().devices.iter_mut().find(|d| d.object == device as usize).is_some_and(|d| {
        d.references = d.references.saturating_sub(1);
        d.delete_pending && d.references == 0
    });
    if free {
        record::note(format!("bed: device {device:p} freed at its last close"));
        free_device(device);
    }
}

/// Unlinks `device` from its driver and frees it.
fn free_device(device: *mut ddk::DEVICE_OBJECT) {
    names().devices.retain(|d| d.object != device as usize);
    ob::deleted(device as usize);
    // SAFETY: a device this bed created (the callers found its record), valid until freed below.
    let device_object = unsafe { &*device };
    // SAFETY: its driver object is the bed's, alive while the driver is loaded.
    let driver = unsafe { &mut *device_object.DriverObject };
    let mut link: *mut *mut ddk::DEVICE_OBJECT = &raw mut driver.DeviceObject;
    // SAFETY: the driver's device list holds devices this bed created, each valid.
    while let Some(current) = unsafe { link.as_mut() }.filter(|l| !l.is_null()) {
        if *current == device {
            *current = device_object.NextDevice;
            break;
        }
        // SAFETY: `*current` is a valid device of the list.
        link = unsafe { &raw mut (**current).NextDevice };
    }
    // SAFETY: allocated by calloc in io_create_device, unlinked above, freed once.
    unsafe { libc::free(device.cast()) };
}

/// `IoCreateSymbolicLink`.
pub(crate) extern "win64" fn create_symbolic_link(
    link: *const ddk::UNICODE_STRING,
    target: *const ddk::UNICODE_STRING,
) -> i32 {
    if routine::enter(Routine::IoCreateSymbolicLink) {
        return status::INSUFFICIENT_RESOURCES;
    }
    // SAFETY: the driver passes a valid counted string.
    let link = canonical_name(&unsafe { unicode_text(link) });
    // SAFETY: as above.
    let target = unsafe { unicode_text(target) };
    let mut names = names();
    if names.links.contains_key(&link) {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    names.links.insert(link, target);
    status::SUCCESS
}

/// `IoDeleteSymbolicLink`.
pub(crate) extern "win64" fn delete_symbolic_link(link: *const ddk::UNICODE_STRING) -> i32 {
    routine::enter(Routine::IoDeleteSymbolicLink);
    // SAFETY: the driver passes a valid counted string.
    let link = canonical_name(&unsafe { unicode_text(link) });
    if names().links.remove(&link).is_some() {
        status::SUCCESS
    } else {
        STATUS_OBJECT_NAME_NOT_FOUND
    }
}

/// An IRP as the bed allocates it: the IRP, its one stack location, and what the I/O manager
/// tracks about it. `#[repr(C)]` with the IRP first, so `IofCompleteRequest` finds the rest.
#[repr(C)]
struct Frame {
    irp: ddk::IRP,
    stack: ddk::IO_STACK_LOCATION,
    /// [`IN_FLIGHT`] while the IRP is with the driver, cleared when it is retired.
    tag: AtomicU64,
    completions: AtomicU32,
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            irp: ddk::IRP::default(),
            stack: ddk::IO_STACK_LOCATION::default(),
            tag: AtomicU64::new(0),
            completions: AtomicU32::new(0),
        }
    }
}

thread_local! {
    /// Retired frames of this thread, reused: a frame is never freed while its thread runs
    /// driver code, so a late `IofCompleteRequest` on a retired IRP reads valid memory.
    #[expect(clippy::vec_box, reason = "boxed so that a frame never moves while the Vec grows")]
    static FRAMES: RefCell<Vec<Box<Frame>>> = const { RefCell::new(Vec::new()) };
}

/// Marks a live frame.
const IN_FLIGHT: u64 = 0x5052_4920_4445_4221; // "!BED IRP"

/// `IofCompleteRequest`: completing an IRP no longer in flight, or twice, stops the run.
pub(crate) extern "win64" fn iof_complete_request(irp: *mut ddk::IRP, _boost: i8) {
    routine::enter(Routine::IofCompleteRequest);
    let frame = irp.cast::<Frame>();
    // SAFETY: the bed's IRPs are the first field of a Frame; frames are recycled, never freed
    // while their thread runs, so a pointer the driver got from the bed stays readable; the tag
    // says whether it is still in flight.
    let tag = unsafe { &(*frame).tag };
    if tag.load(Ordering::SeqCst) != IN_FLIGHT {
        record::stop(
            Rule::IrpCompletedTwice,
            None,
            [irp as u64, 0, 0, 0],
            format!("IofCompleteRequest({irp:p}) on an IRP no longer in flight"),
        );
    }
    // SAFETY: as above; the frame is live.
    let completions = unsafe { &(*frame).completions };
    if completions.fetch_add(1, Ordering::SeqCst) > 0 {
        record::stop(
            Rule::IrpCompletedTwice,
            None,
            [irp as u64, 0, 0, 0],
            format!("IRP {irp:p} completed a second time"),
        );
    }
}

/// A dispatch routine, called the Win64 way.
type Dispatch = unsafe extern "win64" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP) -> i32;

/// What one IRP came back with.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// `IoStatus.Status`, or `STATUS_PENDING` for a pended IRP.
    pub status: i32,
    /// `IoStatus.Information`.
    pub information: u64,
}

/// An IRP to send.
pub struct Request {
    /// The major function.
    pub major: u8,
    /// The file object of the handle.
    pub file: *mut ddk::FILE_OBJECT,
    /// For device control, its parameters.
    pub control: Option<Control>,
}

/// The parameters of a device-control IRP, with its buffers as the transfer method places them.
pub struct Control {
    /// The control code.
    pub code: u32,
    /// Input bytes.
    pub input_len: usize,
    /// Output buffer size.
    pub output_len: usize,
    /// `AssociatedIrp.SystemBuffer` (buffered: input and output; direct: input).
    pub system_buffer: *mut c_void,
    /// `Parameters.DeviceIoControl.Type3InputBuffer` (neither: the caller's input).
    pub type3_input: *mut c_void,
    /// `UserBuffer` (neither: the caller's output).
    pub user_buffer: *mut c_void,
}

/// Sends one IRP to the driver (`IoCallDriver`) and applies the I/O verification checks.
///
/// # Safety
/// `driver` must be the loaded driver's object and `device` one of its devices.
pub unsafe fn send(
    driver: *const ddk::DRIVER_OBJECT,
    device: *mut ddk::DEVICE_OBJECT,
    request: Request,
) -> Completion {
    let output_capacity = request.control.as_ref().map_or(0, |c| c.output_len);
    let major = request.major;
    let frame = Box::into_raw(prepare(device, request));
    let irp = frame.cast::<ddk::IRP>();
    let before = irql::current();
    crate::trace::record(crate::trace::Kind::IrpBegin, u16::from(major));
    // SAFETY: the caller passes the loaded driver's object; DriverEntry filled MajorFunction.
    let routine = unsafe { (*driver).MajorFunction[usize::from(major)] };
    #[expect(clippy::option_if_let_else, reason = "two paths with their own SAFETY arguments")]
    let returned = if let Some(routine) = routine {
        // SAFETY: the bindings are compiled for this host, so their function pointers say "C";
        // the routine is Win64 code of the image, called the Win64 way.
        let routine = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP) -> i32,
                Dispatch,
            >(routine)
        };
        // SAFETY: a dispatch routine of the loaded driver, with its device and a fresh IRP.
        unsafe { routine(device, irp) }
    } else {
        // No handler: the I/O manager completes with STATUS_INVALID_DEVICE_REQUEST.
        // SAFETY: the frame is ours alone: the driver never saw it.
        let frame = unsafe { &mut *frame };
        frame.irp.IoStatus.__bindgen_anon_1.Status = status::INVALID_DEVICE_REQUEST;
        frame.completions.store(1, Ordering::SeqCst);
        status::INVALID_DEVICE_REQUEST
    };
    crate::trace::record(crate::trace::Kind::IrpEnd, u16::from(major));
    check_irql_and_locks(device, major, before);
    // SAFETY: the frame is ours again: the driver's access to it ended with its return, unless
    // it pended the IRP, in which case the frame is only read here and then left to it.
    let seen = unsafe { &*frame };
    let completions = seen.completions.load(Ordering::SeqCst);
    // SAFETY: the status union's members overlay one 32-bit value.
    let io_status = unsafe { seen.irp.IoStatus.__bindgen_anon_1.Status };
    let information = seen.irp.IoStatus.Information;
    let pending = returned == STATUS_PENDING;
    let name = major::name(major);
    let code = |s: i32| u64::from(s.cast_unsigned());
    if completions == 0 && !pending {
        record::violation(
            Rule::IrpNeverCompleted,
            [bed_number(0x18), irp as u64, u64::from(major), code(returned)],
            format!("{name} returned {returned:#x} without completing the IRP"),
        );
    }
    if completions > 0 && !pending && returned != io_status {
        record::violation(
            Rule::StatusMismatch,
            [bed_number(0x19), irp as u64, code(returned), code(io_status)],
            format!("{name} returned {returned:#x}, but IoStatus.Status is {io_status:#x}"),
        );
    }
    if major == major::DEVICE_CONTROL
        && status::is_success(io_status)
        && information > output_capacity as u64
    {
        record::violation(
            Rule::InformationTooLarge,
            [bed_number(0x1A), irp as u64, information, output_capacity as u64],
            format!("{name}: IoStatus.Information {information} > output buffer {output_capacity}"),
        );
    }
    if pending && completions == 0 {
        // The driver keeps the IRP: its frame must outlive this call (leaked on purpose).
        record::note(format!("bed: {name} pended; pended IRPs are not followed further"));
        return Completion { status: STATUS_PENDING, information: 0 };
    }
    // SAFETY: the frame from Box::into_raw above, retired once and kept for reuse.
    let frame = unsafe { Box::from_raw(frame) };
    frame.tag.store(0, Ordering::SeqCst);
    FRAMES.with(|frames| frames.borrow_mut().push(frame));
    Completion { status: io_status, information }
}

/// A frame for `request`, recycled when this thread has one.
fn prepare(device: *mut ddk::DEVICE_OBJECT, request: Request) -> Box<Frame> {
    let mut frame = FRAMES.with(|frames| frames.borrow_mut().pop()).unwrap_or_default();
    *frame = Frame::default();
    frame.tag.store(IN_FLIGHT, Ordering::SeqCst);
    frame.stack.MajorFunction = request.major;
    frame.stack.DeviceObject = device;
    frame.stack.FileObject = request.file;
    if let Some(control) = request.control {
        frame.stack.Parameters.DeviceIoControl =
            ddk::_IO_STACK_LOCATION__bindgen_ty_1__bindgen_ty_17 {
                OutputBufferLength: u32::try_from(control.output_len).unwrap_or(u32::MAX),
                InputBufferLength: u32::try_from(control.input_len).unwrap_or(u32::MAX),
                IoControlCode: control.code,
                Type3InputBuffer: control.type3_input,
                ..Default::default()
            };
        frame.irp.AssociatedIrp.SystemBuffer = control.system_buffer;
        frame.irp.UserBuffer = control.user_buffer;
    }
    frame.irp.Type = IO_TYPE_IRP;
    frame.irp.Size =
        u16::try_from(size_of::<ddk::IRP>() + size_of::<ddk::IO_STACK_LOCATION>()).unwrap_or(0);
    frame.irp.StackCount = 1;
    frame.irp.CurrentLocation = 1;
    frame.irp.IoStatus.__bindgen_anon_1.Status = status::UNSUCCESSFUL;
    let stack: *mut ddk::IO_STACK_LOCATION = &raw mut frame.stack;
    frame.irp.Tail.Overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation = stack;
    frame
}

/// I/O verification after a dispatch: the IRQL it returned at and spin locks still held.
fn check_irql_and_locks(device: *mut ddk::DEVICE_OBJECT, major: u8, before: u8) {
    let name = major::name(major);
    let after = irql::current();
    if after != before {
        record::violation(
            Rule::IrqlChangedAcrossDispatch,
            [0x05, device as u64, u64::from(before), u64::from(after)],
            format!("{name}: called at IRQL {before}, returned at IRQL {after}"),
        );
        irql::set(before);
    }
    let held = irql::spin_locks_held();
    if held > 0 {
        record::violation(
            Rule::SpinLockNeverReleased,
            [bed_number(0x1E), u64::from(held), u64::from(major), 0],
            format!("{name}: returned holding {held} spin lock(s)"),
        );
        irql::forget_spin_locks();
    }
}
