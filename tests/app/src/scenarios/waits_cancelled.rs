//! waits-cancelled: `CancelIoEx` ends the handle's queued waits as cancelled, and only them.

use pagelock_protocol::SignalScope;

use crate::client::{Session, wait_end};
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::waits::{ended, long};
use super::{Scenario, Verdict};

/// `CancelIoEx` ends the handle's queued waits as cancelled, and only them.
///
/// Three long waits on one handle and one on another: cancelling the first handle's requests
/// ends its three with `STATUS_CANCELLED` and leaves the other's queued (a `SIGNAL` of that
/// handle's waits ends it, as signalled); the cancelled handle takes waits again, a cancel with
/// nothing in flight changes nothing, and no lock moves.
pub fn waits_cancelled<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::WaitsCancelled, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = lock_counts(&base)[0];
        let handle =
            r.require("open a handle for overlapped I/O", Session::open_overlapped(device))?;
        let other =
            r.require("open another handle for overlapped I/O", Session::open_overlapped(device))?;
        let mut waits = Vec::new();
        for cookie in 1..4 {
            waits.push((cookie, handle.start_wait(&long(cookie))?));
        }
        let untouched = other.start_wait(&long(9))?;
        handle.cancel()?;
        for (cookie, wait) in waits {
            r.eq(
                format!("wait {cookie} after CancelIoEx"),
                "cancelled".to_owned(),
                wait_end(&wait.finish()),
            );
        }
        let reply =
            r.require("SIGNAL of the other handle's waits", other.signal(SignalScope::Caller))?;
        r.eq("waits still queued on the other handle after the cancel", 1, reply.completed);
        r.eq("the other handle's wait", ended("signalled", 9), wait_end(&untouched.finish()));
        let again = handle.start_wait(&long(4))?;
        let reply = r.require(
            "SIGNAL of the cancelled handle's waits",
            handle.signal(SignalScope::Caller),
        )?;
        r.eq("waits queued on the cancelled handle afterwards", 1, reply.completed);
        r.eq("a wait sent after the cancel", ended("signalled", 4), wait_end(&again.finish()));
        handle.cancel()?;
        let state = r.require("QUERY_STATE", probe.query())?;
        r.lock_counts("with both handles open, after the cancels", &state, held + 2);
        handle.close()?;
        other.close()?;
        let after = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.lock_counts("after both handles closed", &after, held);
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
        let verdict = waits_cancelled(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_a_cancel_leaves_the_waits_queued() {
        let verdict = waits_cancelled(&Model::with(Fault::CancelLeavesWaitsQueued));
        assert!(!verdict.passed());
        assert!(verdict.failures().any(|c| c.what == "wait 1 after CancelIoEx"));
    }
}
