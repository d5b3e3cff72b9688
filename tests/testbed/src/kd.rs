//! The kernel debugger's side of `DbgPrint` and `DbgPrintEx` (`Kd`): what a debugger attached
//! to the machine would show, kept in the run's log. Win64 variadic calls, captured with their
//! arguments.
//!
//! The first four arguments arrive in registers and the rest on the stack above the 32-byte
//! shadow space; the host routines declare enough fixed 64-bit parameters to read them all, and
//! the format string says how many are real. Supported: flags, width, precision (`*` too), the
//! length modifiers `h l ll I I32 I64 z`, and `%d %i %u %x %X %o %c %s %ws %S %wZ %p %%`.

use std::{ffi::CStr, fmt::Write as _};

use crate::{
    mm, record,
    routine::{self, Routine},
    rtl::unicode::{Capture, captured_text},
};

/// A string argument the driver passed: NUL-terminated ANSI or UTF-16, or a `UNICODE_STRING`.
enum Text {
    Ansi,
    Wide,
    Counted,
}

fn read_text(pointer: u64, kind: &Text) -> String {
    let Ok(pointer @ 1..) = usize::try_from(pointer) else {
        return "(null)".to_owned();
    };
    mm::check_resident(Routine::DbgPrint, pointer, false);
    match kind {
        // SAFETY: `%s` takes a NUL-terminated string, which the driver passes.
        Text::Ansi => unsafe { CStr::from_ptr(pointer as *const _) }.to_string_lossy().into_owned(),
        Text::Wide => {
            let start = pointer as *const u16;
            let mut units = Vec::new();
            // SAFETY: `%ws` takes a NUL-terminated UTF-16 string; reading stops at the NUL.
            while let unit @ 1.. = unsafe { start.wrapping_add(units.len()).read_unaligned() } {
                units.push(unit);
            }
            String::from_utf16_lossy(&units)
        }
        // SAFETY: `%wZ` takes a PUNICODE_STRING, checked before it is read.
        Text::Counted => unsafe {
            captured_text(Routine::DbgPrint, "%wZ argument", pointer as *const _, Capture::Printed)
        },
    }
}

/// Formats `format` with `args` as the kernel's `DbgPrint` does.
#[must_use]
pub fn format(format: &[u8], args: &[u64]) -> String {
    let mut out = String::new();
    let mut args = args.iter().copied();
    let mut next = || args.next().unwrap_or(0);
    let mut rest = format;
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        if c != b'%' {
            out.push(char::from(c));
            continue;
        }
        let (mut left, mut zero, mut plus, mut alternate) = (false, false, false, false);
        while let Some((&f @ (b'-' | b'0' | b'+' | b' ' | b'#'), tail)) = rest.split_first() {
            rest = tail;
            match f {
                b'-' => left = true,
                b'0' => zero = true,
                b'+' => plus = true,
                b'#' => alternate = true,
                _ => {}
            }
        }
        let number = |rest: &mut &[u8], next: &mut dyn FnMut() -> u64| -> Option<usize> {
            if let Some((b'*', tail)) = rest.split_first() {
                *rest = tail;
                return Some(usize::try_from(next() & 0xFFFF_FFFF).unwrap_or(0));
            }
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let (n, tail) = rest.split_at(digits);
            *rest = tail;
            std::str::from_utf8(n).ok().and_then(|n| n.parse().ok())
        };
        let width = number(&mut rest, &mut next).unwrap_or(0);
        let precision = match rest.split_first() {
            Some((b'.', tail)) => {
                rest = tail;
                Some(number(&mut rest, &mut next).unwrap_or(0))
            }
            _ => None,
        };
        let mut wide = false;
        let mut long64 = false;
        loop {
            match rest {
                [b'I', b'3', b'2', tail @ ..] => rest = tail,
                [b'I', b'6', b'4', tail @ ..]
                | [b'l', b'l', tail @ ..]
                | [b'I' | b'z', tail @ ..] => {
                    (long64, rest) = (true, tail);
                }
                [b'w', tail @ ..] => (wide, rest) = (true, tail),
                [b'l' | b'h', tail @ ..] => rest = tail,
                _ => break,
            }
        }
        let Some((&conversion, tail)) = rest.split_first() else { break };
        rest = tail;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_possible_wrap,
            reason = "C's conversions"
        )]
        let body = match conversion {
            b'%' => "%".to_owned(),
            b'd' | b'i' => {
                let v = next();
                let v = if long64 { v as i64 } else { i64::from(v as i32) };
                if plus && v >= 0 { format!("+{v}") } else { v.to_string() }
            }
            b'u' | b'x' | b'X' | b'o' => {
                let v = next();
                let v = if long64 { v } else { u64::from(v as u32) };
                match conversion {
                    b'u' => v.to_string(),
                    b'x' if alternate => format!("{v:#x}"),
                    b'x' => format!("{v:x}"),
                    b'X' if alternate => format!("0X{v:X}"),
                    b'X' => format!("{v:X}"),
                    _ => format!("{v:o}"),
                }
            }
            b'p' => format!("{:016X}", next()),
            b'c' => char::from(next() as u8).to_string(),
            b's' | b'S' | b'Z' => {
                let kind = match (conversion, wide) {
                    (b'Z', _) => Text::Counted,
                    (b'S', _) | (b's', true) => Text::Wide,
                    _ => Text::Ansi,
                };
                let text = read_text(next(), &kind);
                match precision {
                    Some(p) => text.chars().take(p).collect(),
                    None => text,
                }
            }
            other => format!("%{}", char::from(other)),
        };
        pad(&mut out, &body, width, left, zero && !matches!(conversion, b's' | b'S' | b'Z' | b'c'));
    }
    out
}

