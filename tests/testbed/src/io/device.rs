//! Device objects and symbolic links by name: `IoCreateDevice`, `IoDeleteDevice`,
//! `IoCreateSymbolicLink`, `IoDeleteSymbolicLink`, and the references file objects hold.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    io::STATUS_OBJECT_NAME_NOT_FOUND,
    ob, record,
    routine::{self, Routine},
    rtl::unicode::{Capture, captured_text},
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

/// The device object `name` reaches, and the rest of the name below that device.
///
/// As the object manager parses a name: the longest prefix that names a device (directly or
/// through a link) ends at the device, and what follows it, from its backslash on, is the name
/// the I/O manager hands the driver in the file object (`FileName`), empty for the device
/// itself (`IopParseDevice`).
#[must_use]
pub fn resolve(name: &str) -> Option<(usize, String)> {
    let name = canonical_name(name);
    if let Some(device) = find_device(&name) {
        return Some((device, String::new()));
    }
    name.char_indices()
        .rev()
        .filter(|&(at, c)| c == '\\' && at > 0)
        .find_map(|(at, _)| find_device(&name[..at]).map(|device| (device, name[at..].to_owned())))
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
/// `STATUS_OBJECT_NAME_COLLISION`.
const STATUS_OBJECT_NAME_COLLISION: i32 = 0xC000_0035_u32.cast_signed();
/// `IO_TYPE_DEVICE`.
const IO_TYPE_DEVICE: i16 = 3;
/// `DO_DEVICE_INITIALIZING`.
const DO_DEVICE_INITIALIZING: u32 = 0x80;

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
    let fail = routine::enter(Routine::IoCreateDevice);
    // As in the kernel, the name is captured before anything is allocated.
    // SAFETY: the driver passes its name (or NULL for an unnamed device); checked before read.
    let name = unsafe { captured_text(Routine::IoCreateDevice, "DeviceName", name, Capture::Name) };
    if fail {
        return status::INSUFFICIENT_RESOURCES;
    }
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
    const ROUTINE: Routine = Routine::IoCreateSymbolicLink;
    let fail = routine::enter(ROUTINE);
    // SAFETY: the driver passes its counted strings; each is checked before it is read.
    let link = unsafe { captured_text(ROUTINE, "SymbolicLinkName", link, Capture::Name) };
    // SAFETY: as above.
    let target = unsafe { captured_text(ROUTINE, "DeviceName", target, Capture::LinkTarget) };
    if fail {
        return status::INSUFFICIENT_RESOURCES;
    }
    let link = canonical_name(&link);
    let mut names = names();
    if names.links.contains_key(&link) {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    names.links.insert(link, target);
    status::SUCCESS
}

/// `IoDeleteSymbolicLink`.
pub(crate) extern "win64" fn delete_symbolic_link(link: *const ddk::UNICODE_STRING) -> i32 {
    const ROUTINE: Routine = Routine::IoDeleteSymbolicLink;
    routine::enter(ROUTINE);
    // SAFETY: the driver passes its counted string, checked before it is read.
    let link =
        canonical_name(&unsafe { captured_text(ROUTINE, "SymbolicLinkName", link, Capture::Name) });
    if names().links.remove(&link).is_some() {
        status::SUCCESS
    } else {
        STATUS_OBJECT_NAME_NOT_FOUND
    }
}
