//! The C runtime a driver imports from ntoskrnl.
//!
//! `memcpy`, `memmove`, `memset`, `memcmp`, `strlen` and `__chkstk`. At `DISPATCH_LEVEL` each
//! one probes the memory it is handed, as the kernel's own instructions would fault on it.

use crate::{
    mm,
    routine::{self, Routine},
};

/// Checks a range a routine reads or writes at `DISPATCH_LEVEL` (both of its ends).
fn check_range(routine: Routine, address: *const u8, len: usize, write: bool) {
    if len > 0 {
        mm::check_resident(routine, address as usize, write);
        mm::check_resident(routine, address as usize + len - 1, write);
    }
}

/// `memcpy`.
pub(crate) extern "win64" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    routine::enter(Routine::memcpy);
    check_range(Routine::memcpy, src, n, false);
    check_range(Routine::memcpy, dest, n, true);
    // SAFETY: the driver passes valid, non-overlapping ranges of `n` bytes, as memcpy requires.
    unsafe { std::ptr::copy_nonoverlapping(src, dest, n) };
    dest
}

/// `memmove`.
pub(crate) extern "win64" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    routine::enter(Routine::memmove);
    check_range(Routine::memmove, src, n, false);
    check_range(Routine::memmove, dest, n, true);
    // SAFETY: the driver passes valid ranges of `n` bytes.
    unsafe { std::ptr::copy(src, dest, n) };
    dest
}

/// `memset`.
pub(crate) extern "win64" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    routine::enter(Routine::memset);
    check_range(Routine::memset, dest, n, true);
    // memset stores the value's low byte.
    let byte = value.to_le_bytes()[0];
    // SAFETY: the driver passes a valid range of `n` bytes.
    unsafe { std::ptr::write_bytes(dest, byte, n) };
    dest
}

/// `memcmp`.
pub(crate) extern "win64" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    routine::enter(Routine::memcmp);
    check_range(Routine::memcmp, a, n, false);
    check_range(Routine::memcmp, b, n, false);
    // SAFETY: the driver passes valid ranges of `n` bytes.
    let a = unsafe { std::slice::from_raw_parts(a, n) };
    // SAFETY: as above.
    let b = unsafe { std::slice::from_raw_parts(b, n) };
    a.iter().zip(b).find(|(x, y)| x != y).map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

/// `strlen`.
pub(crate) extern "win64" fn strlen(s: *const u8) -> usize {
    routine::enter(Routine::strlen);
    mm::check_resident(Routine::strlen, s as usize, false);
    // SAFETY: the driver passes a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(s.cast()) }.count_bytes()
}

// `__chkstk` probes the pages of a frame over 4 KiB; Linux grows and maps thread stacks, so
// the bed's only returns, keeping every register as the real one does (no call counting: it
// must not touch the stack it probes).
std::arch::global_asm!(".globl pagelock_testbed_chkstk", "pagelock_testbed_chkstk:", "ret");
unsafe extern "C" {
    /// `__chkstk`.
    pub(crate) fn pagelock_testbed_chkstk();
}
