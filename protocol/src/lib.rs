//! The IOCTL ABI of the pagelock driver, shared by the driver, the test app and the test bed.
//!
//! Every control code is `METHOD_BUFFERED` on a device type in the vendor range, with the
//! access bits the I/O manager checks against the handle's granted access. Requests and
//! replies are `repr(C)` structures of fixed size that start with a version field; byte views
//! come from `zerocopy`, so decoding never reads out of bounds and never panics.
//!
//! Buffer rules, the same for every code:
//! - an input shorter than the request, or an output shorter than the reply:
//!   `STATUS_BUFFER_TOO_SMALL`;
//! - an input longer than the request (or any input to a code that takes none), a wrong
//!   version, or a value out of range: `STATUS_INVALID_PARAMETER`;
//! - an unknown code: `STATUS_INVALID_DEVICE_REQUEST`;
//! - the reply length is exactly the reply's size; a failed request changes no state.
//!
//! Opening: the device has no namespace and is no directory. An open of a name below it
//! (`\\.\PageLock\anything`) is refused with `STATUS_OBJECT_NAME_NOT_FOUND`, an open asking
//! for a directory (`FILE_DIRECTORY_FILE`) with `STATUS_NOT_A_DIRECTORY`; neither changes state.

#![no_std]
#![forbid(
    clippy::multiple_unsafe_ops_per_block,
    clippy::undocumented_unsafe_blocks,
    clippy::unnecessary_safety_doc
)]

pub use zerocopy;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The `NTSTATUS` values the driver completes requests with (`ntstatus.h`).
pub mod status {
    /// Reinterprets the documented 32-bit pattern as a signed status.
    const fn code(bits: u32) -> i32 {
        i32::from_ne_bytes(bits.to_ne_bytes())
    }

    /// `STATUS_SUCCESS`.
    pub const SUCCESS: i32 = code(0);
    /// `STATUS_UNSUCCESSFUL`.
    pub const UNSUCCESSFUL: i32 = code(0xC000_0001);
    /// `STATUS_INVALID_PARAMETER`: wrong length, version or value.
    pub const INVALID_PARAMETER: i32 = code(0xC000_000D);
    /// `STATUS_INVALID_DEVICE_REQUEST`: an unknown control code.
    pub const INVALID_DEVICE_REQUEST: i32 = code(0xC000_0010);
    /// `STATUS_ACCESS_DENIED`: the caller may not open the device, or the handle lacks the
    /// access the control code requires.
    pub const ACCESS_DENIED: i32 = code(0xC000_0022);
    /// `STATUS_BUFFER_TOO_SMALL`: an input or output buffer is shorter than its structure.
    pub const BUFFER_TOO_SMALL: i32 = code(0xC000_0023);
    /// `STATUS_INSUFFICIENT_RESOURCES`: the pool allocation for a new handle failed.
    pub const INSUFFICIENT_RESOURCES: i32 = code(0xC000_009A);
    /// `STATUS_INVALID_DEVICE_STATE`: `UNLOCK` with no extra lock, `LOCK` at the limit, or
    /// `WAIT` with [`super::MAX_PENDING`] waits already queued.
    pub const INVALID_DEVICE_STATE: i32 = code(0xC000_0184);
    /// `STATUS_PENDING`: the driver queued the request and completes it later (`WAIT`).
    pub const PENDING: i32 = code(0x0000_0103);
    /// `STATUS_OBJECT_NAME_NOT_FOUND`: no such object; for an open of a name below the device
    /// (`\\.\PageLock\anything`), which has no namespace.
    pub const OBJECT_NAME_NOT_FOUND: i32 = code(0xC000_0034);
    /// `STATUS_NOT_A_DIRECTORY`: an open asked for a directory (`FILE_DIRECTORY_FILE`), and the
    /// device is not one.
    pub const NOT_A_DIRECTORY: i32 = code(0xC000_0103);
    /// `STATUS_CANCELLED`: a queued `WAIT` was cancelled.
    ///
    /// By its caller (`CancelIoEx`, `IoCancelIrp`) or because its handle was closed
    /// (`IRP_MJ_CLEANUP`). No reply comes with it: the I/O manager copies a `METHOD_BUFFERED`
    /// reply only on success.
    pub const CANCELLED: i32 = code(0xC000_0120);

