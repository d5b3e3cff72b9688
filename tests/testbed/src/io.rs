//! The I/O manager: device objects, symbolic links, file objects and IRPs, with the checks
//! Driver Verifier's I/O verification makes around every dispatch.

use std::{ffi::c_void, sync::atomic::Ordering};

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    kernel::{self, DeviceRecord, PASSIVE_LEVEL, kernel},
    rules::Rule,
};

/// The kernel's DEVICE_OBJECT size on x64 (mingw-w64's definition is 8 bytes short).
const DEVICE_OBJECT_SIZE: usize = 0x150;

fn unicode(s: *const ddk::UNICODE_STRING) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: the driver passes a valid UNICODE_STRING.
    let s = unsafe { &*s };
    if s.Buffer.is_null() {
        return String::new();
    }
    // SAFETY: `Length` bytes of UTF-16 at `Buffer`.
    let units = unsafe { std::slice::from_raw_parts(s.Buffer, usize::from(s.Length) / 2) };
    String::from_utf16_lossy(units)
}

extern "win64" fn io_create_device(
    driver: *mut ddk::DRIVER_OBJECT,
    extension_size: u32,
    name: *const ddk::UNICODE_STRING,
    device_type: u32,
    characteristics: u32,
    _exclusive: u8,
    out: *mut *mut ddk::DEVICE_OBJECT,
) -> i32 {
    if kernel::failable("IoCreateDevice") {
        return status::INSUFFICIENT_RESOURCES;
    }
    let name = unicode(name);
    let k = kernel();
    if k.state().devices.iter().any(|d| !name.is_empty() && d.name == name) {
        return 0xC000_0035_u32.cast_signed(); // STATUS_OBJECT_NAME_COLLISION
    }
    // SAFETY: calloc has no preconditions.
    let object = unsafe { libc::calloc(1, DEVICE_OBJECT_SIZE + extension_size as usize) }
        .cast::<ddk::DEVICE_OBJECT>();
    if object.is_null() {
        return status::INSUFFICIENT_RESOURCES;
    }
    // SAFETY: a fresh zeroed block large enough for the kernel's DEVICE_OBJECT; the driver
    // object is the bed's own.
    unsafe {
        let device = &mut *object;
        device.Type = 3;
        device.Size = u16::try_from(DEVICE_OBJECT_SIZE).unwrap_or(0);
        device.DriverObject = driver;
        device.DeviceType = device_type;
        device.Characteristics = characteristics;
        device.Flags = 0x80; // DO_DEVICE_INITIALIZING
        device.StackSize = 1;
        if extension_size > 0 {
            device.DeviceExtension = object.cast::<u8>().add(DEVICE_OBJECT_SIZE).cast();
        }
        device.NextDevice = (*driver).DeviceObject;
        (*driver).DeviceObject = object;
        out.write(object);
    }
    k.state().devices.push(DeviceRecord { object: object as usize, name, dacl: None });
    0
}

extern "win64" fn io_delete_device(device: *mut ddk::DEVICE_OBJECT) {
    kernel::count("IoDeleteDevice");
    let k = kernel();
    let known = {
        let mut state = k.state();
        let before = state.devices.len();
        state.devices.retain(|d| d.object != device as usize);
        before != state.devices.len()
    };
    if !known {
        k.violation(Rule::BadPoolFree, format!("IoDeleteDevice({device:p}): not a device"));
        return;
    }
    // SAFETY: a device this bed created; unlink it from its driver's list, then free it.
    unsafe {
        let driver = (*device).DriverObject;
        let mut link: *mut *mut ddk::DEVICE_OBJECT = &raw mut (*driver).DeviceObject;
        while !(*link).is_null() {
            if *link == device {
                *link = (*device).NextDevice;
                break;
            }
            link = &raw mut (**link).NextDevice;
        }
        libc::free(device.cast());
    }
}

extern "win64" fn io_create_symbolic_link(
    link: *const ddk::UNICODE_STRING,
    target: *const ddk::UNICODE_STRING,
) -> i32 {
    if kernel::failable("IoCreateSymbolicLink") {
        return status::INSUFFICIENT_RESOURCES;
    }
    let (link, target) = (unicode(link), unicode(target));
    let mut state = kernel().state();
    if state.links.contains_key(&link) {
        return 0xC000_0035_u32.cast_signed();
    }
    state.links.insert(link, target);
    0
}

extern "win64" fn io_delete_symbolic_link(link: *const ddk::UNICODE_STRING) -> i32 {
    kernel::count("IoDeleteSymbolicLink");
    let link = unicode(link);
    if kernel().state().links.remove(&link).is_some() { 0 } else { 0xC000_0034_u32.cast_signed() }
}

extern "win64" fn iof_complete_request(irp: *mut ddk::IRP, _boost: i8) {
    kernel::count("IofCompleteRequest");
    let k = kernel();
    let twice = {
        let mut state = k.state();
        let record = state.irps.entry(irp as usize).or_default();
        record.completions += 1;
        record.completions > 1
    };
    if twice {
        crate::bugcheck::stop(
            0x44,
            [irp as u64, 0, 0, 0],
            Rule::IrpCompletedTwice,
            format!("IRP {irp:p} completed twice"),
        );
    }
}

/// The I/O manager's routines, by import name.
#[must_use]
pub fn resolve(name: &str) -> Option<usize> {
    Some(match name {
        "IoCreateDevice" => io_create_device as *const () as usize,
        "IoDeleteDevice" => io_delete_device as *const () as usize,
        "IoCreateSymbolicLink" => io_create_symbolic_link as *const () as usize,
        "IoDeleteSymbolicLink" => io_delete_symbolic_link as *const () as usize,
        "IofCompleteRequest" => iof_complete_request as *const () as usize,
        _ => return None,
    })
}

