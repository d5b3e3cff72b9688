//! Counted strings (`UNICODE_STRING`): `RtlInitUnicodeString`, the text of one the driver
//! passed, and the checks a kernel routine's capture of one makes, or relies on.
//!
//! The kernel trusts a counted string's fields. The object manager copies `Length` bytes of a
//! name from `Buffer` and appends a NUL; `NtCreateSymbolicLinkObject` copies `MaximumLength`
//! bytes of a link's target. A string whose fields disagree, or whose buffer is not there, makes
//! the call fail, succeed on a lie, or fault on Windows: [`captured_text`] stops the run at it,
//! naming what is wrong ([`Rule::MalformedUnicodeString`]; a copy that would fault on the
//! image's memory stops with Windows' 0x50, as the kernel's would).

use pagelock_ddk as ddk;

use crate::{
    ex, mm, record,
    routine::{self, Routine},
    verifier::Rule,
};

/// How a kernel routine reads a counted string it is handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// An object's name (a device's, a link's), which may be absent (an unnamed device). The
    /// object manager copies `Length` bytes and appends a NUL (WRK `OB/OBCREATE.C`,
    /// `ObpCaptureObjectName`).
    Name,
    /// A symbolic link's target, which must be present. `NtCreateSymbolicLinkObject` copies
    /// `MaximumLength` bytes of it (WRK `OB/OBLINK.C`).
    LinkTarget,
    /// A `%wZ` argument of `DbgPrint`: the formatter checks no field, prints "(null)" for a
    /// NULL string or buffer, and `Length` bytes otherwise (`ReactOS`
    /// `sdk/lib/crt/printf/streamout.c`).
    Printed,
}

/// What `DbgPrint` prints for an absent counted string.
const NULL_TEXT: &str = "(null)";

/// A name of this many bytes leaves no room in a `USHORT` length for the NUL the object
/// manager appends: its capture refuses it.
const NAME_WITH_NO_ROOM_FOR_NUL: u16 = 0xFFFE;

/// Below this address nothing is ever mapped, on Windows (`MM_LOWEST_USER_ADDRESS`) as on Linux.
const LOWEST_MAPPED: usize = 0x1_0000;

/// What is wrong with a counted string's fields, for a routine that reads it as `capture`.
///
/// Lengths and buffer as `RtlValidateUnicodeString` checks them (WRK `RTL/NLS.C`; `ReactOS`
/// `sdk/lib/rtl/unicode.c`), then what the routine's own capture refuses; nothing for a `%wZ`
/// argument, whose formatter checks no field.
#[must_use]
pub fn malformation(s: &ddk::UNICODE_STRING, capture: Capture) -> Option<&'static str> {
    let (length, maximum) = (s.Length, s.MaximumLength);
    if capture == Capture::Printed {
        None
    } else if length % 2 != 0 {
        Some("odd Length (UTF-16 text has an even number of bytes)")
    } else if maximum % 2 != 0 {
        Some("odd MaximumLength")
    } else if length > maximum {
        Some("Length larger than MaximumLength")
    } else if s.Buffer.is_null() && maximum != 0 {
        Some("NULL Buffer behind nonzero lengths")
    } else if capture == Capture::Name && length == NAME_WITH_NO_ROOM_FOR_NUL {
        Some("a name of 0xFFFE bytes (no room for the NUL the object manager appends)")
    } else if capture == Capture::LinkTarget && maximum == 0 {
        Some("an empty link target (MaximumLength 0)")
    } else {
        None
    }
}

/// Why a routine's copy of `len` bytes at `address` would fail, when the bed knows.
enum Unreadable {
    /// The copy faults on the image's memory at this address (a freed or unreadable section, or
    /// past the image's end): Windows' `PAGE_FAULT_IN_NONPAGED_AREA`.
    Image(usize),
    /// Memory the bed knows is not the string's, where Windows' outcome varies (a fault, a
    /// failed call, or, past a pool block without special pool, a silent read): why.
    Elsewhere(String),
}

