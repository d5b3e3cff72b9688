//! Statuses and Win32 errors: how a Win32 error of `CreateFileW` or `DeviceIoControl` maps back
//! to the `NTSTATUS` the driver completed the request with, and how a failed call is reported.
//!
//! The I/O manager hands a failed request's status to user mode through
//! `RtlNtStatusToDosError`; the table below is the part of its documented mapping that covers
//! the statuses of `pagelock_protocol::status` (and `STATUS_NO_MEMORY` besides). The
//! mapping is many-to-one, so the way back is only exact for these: any other Win32 error is
//! carried as `NTSTATUS_FROM_WIN32(error)` and stays recognisable as what it was.

use std::fmt;

use pagelock_protocol::status;

/// `STATUS_NO_MEMORY`: not a status the driver completes with, but what `ERROR_NOT_ENOUGH_MEMORY`
/// comes from.
pub const STATUS_NO_MEMORY: i32 = ntstatus(0xC000_0017);

/// `FACILITY_NTWIN32`, the facility of an `NTSTATUS` that wraps a Win32 error.
const FACILITY_NTWIN32: u32 = 7;

/// Reinterprets a documented 32-bit pattern as a signed status.
const fn ntstatus(bits: u32) -> i32 {
    i32::from_ne_bytes(bits.to_ne_bytes())
}

/// The 32-bit pattern of a status, for printing.
#[must_use]
pub const fn bits(status: i32) -> u32 {
    u32::from_ne_bytes(status.to_ne_bytes())
}

/// Win32 error codes this crate names.
pub mod win32 {
    /// `ERROR_INVALID_FUNCTION`.
    pub const INVALID_FUNCTION: u32 = 1;
    /// `ERROR_FILE_NOT_FOUND`: no `\\.\PageLock` (the driver is not loaded), or a name below
    /// it.
    pub const FILE_NOT_FOUND: u32 = 2;
    /// `ERROR_ACCESS_DENIED`.
    pub const ACCESS_DENIED: u32 = 5;
    /// `ERROR_NOT_ENOUGH_MEMORY`.
    pub const NOT_ENOUGH_MEMORY: u32 = 8;
    /// `ERROR_BAD_COMMAND`.
    pub const BAD_COMMAND: u32 = 22;
    /// `ERROR_GEN_FAILURE`.
    pub const GEN_FAILURE: u32 = 31;
    /// `ERROR_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: u32 = 87;
    /// `ERROR_INSUFFICIENT_BUFFER`.
    pub const INSUFFICIENT_BUFFER: u32 = 122;
    /// `ERROR_DIRECTORY`: what `STATUS_NOT_A_DIRECTORY` becomes.
    pub const DIRECTORY: u32 = 267;
    /// `ERROR_INVALID_IMAGE_HASH`: the driver's signature is not trusted.
    pub const INVALID_IMAGE_HASH: u32 = 577;
    /// `ERROR_SERVICE_ALREADY_RUNNING`.
    pub const SERVICE_ALREADY_RUNNING: u32 = 1056;
    /// `ERROR_SERVICE_DOES_NOT_EXIST`.
    pub const SERVICE_DOES_NOT_EXIST: u32 = 1060;
    /// `ERROR_SERVICE_NOT_ACTIVE`.
    pub const SERVICE_NOT_ACTIVE: u32 = 1062;
    /// `ERROR_SERVICE_MARKED_FOR_DELETE`.
    pub const SERVICE_MARKED_FOR_DELETE: u32 = 1072;
    /// `ERROR_OPERATION_ABORTED`: what a cancelled request (`STATUS_CANCELLED`) fails with.
    pub const OPERATION_ABORTED: u32 = 995;
    /// `ERROR_DRIVER_BLOCKED`.
    pub const DRIVER_BLOCKED: u32 = 1275;
    /// `ERROR_NO_SYSTEM_RESOURCES`.
    pub const NO_SYSTEM_RESOURCES: u32 = 1450;
    /// `ERROR_SERVICE_REQUEST_TIMEOUT`, also used here for a stop that does not finish.
    pub const SERVICE_REQUEST_TIMEOUT: u32 = 1053;
}

