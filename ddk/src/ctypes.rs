//! C types with the widths of 64-bit Windows (LLP64), whatever the host.
//!
//! bindgen maps `ULONG` to `c_ulong`, which is 64 bits on Linux: these aliases keep the
//! layouts of the Windows target when the bindings are compiled into a Linux crate.

pub type c_char = i8;
pub type c_schar = i8;
pub type c_uchar = u8;
pub type c_short = i16;
pub type c_ushort = u16;
pub type c_int = i32;
pub type c_uint = u32;
pub type c_long = i32;
pub type c_ulong = u32;
pub type c_longlong = i64;
pub type c_ulonglong = u64;
pub type c_float = f32;
pub type c_double = f64;
pub use core::ffi::c_void;