/// A dispatch routine, called the Win64 way.
type Dispatch = unsafe extern "win64" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP) -> i32;

/// The outcome of one IRP.
pub struct Completion {
    /// `IoStatus.Status` (or the dispatch's return for a pended IRP).
    pub status: i32,
    /// `IoStatus.Information`.
    pub information: u64,
}

/// Who is calling: the identity the access check at create uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An elevated administrator (Administrators group).
    Admin,
    /// A standard user.
    User,
}

impl Caller {
    /// The SIDs in the caller's token.
    fn sids(self) -> &'static [&'static str] {
        match self {
            Self::Admin => &["S-1-5-32-544", "S-1-5-32-545", "S-1-1-0", "S-1-5-11"],
            Self::User => &["S-1-5-32-545", "S-1-1-0", "S-1-5-11"],
        }
    }
}

/// `GENERIC_ALL`, and the file rights it maps to on a device.
const GENERIC_ALL: u32 = 0x1000_0000;

/// The I/O manager's access check at create: the DACL the driver set, if any, must grant the
/// caller the rights it asks for.
#[must_use]
pub fn access_check(device: usize, caller: Caller, wanted: u32) -> bool {
    let state = kernel().state();
    let Some(record) = state.devices.iter().find(|d| d.object == device) else { return false };
    let Some(dacl) = &record.dacl else { return true };
    let granted = dacl
        .iter()
        .filter(|(sid, _)| caller.sids().contains(&sid.as_str()))
        .fold(0u32, |acc, (_, mask)| acc | if mask & GENERIC_ALL != 0 { u32::MAX } else { *mask });
    granted & wanted == wanted
}

/// Sends one IRP to the driver and applies the I/O verification checks. The IRP and its
/// stack location are built here; `prepare` fills the parameters.
///
/// # Panics
/// Never on a correct bed; a bugcheck ends the process instead.
pub fn send(
    driver: *mut ddk::DRIVER_OBJECT,
    device: *mut ddk::DEVICE_OBJECT,
    file: *mut ddk::FILE_OBJECT,
    major: u8,
    system_buffer: *mut c_void,
    output_capacity: usize,
    prepare: impl FnOnce(&mut ddk::IO_STACK_LOCATION),
) -> Completion {
    let k = kernel();
    let mut irp: Box<ddk::IRP> = Box::new(ddk::IRP::default());
    let mut stack: Box<ddk::IO_STACK_LOCATION> = Box::new(ddk::IO_STACK_LOCATION::default());
    stack.MajorFunction = major;
    stack.DeviceObject = device;
    stack.FileObject = file;
    prepare(&mut stack);
    irp.Type = 6;
    irp.StackCount = 1;
    irp.CurrentLocation = 1;
    irp.AssociatedIrp.SystemBuffer = system_buffer;
    irp.IoStatus.__bindgen_anon_1.Status = status::UNSUCCESSFUL;
    let stack_ptr: *mut ddk::IO_STACK_LOCATION = &raw mut *stack;
    // Writing a union field is safe: the overlay of a fresh IRP.
    irp.Tail.Overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation = stack_ptr;
    let irp_ptr: *mut ddk::IRP = &raw mut *irp;
    k.state().irps.insert(irp_ptr as usize, kernel::IrpRecord::default());

    // SAFETY: the driver object is the bed's; MajorFunction was filled by DriverEntry.
    let routine = unsafe { (*driver).MajorFunction[usize::from(major)] };
    let before = kernel::irql();
    let returned = match routine {
        // SAFETY: the dispatch routine is Win64 code of the loaded image; its bindgen type says
        // "C" because the bindings are compiled for this host, so it is called as win64.
        Some(routine) => unsafe {
            let routine: Dispatch = std::mem::transmute::<
                unsafe extern "C" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP) -> i32,
                Dispatch,
            >(routine);
            routine(device, irp_ptr)
        },
        None => {
            irp.IoStatus.__bindgen_anon_1.Status = status::INVALID_DEVICE_REQUEST;
            k.state().irps.insert(irp_ptr as usize, kernel::IrpRecord { completions: 1 });
            status::INVALID_DEVICE_REQUEST
        }
    };
    let after = kernel::irql();
    if after != before {
        k.violation(
            Rule::IrqlChangedAcrossDispatch,
            format!("major {major:#x}: IRQL {before} on entry, {after} on return"),
        );
        kernel::set_irql(PASSIVE_LEVEL);
    }
    if kernel::held_spin_locks() > 0 {
        k.violation(
            Rule::SpinLockNeverReleased,
            format!("major {major:#x}: {} spin lock(s) held on return", kernel::held_spin_locks()),
        );
    }
    let record = k.state().irps.remove(&(irp_ptr as usize)).unwrap_or_default();
    // SAFETY: the status union's members overlay one 32-bit value.
    let io_status = unsafe { irp.IoStatus.__bindgen_anon_1.Status };
    let information = irp.IoStatus.Information;
    let pending = returned == 0x103;
    if record.completions == 0 && !pending {
        k.violation(
            Rule::IrpNeverCompleted,
            format!("major {major:#x} returned {returned:#x} without completing the IRP"),
        );
    }
    if !pending && record.completions > 0 && returned != io_status {
        k.violation(
            Rule::StatusMismatch,
            format!("major {major:#x} returned {returned:#x}, IoStatus.Status {io_status:#x}"),
        );
    }
    if major == 0x0E && status::is_success(io_status) && information > output_capacity as u64 {
        k.violation(
            Rule::InformationTooLarge,
            format!("Information {information} > output buffer {output_capacity}"),
        );
    }
    let _ = k.sections.iter().map(|s| s.count.load(Ordering::Relaxed)).count();
    Completion { status: if pending { returned } else { io_status }, information }
}
