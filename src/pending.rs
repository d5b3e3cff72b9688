//! Pending requests: `WAIT` queues its IRP in a cancel-safe queue, and four paths complete it.
//!
//! They are the timer's DPC (expired, at `DISPATCH_LEVEL`), `SIGNAL` (signalled, at
//! `PASSIVE_LEVEL`), the queue's cancel path (`CancelIoEx`, `IoCancelIrp`: cancelled, at any
//! IRQL up to `DISPATCH_LEVEL`) and `IRP_MJ_CLEANUP` (cancelled, at `PASSIVE_LEVEL`).
//!
//! # Which lock covers what
//!
//! - **Resident** (`.text`): the timer's DPC routine and [`on_tick`], the queue's
//!   complete-cancelled callback and [`on_cancelled`], [`finish`] (and in `kernel`: the lock
//!   callbacks, the peek's emptiness test, `dequeue`, `timer_stop`, `performance_counter`,
//!   `QueuedWait::complete`).
//!   The timer can fire, and a cancel can come, when no handle is open and both lockable
//!   sections may be paged out; and the code that returns from an `IoCompleteRequest` may be
//!   running after the last lock is gone. The `KTIMER`, `KDPC`, `IO_CSQ`, the list head and the
//!   queue's spin lock are resident too (`kernel`), and so are this module's counts.
//! - **`PAGELK`, covered by the handle a `WAIT` came on**: `reserve` (and `timer_start`, and
//!   the queue's insert callback) run in that `WAIT`'s dispatch routine; its IRP keeps the file
//!   object referenced, so the pair of locks the handle took in `IRP_MJ_CREATE`, released only in
//!   `IRP_MJ_CLOSE`, is held.
//! - **`PAGELK`, covered by the queued IRP being handled**: `settle` (counting in `PAGEDATA`
//!   through [`crate::work::record_wait_completion`] under the driver's spin lock, and writing
//!   the reply into the IRP) runs only for a wait taken off the queue and not yet completed: it
//!   still holds its file object, so `IRP_MJ_CLOSE` of its handle cannot have come. A lock per
//!   IRP would not do: the DPC completes at `DISPATCH_LEVEL`, where
//!   `MmUnlockPagableImageSection` may not be called.
//! - **`PAGE`**: [`check_wait`], [`wait`], [`signal`], [`cleanup`], [`stop`], at
//!   `PASSIVE_LEVEL` in a dispatch routine or unload.
//! - So the reference page's rule (no release while IRPs are outstanding) holds by construction:
//!   `IRP_MJ_CLEANUP` drains the handle's queued waits before it returns, cleanup comes before
//!   close, and a wait already taken off the queue by another path still holds its file object
//!   until that path completes it.
//! - **Nothing of `PAGELK` runs after an `IoCompleteRequest`**: the completion may let cleanup,
//!   close and the last unlock run on another processor at once. [`finish`] settles the wait in
//!   the locked sections first, then completes it, then returns through resident code only; the
//!   DPC's loop calls the locked code again only for the next IRP it holds.
//! - The DPC looks at the resident pending count first: the timer can fire with nothing queued,
//!   and then it must not touch `PAGELK`, which nothing covers.
//!
//! # The timer
//!
//! A periodic `KTIMER` of [`WAIT_TICK_MS`], armed by the `WAIT` that takes the pending count
//! from 0 to 1 and cancelled by the first tick that finds the count at 0, both under a resident
//! spin lock so that an arm and a cancel cannot cross. Unload stops arming, cancels the timer and
//! waits for a DPC already queued or running (`KeFlushQueuedDpcs`), in that order, before
//! anything is unlocked or freed.
//!
//! The ticks only say when to look; a wait's deadline is a reading of the performance counter
//! ([`deadline`]), which each tick reads again. So a wait expires at the first tick at or after
//! its timeout, at most one tick late. Counted in ticks, a deadline would have to add a
//! whole tick for the period already under way when the wait arrived, and could then be nearly
//! two periods late; and where the clock interrupt is coarser than the period (15.6 ms by
//! default on Windows), the ticks come further apart and every counted tick adds that much.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pagelock_macros::{locked, paged, resident};
use pagelock_protocol::{
    self as protocol, MAX_PENDING, PROTOCOL_VERSION, SignalReply, SignalRequest, SignalScope,
    WAIT_TICK_MS, WaitOutcome, WaitReply, WaitRequest, zerocopy::IntoBytes,
};

use crate::{
    kernel::{self, FileId, Filter, Irp, QueueGate, QueuedWait, SpinLock, Status, status},
    sections::LOCKED_CODE,
};

/// Serialises arming and cancelling the timer with the pending count. Resident: the DPC takes it.
static TIMER_LOCK: SpinLock = SpinLock::new();
/// Waits queued or being completed: reserved before insertion, released just before
/// completion. Resident: the DPC reads it before anything else.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Set at unload: the timer is never armed again. Resident.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Waits queued or being completed now.
#[must_use]
pub fn pending() -> u32 {
    PENDING.load(Ordering::SeqCst)
}