/// Whether `len` bytes at `address` can be read, as far as the bed knows: not in the first
/// 64 KiB, in a readable part of the image, within their pool block. Memory the bed does not
/// track (a stack) is taken as readable.
fn unreadable(address: usize, len: usize) -> Option<Unreadable> {
    if len == 0 {
        return None;
    }
    if address < LOWEST_MAPPED {
        let why = format!("{address:#x} lies in the first 64 KiB, never mapped");
        return Some(Unreadable::Elsewhere(why));
    }
    if let Some(at) = mm::get().unreadable(address, len) {
        return Some(Unreadable::Image(at));
    }
    let (start, size) = ex::block_holding(address)?;
    (address - start + len > size).then(|| {
        let why = format!("{len} bytes at {address:#x} run past its pool block ({size} bytes)");
        Unreadable::Elsewhere(why)
    })
}

/// Stops the run when `routine`, copying `len` bytes at `address` of its parameter `what` (the
/// string at `s`, `fields` once read), would fail: with 0x50 as Windows when the copy faults
/// on the image, with [`Rule::MalformedUnicodeString`] otherwise.
fn check_readable(
    routine: Routine,
    what: &str,
    s: *const ddk::UNICODE_STRING,
    fields: Option<&ddk::UNICODE_STRING>,
    address: usize,
    len: usize,
) {
    match unreadable(address, len) {
        None => {}
        Some(Unreadable::Image(at)) => faulted(routine, what, at),
        Some(Unreadable::Elsewhere(why)) => malformed(routine, what, s, fields, &why),
    }
}

/// Stops the run as Windows does when `routine`'s copy of its parameter `what` faults on the
/// image's memory at `at`: `PAGE_FAULT_IN_NONPAGED_AREA` (0x50), under the rule for a freed
/// section or for any other memory. The faulting instruction is the routine's.
fn faulted(routine: Routine, what: &str, at: usize) -> ! {
    let mm = mm::get();
    let rule = mm.gone(at).unwrap_or(Rule::InvalidAccess);
    let detail = format!("read of {} by {}, copying its {what}", mm.describe(at), routine.name());
    record::stop(rule, None, [at as u64, 0, routine.address() as u64, 0], detail)
}

/// Stops the run: the counted string at `s` (its fields when they could be read), handed to
/// `routine` as `what`, is malformed because of `why`.
fn malformed(
    routine: Routine,
    what: &str,
    s: *const ddk::UNICODE_STRING,
    fields: Option<&ddk::UNICODE_STRING>,
    why: &str,
) -> ! {
    let mm = mm::get();
    let (lengths, buffer, shown) = fields.map_or((0, 0, String::new()), |f| {
        (
            u64::from(f.Length) | (u64::from(f.MaximumLength) << 16),
            f.Buffer as u64,
            format!(
                ": Length {}, MaximumLength {}, Buffer {}",
                f.Length,
                f.MaximumLength,
                mm.describe(f.Buffer as usize)
            ),
        )
    });
    record::stop(
        Rule::MalformedUnicodeString,
        None,
        [s as u64, lengths, buffer, routine.address() as u64],
        format!("{}'s {what} at {}{shown}: {why}", routine.name(), mm.describe(s as usize)),
    )
}

/// The text of the counted string `s` that `routine` was handed as its parameter `what`, once
/// it passes the checks of `capture`; the run stops at a malformed one.
///
/// An absent name (NULL) is empty text, an absent `%wZ` argument "(null)"; an absent link
/// target is malformed (the kernel reads through the pointer). At `DISPATCH_LEVEL`, a buffer in
/// unlocked pageable memory stops the run as [`mm::check_resident`] says.
///
/// # Safety
/// `s` must be NULL, or point at memory the bed checks (the image, the pool) or at readable
/// memory; likewise its `Buffer`, for the bytes `capture` reads.
#[must_use]
pub unsafe fn captured_text(
    routine: Routine,
    what: &str,
    s: *const ddk::UNICODE_STRING,
    capture: Capture,
) -> String {
    match capture {
        _ if !s.is_null() => {}
        Capture::Name => return String::new(),
        Capture::Printed => return NULL_TEXT.to_owned(),
        Capture::LinkTarget => malformed(routine, what, s, None, "no string (NULL)"),
    }
    check_readable(routine, what, s, None, s as usize, size_of::<ddk::UNICODE_STRING>());
    // SAFETY: not NULL, and readable as far as the bed can tell (checked above; the caller
    // answers for memory the bed does not track).
    let fields = unsafe { &*s };
    if let Some(why) = malformation(fields, capture) {
        malformed(routine, what, s, Some(fields), why);
    }
    if capture == Capture::Printed && fields.Buffer.is_null() {
        return NULL_TEXT.to_owned();
    }
    let read = match capture {
        Capture::Name | Capture::Printed => fields.Length,
        Capture::LinkTarget => fields.MaximumLength,
    };
    check_readable(routine, what, s, Some(fields), fields.Buffer as usize, usize::from(read));
    mm::check_resident(routine, fields.Buffer as usize, false);
    // SAFETY: a well-formed string whose `Length` bytes are readable (checked above).
    unsafe { unicode_text(s) }
}