/// `RtlNtStatusToDosError` for the statuses this crate deals with: (status, Win32 error).
const MAPPING: [(i32, u32); 11] = [
    (status::BUFFER_TOO_SMALL, win32::INSUFFICIENT_BUFFER),
    (status::INVALID_PARAMETER, win32::INVALID_PARAMETER),
    (status::INVALID_DEVICE_REQUEST, win32::INVALID_FUNCTION),
    (status::INVALID_DEVICE_STATE, win32::BAD_COMMAND),
    (status::ACCESS_DENIED, win32::ACCESS_DENIED),
    (status::INSUFFICIENT_RESOURCES, win32::NO_SYSTEM_RESOURCES),
    (status::UNSUCCESSFUL, win32::GEN_FAILURE),
    (STATUS_NO_MEMORY, win32::NOT_ENOUGH_MEMORY),
    (status::OBJECT_NAME_NOT_FOUND, win32::FILE_NOT_FOUND),
    (status::NOT_A_DIRECTORY, win32::DIRECTORY),
    (status::CANCELLED, win32::OPERATION_ABORTED),
];

/// `NTSTATUS_FROM_WIN32`: a Win32 error wrapped as an error status of facility `NTWIN32`.
#[must_use]
pub const fn ntstatus_from_win32(error: u32) -> i32 {
    if error == 0 {
        return status::SUCCESS;
    }
    ntstatus((error & 0xFFFF) | (FACILITY_NTWIN32 << 16) | 0xC000_0000)
}

/// The status a failed request was completed with, from the Win32 error the caller saw.
#[must_use]
pub fn status_from_win32(error: u32) -> i32 {
    MAPPING
        .iter()
        .find(|&&(_, win32)| win32 == error)
        .map_or_else(|| ntstatus_from_win32(error), |&(status, _)| status)
}

/// The Win32 error a caller sees for `status`, where this crate knows it.
#[must_use]
pub fn win32_from_status(status: i32) -> Option<u32> {
    if status == status::SUCCESS {
        return Some(0);
    }
    if let Some(&(_, error)) = MAPPING.iter().find(|&&(known, _)| known == status) {
        return Some(error);
    }
    let bits = bits(status);
    (bits & 0xFFFF_0000 == 0xC000_0000 | (FACILITY_NTWIN32 << 16)).then_some(bits & 0xFFFF)
}

/// A status for a report: its name where known, and its value.
#[must_use]
pub fn status_text(status: i32) -> String {
    let name = match status {
        STATUS_NO_MEMORY => "STATUS_NO_MEMORY",
        other => status::name(other),
    };
    let bits = bits(status);
    if name != "(other)" {
        format!("{name} (0x{bits:08X})")
    } else if let (Some(error), true) = (win32_from_status(status), bits >> 16 == 0xC007) {
        format!("Win32 error {error} (0x{bits:08X})")
    } else {
        format!("0x{bits:08X}")
    }
}

/// A Win32 call that failed: which call, its error code and the system's text for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Win32Error {
    /// The call and what it was called on, for example `StartServiceW(pagelock)`.
    pub call: String,
    /// `GetLastError()` after the call, or the error it returned.
    pub code: u32,
    /// `FormatMessageW`'s text for `code`, without the trailing line break.
    pub message: String,
}