    /// `NT_SUCCESS`.
    #[must_use]
    pub const fn is_success(status: i32) -> bool {
        status >= 0
    }

    /// The status's `ntstatus.h` name, for reports.
    #[must_use]
    pub const fn name(status: i32) -> &'static str {
        match status {
            SUCCESS => "STATUS_SUCCESS",
            UNSUCCESSFUL => "STATUS_UNSUCCESSFUL",
            INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
            INVALID_DEVICE_REQUEST => "STATUS_INVALID_DEVICE_REQUEST",
            ACCESS_DENIED => "STATUS_ACCESS_DENIED",
            BUFFER_TOO_SMALL => "STATUS_BUFFER_TOO_SMALL",
            INSUFFICIENT_RESOURCES => "STATUS_INSUFFICIENT_RESOURCES",
            INVALID_DEVICE_STATE => "STATUS_INVALID_DEVICE_STATE",
            PENDING => "STATUS_PENDING",
            CANCELLED => "STATUS_CANCELLED",
            OBJECT_NAME_NOT_FOUND => "STATUS_OBJECT_NAME_NOT_FOUND",
            NOT_A_DIRECTORY => "STATUS_NOT_A_DIRECTORY",
            _ => "(other)",
        }
    }
}

/// Version of this ABI; every request and reply carries it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The device's kernel name.
pub const DEVICE_NAME: &str = r"\Device\PageLock";
/// The symbolic link user mode opens as `\\.\PageLock`.
pub const DOS_DEVICE_NAME: &str = r"\DosDevices\PageLock";
/// The path a Win32 program passes to `CreateFileW`.
pub const WIN32_PATH: &str = r"\\.\PageLock";

/// Device type of `\Device\PageLock`, in the range reserved for vendors (0x8000..=0xFFFF).
pub const DEVICE_TYPE: u32 = 0x8337;

/// `METHOD_BUFFERED`: the I/O manager copies input and output through one system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// The handle must have been opened for reading.
pub const FILE_READ_ACCESS: u32 = 1;
/// The handle must have been opened for writing.
pub const FILE_WRITE_ACCESS: u32 = 2;