/// The performance-counter reading at which a wait of `timeout_ms`, queued when the counter
/// read `now`, has waited that long; the counter runs at `frequency` counts a second.
///
/// Rounded up, so that a wait never expires early; saturated, so that no frequency can wrap
/// it into the past.
#[must_use]
pub fn deadline(now: u64, timeout_ms: u32, frequency: u64) -> u64 {
    let counts =
        u64::from(timeout_ms).checked_mul(frequency).map_or(u64::MAX, |c| c.div_ceil(1000));
    now.saturating_add(counts)
}

/// Checks a `WAIT` before anything changes.
///
/// # Errors
/// `STATUS_BUFFER_TOO_SMALL` for a short input or output, `STATUS_INVALID_PARAMETER` for a
/// long input, a wrong version or a timeout out of range.
#[paged]
pub fn check_wait(input: &[u8], output_capacity: usize) -> Result<WaitRequest, Status> {
    crate::ioctl::reply_fits::<WaitReply>(output_capacity)?;
    let request = protocol::decode::<WaitRequest>(input).map_err(crate::ioctl::refusal)?;
    if request.is_valid() { Ok(request) } else { Err(status::INVALID_PARAMETER) }
}

/// `WAIT`: queues `irp` until its timeout, a `SIGNAL`, a cancel or its handle's cleanup.
///
/// Returns the status for the dispatch routine: `STATUS_PENDING` once queued (the IRP may
/// already be completed by then, if it was cancelled) or once completed as cancelled because
/// its handle's cleanup ran while it was on its way here, or the refusal it was completed with.
#[must_use]
#[paged]
pub fn wait(irp: Irp, request: WaitRequest) -> Status {
    if let Err(refused) = reserve() {
        return irp.complete(refused, &[]);
    }
    let (now, frequency) = kernel::performance_counter();
    let deadline = deadline(now, request.timeout_ms, frequency);
    // IoCsqInsertIrpEx at PASSIVE_LEVEL: marks the IRP pending, queues it unless the handle's
    // cleanup closed its gate, and completes it through `on_cancelled` at once if it was
    // cancelled already.
    match kernel::queue_wait(irp, deadline, request.cookie) {
        Ok(()) => status::PENDING,
        Err(refused) => {
            // Never queued: its slot goes back (a timer armed for it stops at its next tick,
            // finding nothing pending), and it ends as the handle's other waits did.
            PENDING.fetch_sub(1, Ordering::SeqCst);
            refused.complete_pended(status::CANCELLED)
        }
    }
}

/// Takes one slot of [`MAX_PENDING`]; the first arms the timer.
///
/// It runs under a spin lock, at `DISPATCH_LEVEL`, so not in `PAGE`: in `PAGELK`, covered by
/// the handle of the `WAIT` whose dispatch routine ([`wait`]) is its only caller. That IRP is in
/// the driver, so its file object is referenced and the handle's pair of locks is held.
#[locked(LOCKED_CODE)]
fn reserve() -> Result<(), Status> {
    // Raises to DISPATCH_LEVEL: KeSetTimerEx is callable there, and the DPC's cancel waits.
    let guard = TIMER_LOCK.acquire();
    // One atomic step: the lock orders this against the DPC's test of the count, but the waits'
    // completions (`finish`, on other processors) take slots back without it, and a load then a
    // store would lose one that lands between them.
    let before = PENDING
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < MAX_PENDING).then(|| n + 1))
        .map_err(|_| status::INVALID_DEVICE_STATE)?;
    if before == 0 && !STOPPING.load(Ordering::SeqCst) {
        kernel::timer_start(WAIT_TICK_MS);
    }
    drop(guard);
    Ok(())
}

/// `SIGNAL`: completes the waits `input` names as signalled; `file` is the caller's.
///
/// # Errors
/// As [`check_wait`] for the buffers; `STATUS_INVALID_PARAMETER` for an unknown scope.
#[paged]
pub fn signal(file: FileId, input: &[u8], output_capacity: usize) -> Result<SignalReply, Status> {
    crate::ioctl::reply_fits::<SignalReply>(output_capacity)?;
    let request = protocol::decode::<SignalRequest>(input).map_err(crate::ioctl::refusal)?;
    let filter = match request.scope() {
        Some(SignalScope::All) => Filter::Any,
        Some(SignalScope::Caller) => Filter::File(file),
        None => return Err(status::INVALID_PARAMETER),
    };
    let completed = drain(filter, WaitOutcome::Signalled);
    Ok(SignalReply { version: PROTOCOL_VERSION, completed })
}

