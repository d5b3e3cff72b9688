//! The security reference monitor (`Se`): the access check at create against a caller
//! identity, and the forms of SIDs and ACLs the other components read and write.
//!
//! It owns no exported routine: the driver builds its descriptor with the `Rtl` routines
//! ([`crate::rtl`]) and sets it on its device through the object manager ([`crate::ob`]).

use std::fmt::Write as _;

use pagelock_ddk as ddk;
use serde::{Deserialize, Serialize};

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
pub const GENERIC_ALL: u32 = 0x1000_0000;
/// `SE_DACL_PRESENT`.
pub const SE_DACL_PRESENT: u16 = 0x0004;
/// `DACL_SECURITY_INFORMATION`.
pub const DACL_SECURITY_INFORMATION: u32 = 0x4;
/// `ACCESS_ALLOWED_ACE_TYPE`.
pub const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;

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
#[must_use]
pub const unsafe fn bytes<'a>(at: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: the caller guarantees the range is readable.
    unsafe { std::slice::from_raw_parts(at, len) }
}

/// A SID's bytes (revision, count, 6-byte authority, sub-authorities).
///
/// # Safety
/// `sid` must point at a valid SID.
#[must_use]
pub unsafe fn sid_bytes<'a>(sid: *const u8) -> &'a [u8] {
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

/// The access-allowed entries of an ACL.
///
/// # Safety
/// `acl` must point at a valid ACL.
#[must_use]
pub unsafe fn parse_dacl(acl: *const ddk::ACL) -> Vec<Ace> {
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
