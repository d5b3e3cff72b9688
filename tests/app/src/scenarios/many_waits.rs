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

/// The waits one thread queued, with their cookies.
type Queued<'d, D> = Vec<(u64, PendingWait<'d, D>)>;

/// A wait's cookie: its handle and its number there.
const fn cookie(handle: u32, n: u32) -> u64 {
    (handle as u64) << 32 | n as u64
}

/// Waits queued from many threads over many handles, up to the driver's limit.
///
/// Eight threads each queue four long waits on a handle of their own, at once; the first
/// handle then fills the driver's queue to [`MAX_PENDING`], and one wait more is refused with
/// `STATUS_INVALID_DEVICE_STATE`. A `SIGNAL` of the caller's waits on each handle ends exactly
/// that handle's, each with its cookie and a count of its own; every handle holds one pair of
/// locks throughout, and the counts come back when they close.
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
        let queued: Vec<Mutex<Queued<'_, D>>> = handles.iter().map(|_| Mutex::default()).collect();
        let failures = Mutex::new(Vec::new());
        device.concurrently(handles.len(), &|thread| {
            let n = u32::try_from(thread).unwrap_or(u32::MAX);
            for k in 0..PER_HANDLE {
                match handles[thread].start_wait(&long(cookie(n, k))) {
                    Ok(wait) => queued[thread]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((cookie(n, k), wait)),
                    Err(error) => failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("handle #{n}, wait {k}: {error}")),
                }
            }
        });
        let failures = failures.into_inner().unwrap_or_else(PoisonError::into_inner);
        r.eq(
            "waits that could not be sent",
            "none".to_owned(),
            failures.first().cloned().unwrap_or_else(|| "none".to_owned()),
        );
        let extra = MAX_PENDING - HANDLES * PER_HANDLE;
        let mut first = queued[0].lock().unwrap_or_else(PoisonError::into_inner);
        for k in PER_HANDLE..PER_HANDLE + extra {
            first.push((cookie(0, k), handles[0].start_wait(&long(cookie(0, k)))?));
        }
        drop(first);
        let refused = handles[0].start_wait(&long(cookie(0, 999)))?.finish();
        r.eq(
            format!("a wait past the limit of {MAX_PENDING}"),
            status_text(status::INVALID_DEVICE_STATE),
            wait_end(&refused),
        );
        let state = r.require("QUERY_STATE with the queue full", probe.query())?;
        r.lock_counts("with the queue full", &state, held + HANDLES);
        let mut counts = Vec::new();
        for (n, (handle, waits)) in handles.iter().zip(queued).enumerate() {
            let waits = waits.into_inner().unwrap_or_else(PoisonError::into_inner);
            let what = format!("SIGNAL of handle #{n}'s waits");
            let reply = r.require(what.clone(), handle.signal(SignalScope::Caller))?;
            let expected = u32::try_from(waits.len()).unwrap_or(u32::MAX);
            r.eq(format!("waits {what} completed"), expected, reply.completed);
            let mut wrong = Vec::new();
            for (cookie, wait) in waits {
                let end = wait.finish();
                let seen = wait_end(&end);
                if seen != ended("signalled", cookie) {
                    wrong.push(format!("{cookie:#x}: {seen}"));
                }
                counts.extend(end.ok().map(|reply| reply.completed_waits));
            }
            r.eq(
                format!("handle #{n}'s waits that did not end signalled"),
                "none".to_owned(),
                wrong.first().cloned().unwrap_or_else(|| "none".to_owned()),
            );
        }
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
