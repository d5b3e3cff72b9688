//! Security: descriptors, the device's DACL, and the access check at create.
//!
//! The `Rtl` routines a driver builds a security descriptor with, the DACL it sets on
//! its device (`ObOpenObjectByPointer` + `ZwSetSecurityObject`), and the access check the I/O
//! manager makes at create against a caller identity.

use std::{ffi::c_void, fmt::Write as _};

use pagelock_ddk as ddk;
use pagelock_protocol::status;
use serde::{Deserialize, Serialize};

use crate::{exports::Routine, kernel::kernel};

/// One access-allowed entry of a DACL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ace {
    /// The SID, as text (`S-1-5-32-544`).
    pub sid: String,
    /// The access mask.
    pub mask: u32,
}

/// Who opens the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Caller {
    /// An elevated administrator: SYSTEM-like rights through BUILTIN\Administrators.
    Admin,
    /// A standard user.
    User,
}

impl Caller {
    /// The SIDs in the caller's token.
    #[must_use]
    pub const fn sids(self) -> &'static [&'static str] {
        match self {
            Self::Admin => &["S-1-5-32-544", "S-1-5-32-545", "S-1-1-0", "S-1-5-11"],
            Self::User => &["S-1-5-32-545", "S-1-1-0", "S-1-5-11"],
        }
    }
}

/// `GENERIC_ALL`; on a device it maps to every right.
const GENERIC_ALL: u32 = 0x1000_0000;
/// `SE_DACL_PRESENT`.
const SE_DACL_PRESENT: u16 = 0x0004;
/// `DACL_SECURITY_INFORMATION`.
const DACL_SECURITY_INFORMATION: u32 = 0x4;
/// `ACCESS_ALLOWED_ACE_TYPE`.
const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;

/// The I/O manager's check at create: a device without a DACL admits everyone; otherwise the
/// caller's SIDs must be granted every right in `wanted`.
#[must_use]
pub fn access_granted(dacl: Option<&[Ace]>, caller: Caller, wanted: u32) -> bool {
    let Some(dacl) = dacl else { return true };
    let granted = dacl
        .iter()
        .filter(|ace| caller.sids().contains(&ace.sid.as_str()))
        .fold(0u32, |acc, ace| acc | if ace.mask & GENERIC_ALL != 0 { u32::MAX } else { ace.mask });
    granted & wanted == wanted
}

/// `len` bytes at `at`.
///
/// # Safety
/// `at..at + len` must be readable for the returned lifetime.
const unsafe fn bytes<'a>(at: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: the caller guarantees the range is readable.
    unsafe { std::slice::from_raw_parts(at, len) }
}

/// A SID's bytes (revision, count, 6-byte authority, sub-authorities).
///
/// # Safety
/// `sid` must point at a valid SID.
unsafe fn sid_bytes<'a>(sid: *const u8) -> &'a [u8] {
    // SAFETY: a SID starts with two header bytes.
    let count = usize::from(unsafe { bytes(sid, 2) }[1]);
    // SAFETY: a valid SID holds `count` sub-authorities after its 8-byte header.
    unsafe { bytes(sid, 8 + 4 * count) }
}

/// The text form of a SID's bytes.
fn sid_text(sid: &[u8]) -> String {
    let authority = sid[2..8].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    let mut text = format!("S-{}-{authority}", sid[0]);
    for sub in sid[8..].chunks_exact(4) {
        let _ = write!(text, "-{}", u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]));
    }
    text
}

pub(crate) extern "win64" fn rtl_create_security_descriptor(
    sd: *mut ddk::SECURITY_DESCRIPTOR,
    revision: u32,
) -> i32 {
    kernel().enter(Routine::RtlCreateSecurityDescriptor);
    let descriptor = ddk::SECURITY_DESCRIPTOR {
        Revision: u8::try_from(revision).unwrap_or(1),
        ..Default::default()
    };
    // SAFETY: the driver passes room for an absolute SECURITY_DESCRIPTOR.
    unsafe { sd.write(descriptor) };
    status::SUCCESS
}