/// Appends `body` padded to `width`: on the right (`left`), with zeros after the sign, or with
/// spaces on the left.
fn pad(out: &mut String, body: &str, width: usize, left: bool, zero: bool) {
    let pad = width.saturating_sub(body.chars().count());
    if left {
        out.push_str(body);
        out.extend(std::iter::repeat_n(' ', pad));
    } else if zero {
        let (sign, digits) = body.split_at(usize::from(body.starts_with(['-', '+'])));
        let _ = write!(out, "{sign}{}{digits}", "0".repeat(pad));
    } else {
        out.extend(std::iter::repeat_n(' ', pad));
        out.push_str(body);
    }
}

fn capture(format_pointer: *const u8, args: &[u64]) -> u32 {
    if format_pointer.is_null() {
        return 0;
    }
    mm::check_resident(Routine::DbgPrint, format_pointer as usize, false);
    // SAFETY: the driver passes a NUL-terminated format string.
    let text = unsafe { CStr::from_ptr(format_pointer.cast()) };
    let line = format(text.to_bytes(), args);
    record::note(line.trim_end().to_owned());
    0
}

/// `DbgPrint`, a variadic routine: as many arguments as a format may use.
pub(crate) extern "win64" fn dbg_print(
    format: *const u8,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
    a6: u64,
    a7: u64,
    a8: u64,
    a9: u64,
) -> u32 {
    routine::enter(Routine::DbgPrint);
    capture(format, &[a1, a2, a3, a4, a5, a6, a7, a8, a9])
}

/// `DbgPrintEx`, a variadic routine: as many arguments as a format may use.
pub(crate) extern "win64" fn dbg_print_ex(
    _component: u32,
    _level: u32,
    format: *const u8,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
    a6: u64,
    a7: u64,
    a8: u64,
) -> u32 {
    routine::enter(Routine::DbgPrintEx);
    capture(format, &[a1, a2, a3, a4, a5, a6, a7, a8])
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn integers_follow_c_conversions() {
        let minus_one = u64::from(u32::MAX);
        assert_eq!(format(b"%d %u %x %X %lu", &[minus_one, 7, 255, 255, 9]), "-1 7 ff FF 9");
        assert_eq!(
            format(b"%llu %I64x", &[u64::MAX, 0x1_0000_0000]),
            "18446744073709551615 100000000"
        );
    }

    #[test]
    fn width_precision_and_flags_pad_as_c_does() {
        assert_eq!(
            format(b"[%5d|%-4u|%08x|%*d]", &[42, 7, 0xBEEF, 3, 1]),
            "[   42|7   |0000beef|  1]"
        );
        assert_eq!(
            format(b"%c%c %% %p", &[u64::from(b'o'), u64::from(b'k'), 0x10]),
            "ok % 0000000000000010"
        );
    }
}
