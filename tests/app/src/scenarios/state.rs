//! Reading the driver's state between checks: counts that wait for closes to arrive, and what
//! changed between two replies.

use std::time::{Duration, Instant};

use pagelock_protocol::{SECTION_COUNT, StateReply};

use crate::client::{Failure, Session};
use crate::device::Device;

/// How long the counts may take to settle after a close.
///
/// `CloseHandle` can return before the driver's `IRP_MJ_CLOSE` has run: Windows sends close
/// when the last reference to the file object goes, which can be later, in a worker thread
/// (`ObDereferenceObjectDeferDelete`), and Wine 8 delivers it asynchronously (seen there:
/// run-locked's starting counts included a handle nested-locks had just closed). So a query
/// whose counts depend on earlier closes waits, up to this bound, until the driver counts no
/// more open handles than expected. The driver releases a handle's locks before it stops
/// counting the handle, so the lock counts have settled by then too. A close that never arrives
/// still fails the checks, after the bound; the test bed closes synchronously, so there the
/// wait is one query.
pub const CLOSE_SETTLE: Duration = Duration::from_secs(2);

/// `QUERY_STATE` on `probe`, repeated until at most `open_handles` handles are counted or
/// [`CLOSE_SETTLE`] has passed; the last state.
///
/// # Errors
/// When a query fails.
pub fn settled<D: Device + ?Sized>(
    probe: &Session<'_, D>,
    open_handles: u32,
) -> Result<StateReply, Failure> {
    let start = Instant::now();
    loop {
        let state = probe.query()?;
        if state.open_handles <= open_handles || start.elapsed() >= CLOSE_SETTLE {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Each section's lock count, in report order.
pub(super) fn lock_counts(state: &StateReply) -> [u32; SECTION_COUNT] {
    state.sections.map(|section| section.lock_count)
}

/// What changed between two states, field by field; empty when nothing did.
#[must_use]
pub fn state_changes(before: &StateReply, after: &StateReply) -> Vec<String> {
    let mut changes = Vec::new();
    let mut field = |name: &str, a: u64, b: u64| {
        if a != b {
            changes.push(format!("{name} {a} -> {b}"));
        }
    };
    field("version", before.version.into(), after.version.into());
    field("driver_version", before.driver_version.into(), after.driver_version.into());
    field("open_handles", before.open_handles.into(), after.open_handles.into());
    field("caller_extra_locks", before.caller_extra_locks.into(), after.caller_extra_locks.into());
    for (a, b) in before.sections.iter().zip(&after.sections) {
        let name = a.name();
        field(&format!("{name}.size"), a.size.into(), b.size.into());
        field(&format!("{name}.lock_count"), a.lock_count.into(), b.lock_count.into());
        field(&format!("{name}.held_by_caller"), a.held_by_caller.into(), b.held_by_caller.into());
    }
    field("lock_by_address_calls", before.lock_by_address_calls, after.lock_by_address_calls);
    field("lock_by_handle_calls", before.lock_by_handle_calls, after.lock_by_handle_calls);
    field("unlock_calls", before.unlock_calls, after.unlock_calls);
    field("runs", before.runs, after.runs);
    if changes.is_empty() && before.sections.map(|s| s.name) != after.sections.map(|s| s.name) {
        changes.push("section names".to_owned());
    }
    changes
}

pub(super) fn describe_changes(changes: &[String]) -> String {
    if changes.is_empty() { "no change".to_owned() } else { changes.join(", ") }
}