/// `IRP_MJ_CLEANUP`: closes the handle's `gate`, then cancels the waits queued on `file`.
///
/// Both before cleanup returns, so that no IRP of the handle is queued when its close releases
/// the handle's locks: a `WAIT` of the handle still in its dispatch routine on another
/// processor is either queued before the drain or refused (see [`QueueGate`]).
#[must_use]
#[paged]
pub fn cleanup(file: FileId, gate: &QueueGate) -> u32 {
    // Under the queue's lock, at DISPATCH_LEVEL for a moment: PAGELK, which the cleanup IRP's
    // handle keeps locked.
    kernel::close_gate(gate);
    drain(Filter::File(file), WaitOutcome::Cancelled)
}

/// Completes the queued waits `filter` takes, at most [`MAX_PENDING`] (waits queued meanwhile
/// may be left for the next call); how many.
#[paged]
fn drain(filter: Filter, outcome: WaitOutcome) -> u32 {
    let mut completed = 0;
    for _ in 0..MAX_PENDING {
        // IoCsqRemoveNextIrp at PASSIVE_LEVEL: the IRP is ours, its cancel routine cleared.
        let Some(wait) = kernel::dequeue(filter) else { break };
        finish(wait, outcome);
        completed += 1;
    }
    completed
}

/// The timer's DPC, at `DISPATCH_LEVEL`: completes the waits whose deadline has passed, and
/// cancels the timer once nothing is pending.
///
/// Resident (`#[resident]`: `.text`), as the DPC routine that calls it: it runs whether
/// or not a handle holds the sections locked, and looks at the resident count before calling
/// any locked code; it reaches `PAGELK` only through [`finish`], for a wait it holds.
#[resident]
pub fn on_tick() {
    let guard = TIMER_LOCK.acquire();
    let idle = PENDING.load(Ordering::SeqCst) == 0;
    if idle {
        // KeCancelTimer at DISPATCH_LEVEL, from the timer's own DPC: allowed. A WAIT that
        // arms it again waits for this lock, so the cancel cannot undo a new arm.
        kernel::timer_stop();
    }
    drop(guard);
    if idle {
        return;
    }
    // KeQueryPerformanceCounter at DISPATCH_LEVEL: every wait whose deadline it has reached.
    let expired = Filter::ExpiredBy(kernel::performance_counter().0);
    for _ in 0..MAX_PENDING {
        // IoCsqRemoveNextIrp at DISPATCH_LEVEL: the next expired wait, in queue order.
        let Some(wait) = kernel::dequeue(expired) else { break };
        finish(wait, WaitOutcome::Expired);
    }
}

/// The queue's complete-cancelled callback.
///
/// A wait was cancelled (`IoCancelIrp`, or found cancelled as it was inserted), and the queue
/// has taken it off. Any IRQL up to `DISPATCH_LEVEL`. Resident, as [`on_tick`] (inlined into
/// the resident callback).
#[inline]
pub fn on_cancelled(wait: QueuedWait) {
    finish(wait, WaitOutcome::Cancelled);
}

/// Completes one wait taken off the queue: settles it in the locked sections, then completes
/// it. Resident, as [`on_tick`].
///
/// `wait` is not completed yet, so its file object is referenced and its handle's lock pair,
/// released only in `IRP_MJ_CLOSE`, covers `settle`. Once `complete` has run, that pair
/// may be gone: nothing of `PAGELK` runs after it, only this resident code's return.
#[resident]
pub fn finish(mut wait: QueuedWait, outcome: WaitOutcome) {
    settle(&mut wait, outcome);
    PENDING.fetch_sub(1, Ordering::SeqCst);
    // IofCompleteRequest: the last thing done with the IRP, and with the locks it kept.
    wait.complete();
}

/// Counts a wait in the locked data and writes its reply (or its cancellation) into the IRP.
///
/// `PAGELK`, covered by `wait` itself, which is not completed (see [`finish`]).
#[locked(LOCKED_CODE)]
fn settle(wait: &mut QueuedWait, outcome: WaitOutcome) {
    let completed_waits = crate::work::record_wait_completion();
    if outcome == WaitOutcome::Cancelled {
        wait.set_result(status::CANCELLED, &[]);
    } else {
        let reply = WaitReply {
            version: PROTOCOL_VERSION,
            outcome: outcome as u32,
            cookie: wait.cookie(),
            completed_waits,
        };
        wait.set_result(status::SUCCESS, reply.as_bytes());
    }
}

/// Unload, at `PASSIVE_LEVEL`, before the sections' leftovers are released: no arm after this,
/// the timer cancelled, and a DPC already queued or running waited for.
#[paged]
pub fn stop() {
    // No lock needed: unload runs with no handle open, so no WAIT can be arming the timer.
    STOPPING.store(true, Ordering::SeqCst);
    // KeCancelTimer, then KeFlushQueuedDpcs (PASSIVE_LEVEL only): afterwards no DPC of the
    // driver is queued or running, and none can be queued again.
    kernel::timer_stop();
    kernel::flush_dpcs();
}
