//! The run-time library (`Rtl`): counted strings ([`unicode`]) and security descriptors.
//!
//! The routines a driver builds a security descriptor with (SIDs, ACLs, the descriptor
//! itself) are pure functions of their
//! arguments, as in the kernel: they keep no state.

pub mod unicode;

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    routine::{self, Routine},
    se,
};

/// `RtlCreateSecurityDescriptor`.
pub(crate) extern "win64" fn create_security_descriptor(
    sd: *mut ddk::SECURITY_DESCRIPTOR,
    revision: u32,
) -> i32 {
    routine::enter(Routine::RtlCreateSecurityDescriptor);
    let descriptor = ddk::SECURITY_DESCRIPTOR {
        Revision: u8::try_from(revision).unwrap_or(1),
        ..Default::default()
    };
    // SAFETY: the driver passes room for an absolute SECURITY_DESCRIPTOR.
    unsafe { sd.write(descriptor) };
    status::SUCCESS
}

/// `RtlSetDaclSecurityDescriptor`.
pub(crate) extern "win64" fn set_dacl_security_descriptor(
    sd: *mut ddk::SECURITY_DESCRIPTOR,
    present: u8,
    dacl: *mut ddk::ACL,
    _defaulted: u8,
) -> i32 {
    routine::enter(Routine::RtlSetDaclSecurityDescriptor);
    // SAFETY: `sd` was initialised by RtlCreateSecurityDescriptor and is the driver's.
    let sd = unsafe { &mut *sd };
    if present == 0 {
        sd.Dacl = std::ptr::null_mut();
        sd.Control &= !se::SE_DACL_PRESENT;
    } else {
        sd.Dacl = dacl;
        sd.Control |= se::SE_DACL_PRESENT;
    }
    status::SUCCESS
}

/// `RtlCreateAcl`.
pub(crate) extern "win64" fn create_acl(acl: *mut ddk::ACL, size: u32, revision: u32) -> i32 {
    routine::enter(Routine::RtlCreateAcl);
    let (Ok(size), Ok(revision)) = (u16::try_from(size), u8::try_from(revision)) else {
        return status::INVALID_PARAMETER;
    };
    if usize::from(size) < size_of::<ddk::ACL>() {
        return status::BUFFER_TOO_SMALL;
    }
    let header = ddk::ACL { AclRevision: revision, Sbz1: 0, AclSize: size, AceCount: 0, Sbz2: 0 };
    // SAFETY: the driver passes `size` writable bytes, at least an ACL header.
    unsafe { acl.write(header) };
    status::SUCCESS
}

/// `RtlLengthSid`.
pub(crate) extern "win64" fn length_sid(sid: *const u8) -> u32 {
    routine::enter(Routine::RtlLengthSid);
    // SAFETY: the driver passes a valid SID.
    u32::try_from(unsafe { se::sid_bytes(sid) }.len()).unwrap_or(0)
}

/// `RtlInitializeSid`.
pub(crate) extern "win64" fn initialize_sid(
    sid: *mut u8,
    authority: *const [u8; 6],
    count: u8,
) -> i32 {
    routine::enter(Routine::RtlInitializeSid);
    // SAFETY: the driver passes a 6-byte identifier authority.
    let authority = unsafe { *authority };
    let mut header = [1u8, count, 0, 0, 0, 0, 0, 0];
    header[2..].copy_from_slice(&authority);
    // SAFETY: the driver passes room for a SID with `count` sub-authorities, its header first.
    unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), sid, header.len()) };
    status::SUCCESS
}

/// `RtlSubAuthoritySid`.
pub(crate) extern "win64" fn sub_authority_sid(sid: *mut u8, index: u32) -> *mut u32 {
    routine::enter(Routine::RtlSubAuthoritySid);
    sid.wrapping_add(8 + 4 * index as usize).cast()
}

/// `RtlAddAccessAllowedAce`.
pub(crate) extern "win64" fn add_access_allowed_ace(
    acl: *mut ddk::ACL,
    _revision: u32,
    mask: u32,
    sid: *const u8,
) -> i32 {
    routine::enter(Routine::RtlAddAccessAllowedAce);
    // SAFETY: `acl` was initialised by RtlCreateAcl and is the driver's.
    let header = unsafe { &mut *acl };
    // SAFETY: an initialised ACL is `AclSize` readable bytes.
    let whole = unsafe { se::bytes(acl.cast(), usize::from(header.AclSize)) };
    let mut offset = size_of::<ddk::ACL>();
    for _ in 0..header.AceCount {
        let Some(size) = whole.get(offset + 2..offset + 4) else {
            return status::INVALID_PARAMETER;
        };
        offset += usize::from(u16::from_le_bytes([size[0], size[1]]));
    }
    // SAFETY: the driver passes a valid SID.
    let sid = unsafe { se::sid_bytes(sid) };
    let ace_size = 8 + sid.len();
    if offset + ace_size > usize::from(header.AclSize) {
        return status::BUFFER_TOO_SMALL;
    }
    let mut ace = Vec::with_capacity(ace_size);
    ace.extend_from_slice(&[se::ACCESS_ALLOWED_ACE_TYPE, 0]);
    ace.extend_from_slice(&u16::try_from(ace_size).unwrap_or(0).to_le_bytes());
    ace.extend_from_slice(&mask.to_le_bytes());
    ace.extend_from_slice(sid);
    let at = acl.cast::<u8>().wrapping_add(offset);
    // SAFETY: the ACE fits in the ACL (checked above); the two ranges are distinct.
    unsafe { std::ptr::copy_nonoverlapping(ace.as_ptr(), at, ace_size) };
    header.AceCount += 1;
    status::SUCCESS
}
