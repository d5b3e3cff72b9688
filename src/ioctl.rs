//! The IOCTL handlers: validate the buffers, act, and build the reply. A request that fails
//! changes no state; every check happens before the first change.

use core::sync::atomic::Ordering;

use pagelock_macros::paged;
use pagelock_protocol::zerocopy::IntoBytes;
use pagelock_protocol::{
    self as protocol, BenchReply, BenchRequest, LockReply, PROTOCOL_VERSION, RequestError,
    RunReply, RunRequest, SectionState, StateReply,
};

use crate::{
    kernel::{Status, status},
    open::Open,
    sections::{self, COUNTERS, LOCKABLE},
};

/// A reply ready to copy to the caller.
pub enum Reply {
    /// `QUERY_STATE`.
    State(StateReply),
    /// `RUN_LOCKED`.
    Run(RunReply),
    /// `LOCK`, `UNLOCK`.
    Lock(LockReply),
    /// `BENCH`.
    Bench(BenchReply),
}

impl Reply {
    /// The reply's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::State(r) => r.as_bytes(),
            Self::Run(r) => r.as_bytes(),
            Self::Lock(r) => r.as_bytes(),
            Self::Bench(r) => r.as_bytes(),
        }
    }
}

/// Open handles on the device.
pub static OPEN_HANDLES: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The driver's version for `QUERY_STATE`.
const DRIVER_VERSION: u32 = protocol::encode_version(0, 1, 0);

/// The status a refused request is completed with.
pub(crate) const fn refusal(error: RequestError) -> Status {
    match error {
        RequestError::BufferTooSmall => status::BUFFER_TOO_SMALL,
        RequestError::InvalidParameter => status::INVALID_PARAMETER,
    }
}

/// Fails unless the caller can take a reply of type `T`.
pub(crate) const fn reply_fits<T>(output_capacity: usize) -> Result<(), Status> {
    if output_capacity < size_of::<T>() { Err(status::BUFFER_TOO_SMALL) } else { Ok(()) }
}

/// Serves one control request on `open`. Runs at `PASSIVE_LEVEL`.
///
/// # Errors
/// The status to complete the request with; nothing was changed.
#[paged]
pub fn handle(
    open: &Open,
    code: u32,
    input: &[u8],
    output_capacity: usize,
) -> Result<Reply, Status> {
    match code {
        protocol::IOCTL_QUERY_STATE => {
            reply_fits::<StateReply>(output_capacity)?;
            protocol::expect_no_input(input).map_err(refusal)?;
            Ok(Reply::State(query_state(open)))
        }
        protocol::IOCTL_RUN_LOCKED => {
            reply_fits::<RunReply>(output_capacity)?;
            let request = protocol::decode::<RunRequest>(input).map_err(refusal)?;
            if !request.is_valid() {
                return Err(status::INVALID_PARAMETER);
            }
            let (checksum, irql) = crate::work::run_locked(request.seed, request.iterations);
            Ok(Reply::Run(RunReply { version: PROTOCOL_VERSION, irql: u32::from(irql), checksum }))
        }
        protocol::IOCTL_LOCK | protocol::IOCTL_UNLOCK => {
            reply_fits::<LockReply>(output_capacity)?;
            protocol::expect_no_input(input).map_err(refusal)?;
            let extra = if code == protocol::IOCTL_LOCK {
                open.lock_extra()?
            } else {
                open.unlock_extra()?
            };
            Ok(Reply::Lock(LockReply { version: PROTOCOL_VERSION, extra_locks: extra }))
        }
        protocol::IOCTL_BENCH => {
            reply_fits::<BenchReply>(output_capacity)?;
            let request = protocol::decode::<BenchRequest>(input).map_err(refusal)?;
            if !request.is_valid() {
                return Err(status::INVALID_PARAMETER);
            }
            bench(request.iterations)
        }
        _ => Err(status::INVALID_DEVICE_REQUEST),
    }
}

/// `QUERY_STATE`: counts and sizes, never an address or handle value.
#[paged]
fn query_state(open: &Open) -> StateReply {
    // Read once, so that the held and extra counts of one reply agree.
    let held = open.held();
    let mut sections = [SectionState::default(); protocol::SECTION_COUNT];
    for (state, section) in sections.iter_mut().zip(&LOCKABLE) {
        *state = SectionState {
            name: section.name(),
            size: section.size(),
            lock_count: section.lock_count(),
            held_by_caller: held,
            reserved: 0,
        };
    }
    StateReply {
        version: PROTOCOL_VERSION,
        driver_version: DRIVER_VERSION,
        open_handles: OPEN_HANDLES.load(Ordering::SeqCst),
        caller_extra_locks: held.saturating_sub(1),
        sections,
        lock_by_address_calls: COUNTERS.lock_by_address.load(Ordering::Relaxed),
        lock_by_handle_calls: COUNTERS.lock_by_handle.load(Ordering::Relaxed),
        unlock_calls: COUNTERS.unlock.load(Ordering::Relaxed),
        runs: crate::work::runs(),
    }
}

/// `BENCH`: `iterations` lock-by-address + unlock pairs against as many lock-by-handle +
/// unlock pairs on the data section, timed with the performance counter.
#[paged]
fn bench(iterations: u32) -> Result<Reply, Status> {
    let section = &sections::PAGED_DATA;
    if section.handle().is_none() {
        return Err(status::INVALID_DEVICE_STATE);
    }
    let (start, frequency) = crate::kernel::performance_counter();
    for _ in 0..iterations {
        // The expensive path, measured on purpose; this is the only call after load.
        if let Some(locked) = section.lock_by_address() {
            section.unlock(locked);
        }
    }
    let (middle, _) = crate::kernel::performance_counter();
    for _ in 0..iterations {
        if !section.lock_by_handle() {
            return Err(status::INVALID_DEVICE_STATE);
        }
        section.unlock_held();
    }
    let (end, _) = crate::kernel::performance_counter();
    Ok(Reply::Bench(BenchReply {
        version: PROTOCOL_VERSION,
        iterations,
        by_address_ticks: middle - start,
        by_handle_ticks: end - middle,
        frequency,
    }))
}
