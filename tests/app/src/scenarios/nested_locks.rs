//! nested-locks: `LOCK` and `UNLOCK` balance, refuse past their limits, and close releases
//! them all.

use pagelock_protocol::{self as protocol, MAX_EXTRA_LOCKS, SECTION_COUNT, status};

use crate::client::{Failure, Session};
use crate::device::Device;
use crate::errors::status_text;

use super::recorder::{Recorder, Stop, reply_text, scenario, summarize};
use super::state::{describe_changes, lock_counts, settled, state_changes};
use super::{Scenario, Verdict};

/// `LOCK` and `UNLOCK` balance; `UNLOCK` with nothing extra held and `LOCK` at the limit are
/// refused and change nothing; closing a handle with extra locks held releases them all.
pub fn nested_locks<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::NestedLocks, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let worker = r.require("open the locking handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 2))?;
        let idle = lock_counts(&base)[0];

        refused_unchanged(
            r,
            &probe,
            &worker,
            "UNLOCK with no extra lock held",
            protocol::IOCTL_UNLOCK,
            status::INVALID_DEVICE_STATE,
        )?;

        // A larger output buffer than the reply is fine; the reply is still exactly its size.
        let reply = worker.raw(protocol::IOCTL_LOCK, &[], 64)?;
        let lock = r.require(
            "LOCK with a larger output buffer",
            crate::client::decode::<protocol::LockReply>(&reply),
        )?;
        r.eq(
            "LOCK with a larger output buffer: reply length",
            size_of::<protocol::LockReply>(),
            reply.output.len(),
        );
        r.eq("first LOCK: extra locks", 1, lock.extra_locks);
        for n in 2..=3 {
            let lock = r.require(format!("LOCK #{n}"), worker.lock())?;
            r.eq(format!("LOCK #{n}: extra locks"), n, lock.extra_locks);
        }
        let own = r.require("QUERY_STATE on the locking handle", worker.query())?;
        r.held("3 extra locks", &own, 4);
        r.eq("3 extra locks: extra locks of the locking handle", 3, own.caller_extra_locks);
        let state = r.require("QUERY_STATE", probe.query())?;
        r.lock_counts("3 extra locks", &state, idle + 3);
        let unlock = r.require("UNLOCK", worker.unlock())?;
        r.eq("UNLOCK: extra locks", 2, unlock.extra_locks);
        let state = r.require("QUERY_STATE", probe.query())?;
        r.lock_counts("2 extra locks", &state, idle + 2);

        to_the_limit_and_back(r, &probe, &worker, idle)?;

        // Closing with extra locks held releases them with the handle's own.
        for n in 1..=5 {
            r.require(format!("LOCK #{n} before closing"), worker.lock())?;
        }
        let before = r.require("QUERY_STATE", probe.query())?;
        r.lock_counts("5 extra locks before closing", &before, idle + 5);
        worker.close()?;
        let after =
            r.require("QUERY_STATE", settled(&probe, before.open_handles.saturating_sub(1)))?;
        r.lock_counts("closed with 5 extra locks", &after, idle - 1);
        r.eq(
            "closed with 5 extra locks: unlock calls",
            before.unlock_calls + 6 * SECTION_COUNT as u64,
            after.unlock_calls,
        );
        r.held(
            "closed with 5 extra locks, querying handle",
            &after,
            base.sections[0].held_by_caller,
        );
        probe.close()?;
        Ok(())
    })
}

