//! The object manager (`Ob`): kernel handles to objects, and each object's security.
//!
//! The security is the DACL a driver sets on its device with `ObOpenObjectByPointer` and
//! `ZwSetSecurityObject`, as `NtSetSecurityObject` sets it in the object's header).

use std::{collections::BTreeMap, ffi::c_void, sync::Mutex};

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    routine::{self, Routine},
    se::{self, Ace},
};

/// `STATUS_INVALID_HANDLE`.
pub const STATUS_INVALID_HANDLE: i32 = 0xC000_0008_u32.cast_signed();

/// What the object manager keeps.
struct Objects {
    /// Kernel handles to their objects.
    handles: BTreeMap<usize, usize>,
    /// The last kernel handle given out.
    last_handle: usize,
    /// The DACL set on an object, by its address (no entry: no DACL, everyone admitted).
    security: BTreeMap<usize, Vec<Ace>>,
}

static OBJECTS: Mutex<Objects> =
    Mutex::new(Objects { handles: BTreeMap::new(), last_handle: 0, security: BTreeMap::new() });

fn with<R>(f: impl FnOnce(&mut Objects) -> R) -> R {
    f(&mut crate::sched::lock(&OBJECTS))
}

/// The DACL set on the object at `object`, if any.
#[must_use]
pub fn dacl_of(object: usize) -> Option<Vec<Ace>> {
    with(|o| o.security.get(&object).cloned())
}

/// The object at `object` is gone: its security goes with it.
pub fn deleted(object: usize) {
    with(|o| o.security.remove(&object));
}

/// `ObOpenObjectByPointer`.
pub(crate) extern "win64" fn open_object_by_pointer(
    object: *mut c_void,
    _attributes: u32,
    _access_state: *mut c_void,
    _access: u32,
    _object_type: *mut c_void,
    _mode: u8,
    handle: *mut usize,
) -> i32 {
    if routine::enter(Routine::ObOpenObjectByPointer) {
        return status::INSUFFICIENT_RESOURCES;
    }
    let h = with(|o| {
        o.last_handle += 4;
        let h = 0xFFFF_FFFF_8000_0000 + o.last_handle;
        o.handles.insert(h, object as usize);
        h
    });
    // SAFETY: the driver passes a HANDLE to fill.
    unsafe { handle.write(h) };
    status::SUCCESS
}

/// `ZwSetSecurityObject`: with `DACL_SECURITY_INFORMATION`, the descriptor's DACL becomes the
/// object's.
pub(crate) extern "win64" fn zw_set_security_object(
    handle: usize,
    information: u32,
    sd: *const ddk::SECURITY_DESCRIPTOR,
) -> i32 {
    if routine::enter(Routine::ZwSetSecurityObject) {
        return status::INSUFFICIENT_RESOURCES;
    }
    let Some(object) = with(|o| o.handles.get(&handle).copied()) else {
        return STATUS_INVALID_HANDLE;
    };
    if information & se::DACL_SECURITY_INFORMATION == 0 {
        return status::SUCCESS;
    }
    // SAFETY: the driver passes a valid absolute descriptor.
    let sd = unsafe { &*sd };
    let dacl = if sd.Control & se::SE_DACL_PRESENT == 0 || sd.Dacl.is_null() {
        None
    } else {
        // SAFETY: a present DACL of a valid descriptor is a valid ACL.
        Some(unsafe { se::parse_dacl(sd.Dacl) })
    };
    with(|o| match dacl {
        Some(dacl) => o.security.insert(object, dacl),
        None => o.security.remove(&object),
    });
    status::SUCCESS
}

/// `ZwClose` of a kernel handle.
pub(crate) extern "win64" fn zw_close(handle: usize) -> i32 {
    routine::enter(Routine::ZwClose);
    if with(|o| o.handles.remove(&handle)).is_some() {
        status::SUCCESS
    } else {
        STATUS_INVALID_HANDLE
    }
}
