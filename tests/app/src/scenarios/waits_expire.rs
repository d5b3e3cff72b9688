//! waits-expire: a wait nothing ends expires at its timeout, and only that wait.

use pagelock_protocol::SignalScope;

use crate::client::{Session, wait_end};
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::waits::{ended, long, short};
use super::{Scenario, Verdict};

/// A wait nothing ends expires at its timeout, and only that wait.
///
/// A short wait and a long one queued on one handle: the short one expires with its own
/// cookie, the long one is still queued afterwards (a `SIGNAL` of the handle's waits completes
/// exactly it, as signalled), a short wait sent synchronously expires too, and the queued
/// waits hold no lock of their own.
pub fn waits_expire<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::WaitsExpire, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = lock_counts(&base)[0];
        let handle =
            r.require("open a handle for overlapped I/O", Session::open_overlapped(device))?;
        let kept = handle.start_wait(&long(1))?;
        let expiring = handle.start_wait(&short(2))?;
        let state = r.require("QUERY_STATE with two waits queued", probe.query())?;
        r.lock_counts("with two waits queued on one handle", &state, held + 1);
        let first = expiring.finish();
        r.eq("the short wait", ended("expired", 2), wait_end(&first));
        // Only the short wait's timeout has passed: the long one is still queued.
        let signalled = r.require(
            "SIGNAL of the handle's waits after the short one expired",
            handle.signal(SignalScope::Caller),
        )?;
        r.eq("waits still queued after the short one expired", 1, signalled.completed);
        let second = kept.finish();
        r.eq("the long wait", ended("signalled", 1), wait_end(&second));
        if let (Ok(first), Ok(second)) = (&first, &second) {
            r.check(
                "completions counted in the order they happened",
                "the short wait's count below the long one's",
                format!("{} and {}", first.completed_waits, second.completed_waits),
                first.completed_waits < second.completed_waits,
            );
        }
        let synchronous = probe.wait(&short(3));
        r.eq("a short wait sent synchronously", ended("expired", 3), wait_end(&synchronous));
        handle.close()?;
        let after = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.lock_counts("after the handle closed", &after, held);
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
        let verdict = waits_expire(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_waits_expire_before_their_timeout() {
        let verdict = waits_expire(&Model::with(Fault::WaitsExpireAtOnce));
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what == "the long wait" && c.seen.starts_with("expired"))
        );
        assert!(verdict.failures().any(|c| c.what.starts_with("waits still queued")));
    }
}