impl Win32Error {
    /// What to do about it, where that is known.
    #[must_use]
    pub fn hint(&self) -> Option<&'static str> {
        let opening_device = self.call.starts_with("CreateFileW");
        match self.code {
            win32::ACCESS_DENIED => Some(
                "this needs administrator rights: run pagelock-test from an elevated prompt \
                 (Run as administrator)",
            ),
            win32::FILE_NOT_FOUND if opening_device => Some(
                "\\\\.\\PageLock does not exist: the driver is not loaded \
                 (pagelock-test install <pagelock.inf>, or pagelock-test start)",
            ),
            win32::SERVICE_DOES_NOT_EXIST => {
                Some("the pagelock service is not installed (pagelock-test install <pagelock.inf>)")
            }
            win32::INVALID_IMAGE_HASH => Some(
                "Windows does not trust the driver's signature: turn test signing on and trust \
                 the test certificate (scripts\\vm-setup.ps1), then reboot",
            ),
            win32::DRIVER_BLOCKED => {
                Some("Windows blocked the driver (a blocklist, or memory integrity is on)")
            }
            win32::SERVICE_MARKED_FOR_DELETE => {
                Some("the service is marked for deletion: close every handle to it, or reboot")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Win32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed with error {} (0x{:08X}): {}",
            self.call, self.code, self.code, self.message
        )?;
        if let Some(hint) = self.hint() {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Win32Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_status_maps_to_its_documented_win32_error_and_back() {
        let documented = [
            (status::BUFFER_TOO_SMALL, 122),
            (status::INVALID_PARAMETER, 87),
            (status::INVALID_DEVICE_REQUEST, 1),
            (status::INVALID_DEVICE_STATE, 22),
            (status::ACCESS_DENIED, 5),
            (status::INSUFFICIENT_RESOURCES, 1450),
            (status::OBJECT_NAME_NOT_FOUND, 2),
            (status::NOT_A_DIRECTORY, 267),
        ];
        for (status, error) in documented {
            assert_eq!(win32_from_status(status), Some(error), "{}", status_text(status));
            assert_eq!(status_from_win32(error), status, "error {error}");
        }
    }

    #[test]
    fn not_enough_memory_is_no_memory_not_insufficient_resources() {
        assert_eq!(status_from_win32(8), STATUS_NO_MEMORY);
        assert_eq!(status_from_win32(1450), status::INSUFFICIENT_RESOURCES);
    }

    #[test]
    fn unknown_win32_errors_survive_the_round_trip() {
        let status = status_from_win32(1234);
        assert_eq!(bits(status), 0xC007_04D2);
        assert_eq!(win32_from_status(status), Some(1234));
        assert_eq!(status_text(status), "Win32 error 1234 (0xC00704D2)");
        assert_eq!(status_from_win32(0), status::SUCCESS);
    }

    #[test]
    fn status_text_names_known_statuses() {
        assert_eq!(status_text(status::SUCCESS), "STATUS_SUCCESS (0x00000000)");
        assert_eq!(
            status_text(status::INVALID_DEVICE_STATE),
            "STATUS_INVALID_DEVICE_STATE (0xC0000184)"
        );
        assert_eq!(status_text(ntstatus(0xC000_0001)), "STATUS_UNSUCCESSFUL (0xC0000001)");
        assert_eq!(status_text(ntstatus(0xC000_0005)), "0xC0000005");
        assert_eq!(win32_from_status(ntstatus(0xC000_0005)), None);
    }

    #[test]
    fn a_failure_names_the_call_the_code_and_the_text() {
        let error = Win32Error {
            call: "StartServiceW(pagelock)".into(),
            code: 577,
            message: "Windows cannot verify the digital signature for this file.".into(),
        };
        let text = error.to_string();
        assert!(text.starts_with(
            "StartServiceW(pagelock) failed with error 577 (0x00000241): Windows cannot verify"
        ));
        assert!(text.contains("hint: Windows does not trust"));
    }

    #[test]
    fn access_denied_says_run_as_administrator() {
        let error = Win32Error {
            call: r"CreateFileW(\\.\PageLock)".into(),
            code: 5,
            message: String::new(),
        };
        assert!(error.hint().is_some_and(|hint| hint.contains("Run as administrator")));
        let missing = Win32Error {
            call: r"CreateFileW(\\.\PageLock)".into(),
            code: 2,
            message: String::new(),
        };
        assert!(missing.hint().is_some_and(|hint| hint.contains("not loaded")));
    }
}