/// The `CTL_CODE` macro of the WDK.
#[must_use]
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Reads the driver's state. Input: none. Output: [`StateReply`].
pub const IOCTL_QUERY_STATE: u32 = ctl_code(DEVICE_TYPE, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Runs the locked work at `DISPATCH_LEVEL`. Input: [`RunRequest`]. Output: [`RunReply`].
pub const IOCTL_RUN_LOCKED: u32 =
    ctl_code(DEVICE_TYPE, 0x801, METHOD_BUFFERED, FILE_READ_ACCESS | FILE_WRITE_ACCESS);
/// Takes one extra lock on every lockable section. Input: none. Output: [`LockReply`].
pub const IOCTL_LOCK: u32 = ctl_code(DEVICE_TYPE, 0x802, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Releases one extra lock. Input: none. Output: [`LockReply`].
pub const IOCTL_UNLOCK: u32 = ctl_code(DEVICE_TYPE, 0x803, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Times lock by address against lock by handle. Input: [`BenchRequest`]. Output: [`BenchReply`].
///
/// Needs write access: it changes lock counts and makes up to [`MAX_BENCH_ITERATIONS`]
/// lock-by-address calls, each a walk of the kernel's loaded-module list under a shared lock
/// that, in a stream, delays those who take it exclusively (a driver load).
pub const IOCTL_BENCH: u32 = ctl_code(DEVICE_TYPE, 0x804, METHOD_BUFFERED, FILE_WRITE_ACCESS);

/// Waits until a timeout expires or `SIGNAL` ends the wait early, whichever comes first.
/// Input: [`WaitRequest`]. Output: [`WaitReply`].
///
/// The driver queues the request (`STATUS_PENDING`) and completes it later: with
/// `STATUS_SUCCESS` and [`WaitOutcome::Expired`] from its timer, at `DISPATCH_LEVEL`, once the
/// timeout has passed; with `STATUS_SUCCESS` and [`WaitOutcome::Signalled`] from a `SIGNAL`;
/// with `STATUS_CANCELLED` (and no reply) when the caller cancels it or closes the handle. At
/// most [`MAX_PENDING`] waits are queued at once, over all handles; one more is refused with
/// `STATUS_INVALID_DEVICE_STATE`. Needs read and write access: a queued wait holds a slot of
/// that driver-wide limit.
pub const IOCTL_WAIT: u32 =
    ctl_code(DEVICE_TYPE, 0x805, METHOD_BUFFERED, FILE_READ_ACCESS | FILE_WRITE_ACCESS);
/// Ends queued waits early. Input: [`SignalRequest`]. Output: [`SignalReply`].
///
/// Needs write access: it completes waits of other handles too ([`SignalScope::All`]).
pub const IOCTL_SIGNAL: u32 = ctl_code(DEVICE_TYPE, 0x806, METHOD_BUFFERED, FILE_WRITE_ACCESS);

/// Every control code the driver implements, with its name.
pub const IOCTLS: [(u32, &str); 7] = [
    (IOCTL_QUERY_STATE, "QUERY_STATE"),
    (IOCTL_RUN_LOCKED, "RUN_LOCKED"),
    (IOCTL_LOCK, "LOCK"),
    (IOCTL_UNLOCK, "UNLOCK"),
    (IOCTL_BENCH, "BENCH"),
    (IOCTL_WAIT, "WAIT"),
    (IOCTL_SIGNAL, "SIGNAL"),
];

/// The access bits of a control code (`FILE_READ_ACCESS`, `FILE_WRITE_ACCESS`).
#[must_use]
pub const fn required_access(code: u32) -> u32 {
    (code >> 14) & 3
}

/// Most iterations one `RUN_LOCKED` may ask for: the spin lock is held for the whole run, and
/// Microsoft's guidance is to hold one no longer than about 25 microseconds.
pub const MAX_RUN_ITERATIONS: u32 = 4096;
/// Most extra locks one handle may hold through `LOCK`.
pub const MAX_EXTRA_LOCKS: u32 = 64;
/// Most lock/unlock pairs of each kind one `BENCH` may time.
pub const MAX_BENCH_ITERATIONS: u32 = 10_000;

/// Most `WAIT` requests queued at once, over all handles: each is an IRP the I/O manager keeps
/// in nonpaged pool until the driver completes it.
pub const MAX_PENDING: u32 = 64;
/// Longest timeout one `WAIT` may ask for, in milliseconds.
pub const MAX_WAIT_MS: u32 = 60_000;
/// The period of the driver's timer while waits are queued, in milliseconds.
///
/// A wait's deadline is a reading of the performance counter, and each tick completes the waits
/// whose deadline the counter has reached: a wait expires at the first tick at or after its
/// timeout, never before it and at most one tick after it (plus however long the timer's DPC
/// waits to run). Windows lets a timer fire only at a clock interrupt, every 15.6 ms unless a
/// program has asked for a finer timer resolution; there a tick can be that far apart.
pub const WAIT_TICK_MS: u32 = 10;

/// Number of lockable sections the driver reports.
pub const SECTION_COUNT: usize = 2;
/// IRQL value of `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u32 = 2;

/// Input of `RUN_LOCKED`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RunRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// 1..=[`MAX_RUN_ITERATIONS`].
    pub iterations: u32,
    /// Any value; the checksum is a function of it.
    pub seed: u64,
}

/// Output of `RUN_LOCKED`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RunReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The IRQL the locked work ran at (`DISPATCH_LEVEL`).
    pub irql: u32,
    /// [`checksum`] of the request's seed and iterations.
    pub checksum: u64,
}

/// Output of `LOCK` and `UNLOCK`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct LockReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Extra locks this handle holds after the request.
    pub extra_locks: u32,
}

/// Input of `BENCH`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BenchRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// 1..=[`MAX_BENCH_ITERATIONS`] pairs of each kind.
    pub iterations: u32,
}

