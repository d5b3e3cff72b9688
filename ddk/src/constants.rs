//! Constants that the headers define as casts (`((NTSTATUS)0xC0000001L)`), which bindgen does
//! not evaluate, with the types wdk-sys gives them.

use crate::NTSTATUS;

/// Reinterprets the documented 32-bit pattern of a status code as an `NTSTATUS`.
const fn status(code: u32) -> NTSTATUS {
    NTSTATUS::from_ne_bytes(code.to_ne_bytes())
}

pub const STATUS_SUCCESS: NTSTATUS = status(0x0000_0000);
pub const STATUS_PENDING: NTSTATUS = status(0x0000_0103);
pub const STATUS_UNSUCCESSFUL: NTSTATUS = status(0xC000_0001);
pub const STATUS_NOT_IMPLEMENTED: NTSTATUS = status(0xC000_0002);
pub const STATUS_INVALID_PARAMETER: NTSTATUS = status(0xC000_000D);
pub const STATUS_NO_MEMORY: NTSTATUS = status(0xC000_0017);
pub const STATUS_ACCESS_DENIED: NTSTATUS = status(0xC000_0022);
pub const STATUS_BUFFER_TOO_SMALL: NTSTATUS = status(0xC000_0023);
pub const STATUS_OBJECT_NAME_COLLISION: NTSTATUS = status(0xC000_0035);
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = status(0xC000_009A);
pub const STATUS_NOT_SUPPORTED: NTSTATUS = status(0xC000_00BB);
pub const STATUS_INVALID_DEVICE_REQUEST: NTSTATUS = status(0xC000_0010);
pub const STATUS_INVALID_DEVICE_STATE: NTSTATUS = status(0xC000_0184);
