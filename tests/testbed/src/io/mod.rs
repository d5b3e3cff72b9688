//! The I/O manager (`Io`), as `ReactOS` lays out `io/iomgr`:
//!
//! - [`device`]: device objects and symbolic links by name (`IoCreateDevice`,
//!   `IoDeleteDevice`, `IoCreateSymbolicLink`, `IoDeleteSymbolicLink`);
//! - [`irp`]: IRPs with one stack location, sent, pended, cancelled and completed, with the
//!   checks I/O verification makes around every dispatch and every completion;
//! - [`csq`]: the cancel-safe queue (`IoCsq*`) over the IRP's cancel routine.
//!
//! Here: what the three share, the major function codes and the status codes.

pub mod csq;
pub mod device;
pub mod irp;

/// `STATUS_PENDING`.
pub const STATUS_PENDING: i32 = 0x103;
/// `STATUS_CANCELLED`.
pub const STATUS_CANCELLED: i32 = 0xC000_0120_u32.cast_signed();
/// `STATUS_OBJECT_NAME_NOT_FOUND`.
pub const STATUS_OBJECT_NAME_NOT_FOUND: i32 = 0xC000_0034_u32.cast_signed();
/// `STATUS_NO_SUCH_DEVICE`: an open of a device whose driver is marked for unload.
pub const STATUS_NO_SUCH_DEVICE: i32 = 0xC000_000E_u32.cast_signed();
/// `IO_TYPE_FILE`.
pub const IO_TYPE_FILE: i16 = 5;

/// Major function codes the bed sends.
pub mod major {
    /// `IRP_MJ_CREATE`.
    pub const CREATE: u8 = 0x00;
    /// `IRP_MJ_CLOSE`.
    pub const CLOSE: u8 = 0x02;
    /// `IRP_MJ_DEVICE_CONTROL`.
    pub const DEVICE_CONTROL: u8 = 0x0E;
    /// `IRP_MJ_CLEANUP`.
    pub const CLEANUP: u8 = 0x12;

    /// The name of a major function code.
    #[must_use]
    pub const fn name(major: u8) -> &'static str {
        match major {
            CREATE => "IRP_MJ_CREATE",
            CLOSE => "IRP_MJ_CLOSE",
            DEVICE_CONTROL => "IRP_MJ_DEVICE_CONTROL",
            CLEANUP => "IRP_MJ_CLEANUP",
            _ => "IRP_MJ_(other)",
        }
    }
}
