//! shared-handle: threads on one overlapped handle, several requests of it in the driver at
//! once, keep every count exact.

use pagelock_protocol::{self as protocol, DISPATCH_LEVEL, RunRequest};

use crate::client::Session;
use crate::device::Device;

use super::recorder::scenario;
use super::state::{lock_counts, settled};
use super::{Scenario, Verdict};

/// Threads on one handle opened for overlapped I/O, several requests of it in the driver at once.
///
/// The I/O manager lets them in together; every `LOCK`, `RUN_LOCKED` and `UNLOCK` succeeds,
/// each run is counted, and the counts end where they began.
pub fn shared_handle<D: Device + ?Sized>(device: &D) -> Verdict {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 25;
    scenario(Scenario::SharedHandle, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let shared =
            r.require("open a handle for overlapped I/O", Session::open_overlapped(device))?;
        let succeeded = std::sync::atomic::AtomicU64::new(0);
        let first_failure = std::sync::Mutex::new(None::<String>);
        device.concurrently(THREADS, &|thread| {
            for round in 0..ROUNDS {
                let seed = (thread as u64) << 32 | round;
                let run = shared.lock().and_then(|_| shared.run_locked(&RunRequest::new(16, seed)));
                let outcome = match run {
                    Ok(reply)
                        if reply.checksum == protocol::checksum(seed, 16)
                            && reply.irql == DISPATCH_LEVEL =>
                    {
                        shared.unlock().map(|_| ()).map_err(|f| f.to_string())
                    }
                    Ok(reply) => Err(format!("RUN_LOCKED replied {reply:?}")),
                    Err(failure) => Err(failure.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(why) => {
                        first_failure
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(format!("thread {thread}, round {round}: {why}"));
                    }
                }
            }
        });
        let failure = first_failure.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.eq("first failed round", "none".to_owned(), failure.unwrap_or_else(|| "none".to_owned()));
        let rounds = THREADS as u64 * ROUNDS;
        r.eq("rounds of LOCK, RUN_LOCKED, UNLOCK that succeeded", rounds, succeeded.into_inner());
        let end = r.require("QUERY_STATE on the shared handle", shared.query())?;
        r.eq("extra locks the shared handle holds afterwards", 0, end.caller_extra_locks);
        r.eq("runs counted", base.runs + rounds, end.runs);
        r.lock_counts("with the shared handle open", &end, lock_counts(&base)[0] + 1);
        shared.close()?;
        let after = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.lock_counts("after the shared handle closed", &after, lock_counts(&base)[0]);
        probe.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};
    use crate::scenarios::{nested_locks, render};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = shared_handle(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_concurrent_unlocks_release_too_much() {
        let verdict = shared_handle(&Model::with(Fault::SharedHandleUnlocksTwice));
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what.contains("locks on")),
            "{}",
            render(&[verdict], true)
        );
        // The other scenarios use no overlapped handle and still pass against it.
        assert!(nested_locks(&Model::with(Fault::SharedHandleUnlocksTwice)).passed());
    }
}