pub(crate) extern "win64" fn rtl_set_dacl_security_descriptor(
    sd: *mut ddk::SECURITY_DESCRIPTOR,
    present: u8,
    dacl: *mut ddk::ACL,
    _defaulted: u8,
) -> i32 {
    kernel().enter(Routine::RtlSetDaclSecurityDescriptor);
    // SAFETY: `sd` was initialised by RtlCreateSecurityDescriptor and is the driver's.
    let sd = unsafe { &mut *sd };
    if present == 0 {
        sd.Dacl = std::ptr::null_mut();
        sd.Control &= !SE_DACL_PRESENT;
    } else {
        sd.Dacl = dacl;
        sd.Control |= SE_DACL_PRESENT;
    }
    status::SUCCESS
}

pub(crate) extern "win64" fn rtl_create_acl(acl: *mut ddk::ACL, size: u32, revision: u32) -> i32 {
    kernel().enter(Routine::RtlCreateAcl);
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

pub(crate) extern "win64" fn rtl_length_sid(sid: *const u8) -> u32 {
    kernel().enter(Routine::RtlLengthSid);
    // SAFETY: the driver passes a valid SID.
    u32::try_from(unsafe { sid_bytes(sid) }.len()).unwrap_or(0)
}

pub(crate) extern "win64" fn rtl_initialize_sid(
    sid: *mut u8,
    authority: *const [u8; 6],
    count: u8,
) -> i32 {
    kernel().enter(Routine::RtlInitializeSid);
    // SAFETY: the driver passes a 6-byte identifier authority.
    let authority = unsafe { *authority };
    let mut header = [1u8, count, 0, 0, 0, 0, 0, 0];
    header[2..].copy_from_slice(&authority);
    // SAFETY: the driver passes room for a SID with `count` sub-authorities, its header first.
    unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), sid, header.len()) };
    status::SUCCESS
}

pub(crate) extern "win64" fn rtl_sub_authority_sid(sid: *mut u8, index: u32) -> *mut u32 {
    kernel().enter(Routine::RtlSubAuthoritySid);
    sid.wrapping_add(8 + 4 * index as usize).cast()
}

pub(crate) extern "win64" fn rtl_add_access_allowed_ace(
    acl: *mut ddk::ACL,
    _revision: u32,
    mask: u32,
    sid: *const u8,
) -> i32 {
    kernel().enter(Routine::RtlAddAccessAllowedAce);
    // SAFETY: `acl` was initialised by RtlCreateAcl and is the driver's.
    let header = unsafe { &mut *acl };
    // SAFETY: an initialised ACL is `AclSize` readable bytes.
    let whole = unsafe { bytes(acl.cast(), usize::from(header.AclSize)) };
    let mut offset = size_of::<ddk::ACL>();
    for _ in 0..header.AceCount {
        let Some(size) = whole.get(offset + 2..offset + 4) else {
            return status::INVALID_PARAMETER;
        };
        offset += usize::from(u16::from_le_bytes([size[0], size[1]]));
    }
    // SAFETY: the driver passes a valid SID.
    let sid = unsafe { sid_bytes(sid) };
    let ace_size = 8 + sid.len();
    if offset + ace_size > usize::from(header.AclSize) {
        return status::BUFFER_TOO_SMALL;
    }
    let mut ace = Vec::with_capacity(ace_size);
    ace.extend_from_slice(&[ACCESS_ALLOWED_ACE_TYPE, 0]);
    ace.extend_from_slice(&u16::try_from(ace_size).unwrap_or(0).to_le_bytes());
    ace.extend_from_slice(&mask.to_le_bytes());
    ace.extend_from_slice(sid);
    let at = acl.cast::<u8>().wrapping_add(offset);
    // SAFETY: the ACE fits in the ACL (checked above); the two ranges are distinct.
    unsafe { std::ptr::copy_nonoverlapping(ace.as_ptr(), at, ace_size) };
    header.AceCount += 1;
    status::SUCCESS
}

