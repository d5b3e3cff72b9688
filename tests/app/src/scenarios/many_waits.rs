//! many-waits: waits queued from many threads over many handles, up to the driver's limit.

use std::sync::{Mutex, PoisonError};

use pagelock_protocol::{MAX_PENDING, SignalScope, status};

use crate::client::{PendingWait, Session, wait_end};
use crate::device::Device;
use crate::errors::status_text;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::waits::{ended, long};
use super::{Scenario, Verdict};

/// Handles the waits are spread over, one thread each.
const HANDLES: u32 = 8;
/// Waits each thread queues on its handle.
const PER_HANDLE: u32 = 4;

/// A wait's cookie: its handle and its number there.
const fn cookie(handle: u32, n: u32) -> u64 {
    (handle as u64) << 32 | n as u64
}

/// Waits queued from many threads over many handles, up to the driver's limit.
///
/// The querying thread first fills the driver's queue to [`MAX_PENDING`] on one handle; one
/// wait more is refused with `STATUS_INVALID_DEVICE_STATE`, and a `SIGNAL` of that handle's
/// waits ends them all. Then eight threads, each on a handle of its own, queue four long waits,
/// send a `SIGNAL` of their own handle's waits, and wait for theirs, at once: each `SIGNAL` ends
/// exactly its handle's four, each wait ends signalled with its cookie and a count of its own.
/// Every handle holds one pair of locks throughout, and the counts come back when they close.
///
/// Each thread waits for the waits it sent: a thread's requests are cancelled when it exits.
pub fn many_waits<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::ManyWaits, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = lock_counts(&base)[0];
        let mut handles = Vec::new();
        for n in 0..HANDLES {
            let what = format!("open handle #{n} for overlapped I/O");
            handles.push(r.require(what, Session::open_overlapped(device))?);
        }
        // The queue filled to its limit, from this thread.
        let mut full = Vec::new();
        for k in 0..MAX_PENDING {
            full.push((cookie(0, k), handles[0].start_wait(&long(cookie(0, k)))?));
        }
        let refused = handles[0].start_wait(&long(cookie(0, MAX_PENDING)))?.finish();
        r.eq(
            format!("a wait past the limit of {MAX_PENDING}"),
            status_text(status::INVALID_DEVICE_STATE),
            wait_end(&refused),
        );
        let state = r.require("QUERY_STATE with the queue full", probe.query())?;
        r.lock_counts("with the queue full", &state, held + HANDLES);
        let reply =
            r.require("SIGNAL of the full handle's waits", handles[0].signal(SignalScope::Caller))?;
        r.eq("waits the SIGNAL of the full handle's waits completed", MAX_PENDING, reply.completed);
        let wrong: Vec<_> = full
            .into_iter()
            .filter_map(|(cookie, wait)| {
                let seen = wait_end(&wait.finish());
                (seen != ended("signalled", cookie)).then(|| format!("{cookie:#x}: {seen}"))
            })
            .collect();
        r.eq(
            "waits of the full queue that did not end signalled",
            "none".to_owned(),
            first(&wrong),
        );
        // Then from many threads at once, each on its own handle.
        let outcomes = Mutex::new(Vec::new());
        device.concurrently(handles.len(), &|thread| {
            let outcome = queue_signal_and_wait(&handles[thread], thread);
            outcomes.lock().unwrap_or_else(PoisonError::into_inner).push(outcome);
        });
        let outcomes = outcomes.into_inner().unwrap_or_else(PoisonError::into_inner);
        let problems: Vec<_> = outcomes.iter().flat_map(|o| o.problems.iter().cloned()).collect();
        r.eq(
            "what went wrong on the threads",
            "nothing".to_owned(),
            problems.first().cloned().unwrap_or_else(|| "nothing".to_owned()),
        );
        let mut counts: Vec<u64> = outcomes.iter().flat_map(|o| o.counts.iter().copied()).collect();
        r.eq(
            "waits the threads saw signalled",
            HANDLES * PER_HANDLE,
            u32::try_from(counts.len()).unwrap_or(u32::MAX),
        );
        let total = counts.len();
        counts.sort_unstable();
        counts.dedup();
        r.eq("waits that each got a completion count of their own", total, counts.len());
        for handle in handles {
            handle.close()?;
        }
        let after = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.lock_counts("after every handle closed", &after, held);
        probe.close()?;
        Ok(())
    })
}

/// The first of `problems`, or `none`.
fn first(problems: &[String]) -> String {
    problems.first().cloned().unwrap_or_else(|| "none".to_owned())
}

/// What one thread saw: the completion counts of its signalled waits, and what went wrong.
struct Outcome {
    counts: Vec<u64>,
    problems: Vec<String>,
}

/// One thread's part: [`PER_HANDLE`] long waits on `session`, a `SIGNAL` of its waits, then
/// each wait finished.
fn queue_signal_and_wait<D: Device + ?Sized>(session: &Session<'_, D>, thread: usize) -> Outcome {
    let n = u32::try_from(thread).unwrap_or(u32::MAX);
    let mut outcome = Outcome { counts: Vec::new(), problems: Vec::new() };
    let mut waits: Vec<(u64, PendingWait<'_, D>)> = Vec::new();
    for k in 0..PER_HANDLE {
        match session.start_wait(&long(cookie(n, k))) {
            Ok(wait) => waits.push((cookie(n, k), wait)),
            Err(error) => outcome.problems.push(format!("handle #{n}, wait {k}: {error}")),
        }
    }
    match session.signal(SignalScope::Caller) {
        Ok(reply) if reply.completed == PER_HANDLE => {}
        Ok(reply) => outcome.problems.push(format!(
            "handle #{n}: its SIGNAL completed {} waits, not {PER_HANDLE}",
            reply.completed
        )),
        Err(failure) => outcome.problems.push(format!("handle #{n}: SIGNAL: {failure}")),
    }
    for (cookie, wait) in waits {
        match wait.finish() {
            Ok(reply) if wait_end(&Ok(reply)) == ended("signalled", cookie) => {
                outcome.counts.push(reply.completed_waits);
            }
            end => outcome.problems.push(format!("wait {cookie:#x}: {}", wait_end(&end))),
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = many_waits(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_the_queue_has_no_limit() {
        let verdict = many_waits(&Model::with(Fault::NoPendingLimit));
        assert!(!verdict.passed());
        assert!(verdict.failures().any(|c| c.what.starts_with("a wait past the limit")));
    }
}
