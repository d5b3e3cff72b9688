//! The device's DACL: only Administrators and SYSTEM may open it.
//!
//! `IoCreateDeviceSecure` would do this from an SDDL string, but it lives in a static WDK
//! library (wdmsec.lib) that the cross build does not have. The same result comes from
//! exported routines: build the DACL `D:(A;;GA;;;SY)(A;;GA;;;BA)` and set it on the device.
//! (Not `D:P`: nothing here sets `SE_DACL_PROTECTED`, which only stops inheritance from a
//! parent, and a device object has no parent to inherit from.)

use core::{ffi::c_void, ptr};

use pagelock_macros::init;

use super::sys::{self, ntddk};
use crate::kernel::{Status, status};

const ACL_REVISION: u32 = 2;
const SECURITY_DESCRIPTOR_REVISION: u32 = 1;
const DACL_SECURITY_INFORMATION: u32 = 4;
const GENERIC_ALL: u32 = 0x1000_0000;
const WRITE_DAC: u32 = 0x0004_0000;
const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// `SECURITY_NT_AUTHORITY` (S-1-5).
const NT_AUTHORITY: [u8; 6] = [0, 0, 0, 0, 0, 5];
/// `SECURITY_LOCAL_SYSTEM_RID`: S-1-5-18 is SYSTEM.
const LOCAL_SYSTEM_RID: u32 = 18;
/// `SECURITY_BUILTIN_DOMAIN_RID` and `DOMAIN_ALIAS_RID_ADMINS`: S-1-5-32-544 is Administrators.
const BUILTIN_ADMINISTRATORS: [u32; 2] = [32, 544];

/// Room for a SID with up to two sub-authorities (8 + 2 * 4 bytes), aligned for the kernel.
#[repr(C, align(8))]
#[derive(Default)]
struct SidBuffer([u8; 16]);

/// Room for an ACL with two such ACEs (8 + 2 * (8 + 16) bytes).
#[repr(C, align(8))]
struct AclBuffer([u8; 64]);

/// Fills `buffer` with the NT-authority SID with these sub-authorities.
#[init]
fn nt_sid(buffer: &mut SidBuffer, sub_authorities: &[u32]) -> Result<*mut c_void, Status> {
    let sid = ptr::from_mut(buffer).cast::<c_void>();
    let mut authority = sys::SID_IDENTIFIER_AUTHORITY { Value: NT_AUTHORITY };
    #[expect(clippy::cast_possible_truncation, reason = "one or two sub-authorities")]
    let count = sub_authorities.len() as u8;
    // SAFETY: `buffer` has room for a SID with `count` <= 2 sub-authorities.
    let status = unsafe { ntddk::RtlInitializeSid(sid, &raw mut authority, count) };
    if !status::is_success(status) {
        return Err(status);
    }
    for (index, &rid) in (0u32..).zip(sub_authorities) {
        // SAFETY: `index` < `count`, so the returned pointer is inside `buffer`.
        let slot = unsafe { ntddk::RtlSubAuthoritySid(sid, index) };
        // SAFETY: `slot` points to a sub-authority of the SID just initialised.
        unsafe { slot.write(rid) };
    }
    Ok(sid)
}

/// Gives the object at `object` the DACL that admits only SYSTEM and Administrators.
#[init]
pub(super) fn admit_only_administrators_and_system(object: *mut c_void) -> Result<(), Status> {
    let (mut system, mut admins) = (SidBuffer::default(), SidBuffer::default());
    let system = nt_sid(&mut system, &[LOCAL_SYSTEM_RID])?;
    let admins = nt_sid(&mut admins, &BUILTIN_ADMINISTRATORS)?;

    let mut acl = AclBuffer([0; 64]);
    let acl = ptr::from_mut(&mut acl).cast::<sys::ACL>();
    #[expect(clippy::cast_possible_truncation, reason = "the buffer is 64 bytes")]
    let acl_size = size_of::<AclBuffer>() as u32;
    // SAFETY: `acl` points to `acl_size` writable, aligned bytes.
    let mut result = unsafe { ntddk::RtlCreateAcl(acl, acl_size, ACL_REVISION) };
    for &sid in &[system, admins] {
        if status::is_success(result) {
            // SAFETY: `acl` was initialised above with room for both ACEs; `sid` is valid.
            result = unsafe { ntddk::RtlAddAccessAllowedAce(acl, ACL_REVISION, GENERIC_ALL, sid) };
        }
    }
    let mut descriptor = sys::SECURITY_DESCRIPTOR::default();
    let sd = ptr::from_mut(&mut descriptor).cast::<c_void>();
    if status::is_success(result) {
        // SAFETY: `sd` points to an absolute SECURITY_DESCRIPTOR.
        result = unsafe { ntddk::RtlCreateSecurityDescriptor(sd, SECURITY_DESCRIPTOR_REVISION) };
    }
    if status::is_success(result) {
        // SAFETY: `sd` was initialised; `acl` outlives every use of the descriptor below.
        result = unsafe { ntddk::RtlSetDaclSecurityDescriptor(sd, 1, acl, 0) };
    }
    if !status::is_success(result) {
        return Err(result);
    }

    let mut handle: sys::HANDLE = ptr::null_mut();
    // SAFETY: `object` is a live device object; a kernel handle with WRITE_DAC is requested
    // in kernel mode, so no access check against the (still default) descriptor applies.
    let result = unsafe {
        ntddk::ObOpenObjectByPointer(
            object,
            OBJ_KERNEL_HANDLE,
            ptr::null_mut(),
            WRITE_DAC,
            ptr::null_mut(),
            0,
            &raw mut handle,
        )
    };
    if !status::is_success(result) {
        return Err(result);
    }
    // SAFETY: `handle` is the kernel handle just opened; `sd` is a valid descriptor.
    let result = unsafe { ntddk::ZwSetSecurityObject(handle, DACL_SECURITY_INFORMATION, sd) };
    // SAFETY: `handle` is ours and closed exactly once.
    let _ = unsafe { ntddk::ZwClose(handle) };
    if status::is_success(result) { Ok(()) } else { Err(result) }
}