/// Output of `BENCH`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BenchReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Pairs of each kind that were timed.
    pub iterations: u32,
    /// Performance-counter ticks for the lock-by-address + unlock pairs.
    pub by_address_ticks: u64,
    /// Performance-counter ticks for the lock-by-handle + unlock pairs.
    pub by_handle_ticks: u64,
    /// Performance-counter frequency, ticks per second.
    pub frequency: u64,
}

/// One lockable section in a [`StateReply`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SectionState {
    /// The PE section name, NUL-padded.
    pub name: [u8; 8],
    /// Size of the section in bytes.
    pub size: u32,
    /// Locks the driver holds on it now, over all handles.
    pub lock_count: u32,
    /// How many of those the calling handle holds.
    pub held_by_caller: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

impl SectionState {
    /// The section name without its padding.
    #[must_use]
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// Output of `QUERY_STATE`. Never carries a kernel address or handle value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct StateReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The driver's own version, `major << 16 | minor << 8 | patch`.
    pub driver_version: u32,
    /// Handles open on the device.
    pub open_handles: u32,
    /// Extra locks (from `LOCK`) the calling handle holds.
    pub caller_extra_locks: u32,
    /// The lockable sections: code first, then data.
    pub sections: [SectionState; SECTION_COUNT],
    /// Calls to `MmLockPagableDataSection` since load.
    pub lock_by_address_calls: u64,
    /// Calls to `MmLockPagableSectionByHandle` since load.
    pub lock_by_handle_calls: u64,
    /// Calls to `MmUnlockPagableImageSection` since load.
    pub unlock_calls: u64,
    /// `RUN_LOCKED` requests completed since load (kept in pageable data).
    pub runs: u64,
}

/// Input of `WAIT`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct WaitRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// 1..=[`MAX_WAIT_MS`] milliseconds.
    pub timeout_ms: u32,
    /// Any value; the reply carries it back, so a caller can tell its waits apart.
    pub cookie: u64,
}

/// How a `WAIT` ended: the `outcome` of a [`WaitReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WaitOutcome {
    /// The timeout passed (completed by the driver's timer, at `DISPATCH_LEVEL`).
    Expired = 1,
    /// A `SIGNAL` ended it early (at `PASSIVE_LEVEL`).
    Signalled = 2,
    /// Cancelled: by the caller, or by the close of its handle. The request completes with
    /// `STATUS_CANCELLED`, which carries no reply; the value names that ending in reports.
    Cancelled = 3,
}

impl WaitOutcome {
    /// The outcome an `outcome` field holds, if it is one.
    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Expired),
            2 => Some(Self::Signalled),
            3 => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// The outcome's name, for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Signalled => "signalled",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Output of `WAIT`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct WaitReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// A [`WaitOutcome`], as its `u32` value.
    pub outcome: u32,
    /// The request's cookie.
    pub cookie: u64,
    /// Waits completed since load, this one included: counted in pageable data, under the
    /// spin lock, by the locked code that completes the wait.
    pub completed_waits: u64,
}

/// Which waits a `SIGNAL` ends: the `scope` of a [`SignalRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SignalScope {
    /// Every queued wait, of every handle.
    All = 1,
    /// The waits queued on the handle that sends the `SIGNAL`.
    Caller = 2,
}

/// Input of `SIGNAL`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SignalRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// A [`SignalScope`], as its `u32` value.
    pub scope: u32,
}

/// Output of `SIGNAL`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SignalReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Waits this `SIGNAL` completed.
    pub completed: u32,
}

/// Why a request was refused; each maps to one `NTSTATUS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// A buffer is shorter than the structure (`STATUS_BUFFER_TOO_SMALL`).
    BufferTooSmall,
    /// Wrong length, version or value (`STATUS_INVALID_PARAMETER`).
    InvalidParameter,
}

