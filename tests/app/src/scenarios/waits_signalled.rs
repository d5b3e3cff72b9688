//! waits-signalled: `SIGNAL` ends exactly the waits its scope names, early.

use pagelock_protocol::SignalScope;

use crate::client::{Session, wait_end};
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::waits::{ended, long};
use super::{Scenario, Verdict};

/// `SIGNAL` ends exactly the waits its scope names, early.
///
/// Three long waits on handle A, two on handle B: a `SIGNAL` of the caller's waits sent on A
/// ends exactly A's three, a `SIGNAL` of every handle's sent on a third handle ends B's two,
/// each as signalled with its own cookie and counted in that order; with nothing queued a
/// `SIGNAL` ends none.
pub fn waits_signalled<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::WaitsSignalled, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = lock_counts(&base)[0];
        let a = r.require("open handle A for overlapped I/O", Session::open_overlapped(device))?;
        let b = r.require("open handle B for overlapped I/O", Session::open_overlapped(device))?;
        let mut on_a = Vec::new();
        for cookie in 10..13 {
            on_a.push((cookie, a.start_wait(&long(cookie))?));
        }
        let mut on_b = Vec::new();
        for cookie in 20..22 {
            on_b.push((cookie, b.start_wait(&long(cookie))?));
        }
        let state = r.require("QUERY_STATE with five waits queued", probe.query())?;
        r.lock_counts("with five waits queued on two handles", &state, held + 2);
        let reply = r.require("SIGNAL of A's waits, on A", a.signal(SignalScope::Caller))?;
        r.eq("waits SIGNAL of A's waits completed", 3, reply.completed);
        let mut counts_a = Vec::new();
        for (cookie, wait) in on_a {
            let end = wait.finish();
            r.eq(format!("wait {cookie} on A"), ended("signalled", cookie), wait_end(&end));
            counts_a.extend(end.ok().map(|reply| reply.completed_waits));
        }
        let reply = r.require(
            "SIGNAL of every handle's waits, on a third handle",
            probe.signal(SignalScope::All),
        )?;
        r.eq("waits SIGNAL of every handle's waits completed", 2, reply.completed);
        let mut counts_b = Vec::new();
        for (cookie, wait) in on_b {
            let end = wait.finish();
            r.eq(format!("wait {cookie} on B"), ended("signalled", cookie), wait_end(&end));
            counts_b.extend(end.ok().map(|reply| reply.completed_waits));
        }
        let (last_a, first_b) = (counts_a.iter().max(), counts_b.iter().min());
        if let (Some(last_a), Some(first_b)) = (last_a, first_b) {
            r.check(
                "completions counted in the order they happened",
                "each of A's below each of B's",
                format!("A's up to {last_a}, B's from {first_b}"),
                last_a < first_b,
            );
        }
        let reply = r.require("SIGNAL with nothing queued", probe.signal(SignalScope::All))?;
        r.eq("waits a SIGNAL with nothing queued completed", 0, reply.completed);
        a.close()?;
        b.close()?;
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
        let verdict = waits_signalled(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_a_signal_of_the_callers_waits_ends_every_handles() {
        let verdict = waits_signalled(&Model::with(Fault::SignalIgnoresScope));
        assert!(!verdict.passed());
        let failed: Vec<_> = verdict.failures().map(|c| c.what.as_str()).collect();
        assert!(failed.contains(&"waits SIGNAL of A's waits completed"), "{failed:?}");
        assert!(failed.contains(&"waits SIGNAL of every handle's waits completed"), "{failed:?}");
    }
}