/// The text of a `UNICODE_STRING`, without any check.
///
/// # Safety
/// `s` must be NULL or point at a valid `UNICODE_STRING`.
unsafe fn unicode_text(s: *const ddk::UNICODE_STRING) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: the caller passes a valid UNICODE_STRING.
    let s = unsafe { &*s };
    if s.Buffer.is_null() {
        return String::new();
    }
    // SAFETY: `Length` bytes of UTF-16 at `Buffer`, as the structure says.
    let units = unsafe { std::slice::from_raw_parts(s.Buffer, usize::from(s.Length) / 2) };
    String::from_utf16_lossy(units)
}

/// `RtlInitUnicodeString`.
pub(crate) extern "win64" fn init_unicode_string(
    destination: *mut ddk::UNICODE_STRING,
    source: *const u16,
) {
    routine::enter(Routine::RtlInitUnicodeString);
    let mut len = 0usize;
    // SAFETY: the driver passes a NUL-terminated UTF-16 string (or NULL); reading stops at NUL.
    while !source.is_null() && unsafe { source.wrapping_add(len).read_unaligned() } != 0 {
        len += 1;
    }
    let bytes = u16::try_from(len * 2).unwrap_or(u16::MAX - 1);
    let string = ddk::UNICODE_STRING {
        Length: bytes,
        MaximumLength: if source.is_null() { 0 } else { bytes + 2 },
        Buffer: source.cast_mut(),
    };
    // SAFETY: the driver passes a UNICODE_STRING to fill.
    unsafe { destination.write(string) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(length: u16, maximum: u16, buffer: bool) -> ddk::UNICODE_STRING {
        let buffer = if buffer { std::ptr::dangling_mut() } else { std::ptr::null_mut() };
        ddk::UNICODE_STRING { Length: length, MaximumLength: maximum, Buffer: buffer }
    }

    #[test]
    fn a_string_whose_fields_agree_is_well_formed() {
        for capture in [Capture::Name, Capture::LinkTarget] {
            assert_eq!(malformation(&string(4, 6, true), capture), None);
            assert_eq!(malformation(&string(6, 6, true), capture), None);
        }
        // An empty name is an unnamed object; an empty target is refused (below).
        assert_eq!(malformation(&string(0, 0, false), Capture::Name), None);
        // DbgPrint's formatter checks no field: it prints what `Length` says, or "(null)".
        for s in [string(5, 2, true), string(4, 6, false), string(0, 0, true)] {
            assert_eq!(malformation(&s, Capture::Printed), None);
        }
    }

    #[test]
    fn each_condition_the_kernel_refuses_is_malformed() {
        let cases = [
            (string(5, 6, true), Capture::Name, "odd Length"),
            (string(4, 7, true), Capture::Name, "odd MaximumLength"),
            (string(8, 6, true), Capture::Name, "Length larger than MaximumLength"),
            (string(4, 6, false), Capture::Name, "NULL Buffer"),
            (string(0, 2, false), Capture::LinkTarget, "NULL Buffer"),
            (string(0xFFFE, 0xFFFE, true), Capture::Name, "0xFFFE bytes"),
            (string(0, 0, true), Capture::LinkTarget, "empty link target"),
        ];
        for (s, capture, says) in cases {
            let why = malformation(&s, capture);
            assert!(why.is_some_and(|w| w.contains(says)), "{capture:?} {says}: {why:?}");
        }
        // The longest name with room for the NUL, and a 0xFFFE-byte link target, pass.
        assert_eq!(malformation(&string(0xFFFC, 0xFFFE, true), Capture::Name), None);
        assert_eq!(malformation(&string(0xFFFE, 0xFFFE, true), Capture::LinkTarget), None);
    }
}