/// Decodes a request of type `T`: exactly `size_of::<T>()` bytes with the current version.
///
/// # Errors
/// [`RequestError::BufferTooSmall`] for a short input, [`RequestError::InvalidParameter`] for
/// a long one or a wrong version.
pub fn decode<T: Versioned>(input: &[u8]) -> Result<T, RequestError> {
    let request = T::read_from_bytes(input).map_err(|_| {
        if input.len() < size_of::<T>() {
            RequestError::BufferTooSmall
        } else {
            RequestError::InvalidParameter
        }
    })?;
    if request.version() == PROTOCOL_VERSION {
        Ok(request)
    } else {
        Err(RequestError::InvalidParameter)
    }
}

/// Checks that a code which takes no input was sent none.
///
/// # Errors
/// [`RequestError::InvalidParameter`] for any input.
pub const fn expect_no_input(input: &[u8]) -> Result<(), RequestError> {
    if input.is_empty() { Ok(()) } else { Err(RequestError::InvalidParameter) }
}

/// A request or reply that starts with a version field.
pub trait Versioned: FromBytes + IntoBytes + Immutable + KnownLayout + Sized {
    /// The version field.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u32 {
                self.version
            }
        }
    )*};
}
versioned!(
    RunRequest,
    RunReply,
    LockReply,
    BenchRequest,
    BenchReply,
    StateReply,
    WaitRequest,
    WaitReply,
    SignalRequest,
    SignalReply
);

impl RunRequest {
    /// A request for `iterations` rounds from `seed`.
    #[must_use]
    pub const fn new(iterations: u32, seed: u64) -> Self {
        Self { version: PROTOCOL_VERSION, iterations, seed }
    }

    /// Whether the driver accepts these values.
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.iterations >= 1 && self.iterations <= MAX_RUN_ITERATIONS
    }
}

impl BenchRequest {
    /// A request timing `iterations` pairs of each kind.
    #[must_use]
    pub const fn new(iterations: u32) -> Self {
        Self { version: PROTOCOL_VERSION, iterations }
    }

    /// Whether the driver accepts these values.
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.iterations >= 1 && self.iterations <= MAX_BENCH_ITERATIONS
    }
}

impl WaitRequest {
    /// A wait of `timeout_ms` milliseconds carrying `cookie`.
    #[must_use]
    pub const fn new(timeout_ms: u32, cookie: u64) -> Self {
        Self { version: PROTOCOL_VERSION, timeout_ms, cookie }
    }

    /// Whether the driver accepts these values.
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        self.timeout_ms >= 1 && self.timeout_ms <= MAX_WAIT_MS
    }
}

impl SignalRequest {
    /// A signal of the waits `scope` names.
    #[must_use]
    pub const fn new(scope: SignalScope) -> Self {
        Self { version: PROTOCOL_VERSION, scope: scope as u32 }
    }

    /// The scope, if the field holds one.
    #[must_use]
    pub const fn scope(&self) -> Option<SignalScope> {
        match self.scope {
            1 => Some(SignalScope::All),
            2 => Some(SignalScope::Caller),
            _ => None,
        }
    }
}

/// Entries in the lookup table the locked work reads.
pub const TABLE_LEN: usize = 256;

/// The lookup table the driver keeps in its pageable data section (`PAGEDATA`): entry `i` is
/// the `SplitMix64` output for `i`, folded to 32 bits.
pub const TABLE: [u32; TABLE_LEN] = {
    let mut table = [0u32; TABLE_LEN];
    let mut i = 0;
    while i < TABLE_LEN {
        let z = splitmix64(i as u64);
        #[expect(clippy::cast_possible_truncation, reason = "folding 64 bits to 32 on purpose")]
        {
            table[i] = (z ^ (z >> 32)) as u32;
        }
        i += 1;
    }
    table
};

/// One `SplitMix64` step (Steele, Lea and Flood), used to build [`TABLE`].
#[must_use]
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One round of the locked work: picks a table entry from the state and mixes it in.
#[must_use]
#[inline]
pub const fn checksum_round(state: u64, round: u32, table: &[u32; TABLE_LEN]) -> u64 {
    let index = ((state >> 56) as usize ^ round as usize) % TABLE_LEN;
    (state ^ table[index] as u64).rotate_left(13).wrapping_mul(0x0000_0100_0000_01B3)
}