/// `LOCK` up to the limit one at a time, one more (refused), then `UNLOCK` down to none and one
/// more (refused); the worker starts with 2 extra locks.
fn to_the_limit_and_back<D: Device + ?Sized>(
    r: &mut Recorder,
    probe: &Session<'_, D>,
    worker: &Session<'_, D>,
    idle: u32,
) -> Result<(), Stop> {
    // Up to the limit, one at a time, then one more.
    let mut sequence = Vec::new();
    for _ in 3..=MAX_EXTRA_LOCKS {
        match worker.lock() {
            Ok(reply) => sequence.push(reply.extra_locks),
            Err(Failure::Transport(error)) => return Err(error.into()),
            Err(failure) => {
                r.check(
                    format!("LOCK up to {MAX_EXTRA_LOCKS} extra locks"),
                    "success",
                    &failure,
                    false,
                );
                return Err(Stop::Failed);
            }
        }
    }
    let expected: Vec<u32> = (3..=MAX_EXTRA_LOCKS).collect();
    r.check(
        format!("LOCK up to {MAX_EXTRA_LOCKS} extra locks: extra locks after each"),
        format!("3, 4, ... {MAX_EXTRA_LOCKS}"),
        summarize(&sequence),
        sequence == expected,
    );
    let state = r.require("QUERY_STATE", probe.query())?;
    r.lock_counts("at the limit", &state, idle + MAX_EXTRA_LOCKS);
    refused_unchanged(
        r,
        probe,
        worker,
        "LOCK at the limit",
        protocol::IOCTL_LOCK,
        status::INVALID_DEVICE_STATE,
    )?;

    // Back down to none, then one UNLOCK too many.
    let mut sequence = Vec::new();
    for _ in 0..MAX_EXTRA_LOCKS {
        match worker.unlock() {
            Ok(reply) => sequence.push(reply.extra_locks),
            Err(Failure::Transport(error)) => return Err(error.into()),
            Err(failure) => {
                r.check("UNLOCK down to no extra lock", "success", &failure, false);
                return Err(Stop::Failed);
            }
        }
    }
    let expected: Vec<u32> = (0..MAX_EXTRA_LOCKS).rev().collect();
    r.check(
        "UNLOCK down to no extra lock: extra locks after each",
        format!("{} ... 1, 0", MAX_EXTRA_LOCKS - 1),
        summarize(&sequence),
        sequence == expected,
    );
    let state = r.require("QUERY_STATE", probe.query())?;
    r.lock_counts("no extra lock again", &state, idle);
    refused_unchanged(
        r,
        probe,
        worker,
        "UNLOCK after the last extra lock",
        protocol::IOCTL_UNLOCK,
        status::INVALID_DEVICE_STATE,
    )?;

    Ok(())
}

/// Sends a request that must be refused with `expected`, and checks that nothing changed.
fn refused_unchanged<D: Device + ?Sized>(
    r: &mut Recorder,
    probe: &Session<'_, D>,
    sender: &Session<'_, D>,
    what: &str,
    code: u32,
    expected: i32,
) -> Result<(), Stop> {
    let before = r.require("QUERY_STATE", probe.query())?;
    let reply = sender.raw(code, &[], 64)?;
    r.check(
        format!("{what}: status"),
        status_text(expected),
        reply_text(reply.status, reply.output.len()),
        reply.status == expected && reply.output.is_empty(),
    );
    let after = r.require("QUERY_STATE", probe.query())?;
    r.eq(
        format!("{what}: state"),
        "no change".to_owned(),
        describe_changes(&state_changes(&before, &after)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = nested_locks(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_unlock_goes_below_zero() {
        let verdict = nested_locks(&Model::with(Fault::UnlockWithoutLock));
        assert!(!verdict.passed());
        let failure = verdict.failures().next().expect("a failed check");
        assert_eq!(failure.what, "UNLOCK with no extra lock held: status");
        assert_eq!(failure.seen, "STATUS_SUCCESS (0x00000000), 8 bytes");
    }

    #[test]
    fn fails_when_lock_has_no_limit() {
        let verdict = nested_locks(&Model::with(Fault::LockWithoutLimit));
        assert!(verdict.failures().any(|c| c.what == "LOCK at the limit: status"));
    }

    #[test]
    fn fails_when_close_keeps_extra_locks() {
        let verdict = nested_locks(&Model::with(Fault::ExtraLocksSurviveClose));
        assert!(
            verdict.failures().any(|c| c.what.starts_with("closed with 5 extra locks: locks on"))
        );
    }
}
