//! run-locked: `RUN_LOCKED` returns the predicted checksum at `DISPATCH_LEVEL`.

use std::fmt::{self, Display};

use pagelock_protocol::zerocopy::IntoBytes;
use pagelock_protocol::{self as protocol, DISPATCH_LEVEL, MAX_RUN_ITERATIONS, RunRequest};

use crate::client::Session;
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::{Scenario, Verdict};

/// `RUN_LOCKED` returns the checksum `pagelock_protocol::checksum` predicts, at
/// `DISPATCH_LEVEL`, counts each run, and leaves the lock counts as they were.
pub fn run_locked<D: Device + ?Sized>(device: &D) -> Verdict {
    const REQUESTS: [(u64, u32); 4] =
        [(0, 1), (0x0123_4567_89AB_CDEF, 1000), (u64::MAX, MAX_RUN_ITERATIONS), (0x5EED, 257)];
    scenario(Scenario::RunLocked, device, |r, device| {
        let session = r.require("open a handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&session, 1))?;
        for (seed, iterations) in REQUESTS {
            let request = RunRequest::new(iterations, seed);
            let context = format!("RUN_LOCKED seed {seed:#x}, {iterations} rounds");
            let reply = r.require(context.clone(), session.run_locked(&request))?;
            r.eq(
                format!("{context}: checksum"),
                Hex(protocol::checksum(seed, iterations)),
                Hex(reply.checksum),
            );
            r.eq(format!("{context}: IRQL"), DISPATCH_LEVEL, reply.irql);
        }
        // A larger output buffer than the reply is fine; the reply is still exactly its size.
        let reply =
            session.raw(protocol::IOCTL_RUN_LOCKED, RunRequest::new(3, 9).as_bytes(), 64)?;
        let run = r.require(
            "RUN_LOCKED with a larger output buffer",
            crate::client::decode::<protocol::RunReply>(&reply),
        )?;
        r.eq(
            "RUN_LOCKED with a larger output buffer: reply length",
            size_of::<protocol::RunReply>(),
            reply.output.len(),
        );
        r.eq(
            "RUN_LOCKED with a larger output buffer: checksum",
            Hex(protocol::checksum(9, 3)),
            Hex(run.checksum),
        );
        let end = r.require("QUERY_STATE", session.query())?;
        r.eq("runs counted", base.runs + REQUESTS.len() as u64 + 1, end.runs);
        r.lock_counts("after the runs", &end, lock_counts(&base)[0]);
        session.close()?;
        Ok(())
    })
}

/// A value printed in hexadecimal.
#[derive(PartialEq, Eq)]
struct Hex(u64);

impl Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = run_locked(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_the_checksum_is_wrong() {
        let wrong = run_locked(&Model::with(Fault::WrongChecksum));
        assert!(wrong.failures().any(|c| c.what.ends_with("checksum")));
    }

    #[test]
    fn fails_when_it_runs_below_dispatch_level() {
        let passive = run_locked(&Model::with(Fault::RunsAtPassive));
        assert!(passive.failures().all(|c| c.what.ends_with("IRQL")));
        assert!(!passive.passed());
    }
}