/// The checksum `RUN_LOCKED` returns: `iterations` rounds of [`checksum_round`] over
/// [`TABLE`], starting from `seed`.
#[must_use]
pub const fn checksum(seed: u64, iterations: u32) -> u64 {
    let mut state = seed;
    let mut round = 0;
    while round < iterations {
        state = checksum_round(state, round, &TABLE);
        round += 1;
    }
    state
}

/// The driver version reported by `QUERY_STATE` for a `major.minor.patch` triple.
#[must_use]
pub const fn encode_version(major: u8, minor: u8, patch: u8) -> u32 {
    ((major as u32) << 16) | ((minor as u32) << 8) | patch as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_codes_match_ctl_code_of_the_wdk() {
        // CTL_CODE(0x8337, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)
        assert_eq!(IOCTL_QUERY_STATE, 0x8337_6000);
        assert_eq!(IOCTL_RUN_LOCKED, 0x8337_E004);
        assert_eq!(IOCTL_LOCK, 0x8337_A008);
        assert_eq!(IOCTL_UNLOCK, 0x8337_A00C);
        assert_eq!(IOCTL_BENCH, 0x8337_A010);
        assert_eq!(IOCTL_WAIT, 0x8337_E014);
        assert_eq!(IOCTL_SIGNAL, 0x8337_A018);
        for (code, _) in IOCTLS {
            assert_eq!(code & 3, METHOD_BUFFERED);
            assert!((0x8000..=0xFFFF).contains(&(code >> 16)));
            assert!(((code >> 2) & 0xFFF) >= 0x800);
        }
    }

    #[test]
    fn access_bits_are_read_for_queries_and_write_for_changes() {
        assert_eq!(required_access(IOCTL_QUERY_STATE), FILE_READ_ACCESS);
        assert_eq!(required_access(IOCTL_BENCH), FILE_WRITE_ACCESS);
        assert_eq!(required_access(IOCTL_LOCK), FILE_WRITE_ACCESS);
        assert_eq!(required_access(IOCTL_UNLOCK), FILE_WRITE_ACCESS);
        assert_eq!(required_access(IOCTL_RUN_LOCKED), FILE_READ_ACCESS | FILE_WRITE_ACCESS);
        assert_eq!(required_access(IOCTL_WAIT), FILE_READ_ACCESS | FILE_WRITE_ACCESS);
        assert_eq!(required_access(IOCTL_SIGNAL), FILE_WRITE_ACCESS);
    }

    #[test]
    fn control_codes_are_distinct() {
        for (i, (a, _)) in IOCTLS.iter().enumerate() {
            for (b, _) in &IOCTLS[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(size_of::<RunRequest>(), 16);
        assert_eq!(size_of::<RunReply>(), 16);
        assert_eq!(size_of::<LockReply>(), 8);
        assert_eq!(size_of::<BenchRequest>(), 8);
        assert_eq!(size_of::<BenchReply>(), 32);
        assert_eq!(size_of::<SectionState>(), 24);
        assert_eq!(size_of::<StateReply>(), 16 + 2 * 24 + 32);
        assert_eq!(size_of::<WaitRequest>(), 16);
        assert_eq!(size_of::<WaitReply>(), 24);
        assert_eq!(size_of::<SignalRequest>(), 8);
        assert_eq!(size_of::<SignalReply>(), 8);
    }

    #[test]
    fn wait_bounds_are_enforced_by_is_valid() {
        assert!(!WaitRequest::new(0, 1).is_valid());
        assert!(WaitRequest::new(1, 1).is_valid());
        assert!(WaitRequest::new(MAX_WAIT_MS, 1).is_valid());
        assert!(!WaitRequest::new(MAX_WAIT_MS + 1, 1).is_valid());
        assert!(!WaitRequest::new(u32::MAX, 1).is_valid());
    }

    #[test]
    fn wait_requests_decode_like_every_other() {
        let request = WaitRequest::new(250, 0x00C0_0C1E);
        assert_eq!(decode::<WaitRequest>(request.as_bytes()), Ok(request));
        assert_eq!(
            decode::<WaitRequest>(&request.as_bytes()[..8]),
            Err(RequestError::BufferTooSmall)
        );
        let old = WaitRequest { version: 2, ..request };
        assert_eq!(decode::<WaitRequest>(old.as_bytes()), Err(RequestError::InvalidParameter));
    }

    #[test]
    fn signal_scopes_and_outcomes_round_trip() {
        for scope in [SignalScope::All, SignalScope::Caller] {
            assert_eq!(SignalRequest::new(scope).scope(), Some(scope));
        }
        assert_eq!(SignalRequest { version: PROTOCOL_VERSION, scope: 0 }.scope(), None);
        assert_eq!(SignalRequest { version: PROTOCOL_VERSION, scope: 3 }.scope(), None);
        for outcome in [WaitOutcome::Expired, WaitOutcome::Signalled, WaitOutcome::Cancelled] {
            assert_eq!(WaitOutcome::from_u32(outcome as u32), Some(outcome));
        }
        assert_eq!(WaitOutcome::from_u32(0), None);
        assert_eq!(status::name(status::CANCELLED), "STATUS_CANCELLED");
    }

    #[test]
    fn decode_accepts_exact_current_requests() {
        let request = RunRequest::new(10, 7);
        assert_eq!(decode::<RunRequest>(request.as_bytes()), Ok(request));
    }

    #[test]
    fn decode_rejects_short_long_and_wrong_version() {
        let bytes = RunRequest::new(10, 7);
        let bytes = bytes.as_bytes();
        assert_eq!(decode::<RunRequest>(&[]), Err(RequestError::BufferTooSmall));
        assert_eq!(decode::<RunRequest>(&bytes[..15]), Err(RequestError::BufferTooSmall));
        let mut long = [0u8; 17];
        long[..16].copy_from_slice(bytes);
        assert_eq!(decode::<RunRequest>(&long), Err(RequestError::InvalidParameter));
        let old = RunRequest { version: 0, ..RunRequest::new(10, 7) };
        assert_eq!(decode::<RunRequest>(old.as_bytes()), Err(RequestError::InvalidParameter));
    }

    #[test]
    fn run_bounds_are_enforced_by_is_valid() {
        assert!(!RunRequest::new(0, 1).is_valid());
        assert!(RunRequest::new(1, 1).is_valid());
        assert!(RunRequest::new(MAX_RUN_ITERATIONS, 1).is_valid());
        assert!(!RunRequest::new(MAX_RUN_ITERATIONS + 1, 1).is_valid());
        assert!(!BenchRequest::new(0).is_valid());
        assert!(!BenchRequest::new(MAX_BENCH_ITERATIONS + 1).is_valid());
    }

    #[test]
    fn checksum_is_seeded_and_iterated() {
        assert_eq!(checksum(42, 0), 42);
        assert_ne!(checksum(1, 100), checksum(2, 100));
        assert_ne!(checksum(1, 100), checksum(1, 101));
        assert_eq!(checksum(1, 2), checksum_round(checksum(1, 1), 1, &TABLE));
        // Pinned so that a change to the algorithm is a visible ABI change.
        let z = splitmix64(0);
        assert_eq!(u64::from(TABLE[0]), (z ^ (z >> 32)) & 0xFFFF_FFFF);
    }

    #[test]
    fn section_names_drop_padding() {
        let s = SectionState { name: *b"PAGELK\0\0", ..SectionState::default() };
        assert_eq!(s.name(), "PAGELK");
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let run = decode::<RunRequest>(&bytes);
            let bench = decode::<BenchRequest>(&bytes);
            if bytes.len() < 16 { proptest::prop_assert_eq!(run, Err(RequestError::BufferTooSmall)); }
            if bytes.len() > 16 { proptest::prop_assert_eq!(run, Err(RequestError::InvalidParameter)); }
            if let Ok(r) = run { proptest::prop_assert_eq!(r.version, PROTOCOL_VERSION); }
            if let Ok(b) = bench { proptest::prop_assert_eq!(b.version, PROTOCOL_VERSION); }
        }
    }
}
