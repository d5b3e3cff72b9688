//! bench: `BENCH` measures both lock paths; the ratio is a note, not a check.

use pagelock_protocol::BenchRequest;

use crate::client::Session;
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::{Scenario, Verdict};

/// `BENCH` returns non-zero tick counts and frequency and balances its locks; the ratio of the
/// two paths is a note, not a check.
pub fn bench<D: Device + ?Sized>(device: &D) -> Verdict {
    const ITERATIONS: u32 = 1000;
    scenario(Scenario::Bench, device, |r, device| {
        let session = r.require("open a handle", Session::open(device))?;
        let before = r.require("QUERY_STATE", settled(&session, 1))?;
        let reply = r.require(
            format!("BENCH with {ITERATIONS} iterations"),
            session.bench(&BenchRequest::new(ITERATIONS)),
        )?;
        r.eq("iterations timed", ITERATIONS, reply.iterations);
        r.check("lock-by-address ticks", "> 0", reply.by_address_ticks, reply.by_address_ticks > 0);
        r.check("lock-by-handle ticks", "> 0", reply.by_handle_ticks, reply.by_handle_ticks > 0);
        r.check("performance-counter frequency", "> 0", reply.frequency, reply.frequency > 0);
        let after = r.require("QUERY_STATE", session.query())?;
        r.lock_counts("after BENCH", &after, lock_counts(&before)[0]);
        let n = u64::from(ITERATIONS);
        r.eq(
            "lock-by-address calls",
            before.lock_by_address_calls + n,
            after.lock_by_address_calls,
        );
        r.eq("lock-by-handle calls", before.lock_by_handle_calls + n, after.lock_by_handle_calls);
        r.eq("unlock calls", before.unlock_calls + 2 * n, after.unlock_calls);
        if reply.by_handle_ticks > 0 {
            r.notes.push(format!(
                "lock by address / lock by handle = {:.1} ({} / {} ticks, {} pairs each)",
                crate::report::ratio(reply.by_address_ticks, reply.by_handle_ticks),
                reply.by_address_ticks,
                reply.by_handle_ticks,
                reply.iterations,
            ));
        }
        session.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn fails_when_the_ticks_are_zero() {
        let verdict = bench(&Model::with(Fault::ZeroTicks));
        assert_eq!(verdict.failures().count(), 2);
    }

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol_and_notes_the_ratio() {
        let good = bench(&Model::correct());
        assert!(good.passed());
        assert_eq!(good.notes.len(), 1);
        assert!(
            good.notes[0].starts_with("lock by address / lock by handle = 13.7"),
            "{}",
            good.notes[0]
        );
    }
}