/// The access-allowed entries of an ACL.
///
/// # Safety
/// `acl` must point at a valid ACL.
unsafe fn parse_dacl(acl: *const ddk::ACL) -> Vec<Ace> {
    // SAFETY: a valid ACL starts with its header.
    let header = unsafe { &*acl };
    // SAFETY: a valid ACL is `AclSize` readable bytes.
    let whole = unsafe { bytes(acl.cast(), usize::from(header.AclSize)) };
    let mut aces = Vec::new();
    let mut offset = size_of::<ddk::ACL>();
    for _ in 0..header.AceCount {
        let Some(ace) = whole.get(offset..offset + 8) else { break };
        let size = usize::from(u16::from_le_bytes([ace[2], ace[3]]));
        if ace[0] == ACCESS_ALLOWED_ACE_TYPE
            && let Some(sid) = whole.get(offset + 8..offset + size.max(8))
            && sid.len() >= 8
        {
            aces.push(Ace {
                sid: sid_text(sid),
                mask: u32::from_le_bytes([ace[4], ace[5], ace[6], ace[7]]),
            });
        }
        offset += size.max(8);
    }
    aces
}

pub(crate) extern "win64" fn ob_open_object_by_pointer(
    object: *mut c_void,
    _attributes: u32,
    _access_state: *mut c_void,
    _access: u32,
    _object_type: *mut c_void,
    _mode: u8,
    handle: *mut usize,
) -> i32 {
    let k = kernel();
    if k.enter(Routine::ObOpenObjectByPointer) {
        return status::INSUFFICIENT_RESOURCES;
    }
    let mut state = k.state();
    state.last_handle += 4;
    let h = 0xFFFF_FFFF_8000_0000 + state.last_handle;
    state.object_handles.insert(h, object as usize);
    drop(state);
    // SAFETY: the driver passes a HANDLE to fill.
    unsafe { handle.write(h) };
    status::SUCCESS
}

pub(crate) extern "win64" fn zw_set_security_object(
    handle: usize,
    information: u32,
    sd: *const ddk::SECURITY_DESCRIPTOR,
) -> i32 {
    let k = kernel();
    if k.enter(Routine::ZwSetSecurityObject) {
        return status::INSUFFICIENT_RESOURCES;
    }
    let Some(object) = k.state().object_handles.get(&handle).copied() else {
        return 0xC000_0008_u32.cast_signed(); // STATUS_INVALID_HANDLE
    };
    if information & DACL_SECURITY_INFORMATION == 0 {
        return status::SUCCESS;
    }
    // SAFETY: the driver passes a valid absolute descriptor.
    let sd = unsafe { &*sd };
    let dacl = if sd.Control & SE_DACL_PRESENT == 0 || sd.Dacl.is_null() {
        None
    } else {
        // SAFETY: a present DACL of a valid descriptor is a valid ACL.
        Some(unsafe { parse_dacl(sd.Dacl) })
    };
    if let Some(device) = k.state().devices.iter_mut().find(|d| d.object == object) {
        device.dacl = dacl;
    }
    status::SUCCESS
}

pub(crate) extern "win64" fn zw_close(handle: usize) -> i32 {
    let k = kernel();
    k.enter(Routine::ZwClose);
    if k.state().object_handles.remove(&handle).is_some() {
        status::SUCCESS
    } else {
        0xC000_0008_u32.cast_signed() // STATUS_INVALID_HANDLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ace(sid: &str, mask: u32) -> Ace {
        Ace { sid: sid.to_owned(), mask }
    }

    #[test]
    fn pagelock_dacl_admits_admins_and_refuses_users() {
        let dacl = [ace("S-1-5-18", GENERIC_ALL), ace("S-1-5-32-544", GENERIC_ALL)];
        assert!(access_granted(Some(&dacl), Caller::Admin, 3));
        assert!(!access_granted(Some(&dacl), Caller::User, 1));
    }

    #[test]
    fn no_dacl_admits_everyone_and_an_empty_one_nobody() {
        assert!(access_granted(None, Caller::User, 3));
        assert!(!access_granted(Some(&[]), Caller::Admin, 1));
    }

    #[test]
    fn sid_text_reads_the_builtin_administrators_sid() {
        let sid = [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
        assert_eq!(sid_text(&sid), "S-1-5-32-544");
    }
}
