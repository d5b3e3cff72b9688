//! close-with-waits: closing a handle with waits queued cancels them before its locks go.

use pagelock_protocol::SignalScope;

use crate::client::{Session, wait_end};
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::waits::long;
use super::{Scenario, Verdict};

/// Closing a handle with waits queued cancels them, and its locks go.
///
/// Waits queued on a handle take no lock of their own; closing the handle with them queued
/// (`IRP_MJ_CLEANUP`, then `IRP_MJ_CLOSE`) ends every one with `STATUS_CANCELLED`, the handle's
/// locks go, and nothing of it is left queued.
pub fn close_with_waits<D: Device + ?Sized>(device: &D) -> Verdict {
    const WAITS: u64 = 4;
    scenario(Scenario::CloseWithWaits, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = lock_counts(&base)[0];
        let handle =
            r.require("open a handle for overlapped I/O", Session::open_overlapped(device))?;
        let mut waits = Vec::new();
        for cookie in 1..=WAITS {
            waits.push((cookie, handle.start_wait(&long(cookie))?));
        }
        let state = r.require("QUERY_STATE with the waits queued", probe.query())?;
        r.lock_counts(&format!("with {WAITS} waits queued on one handle"), &state, held + 1);
        r.eq("open handles with the waits queued", base.open_handles + 1, state.open_handles);
        handle.close()?;
        for (cookie, wait) in waits {
            let end = wait_end(&wait.finish());
            r.eq(format!("wait {cookie} after its handle closed"), "cancelled".to_owned(), end);
        }
        let after = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.lock_counts("after the handle closed", &after, held);
        r.eq("open handles after the close", base.open_handles, after.open_handles);
        let reply = r.require("SIGNAL of every handle's waits", probe.signal(SignalScope::All))?;
        r.eq("waits left queued after the close", 0, reply.completed);
        probe.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = close_with_waits(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_cleanup_leaves_the_waits_queued() {
        let verdict = close_with_waits(&Model::with(Fault::CloseLeavesWaitsQueued));
        assert!(!verdict.passed());
        assert!(verdict.failures().any(|c| c.what == "wait 1 after its handle closed"));
    }
}
