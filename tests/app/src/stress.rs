//! The stress run: many threads open, lock, run, unlock and close, then every count is checked.
//!
//! Each thread opens a handle, takes an extra lock, runs the locked work, releases the lock and
//! closes the handle, over and over; afterwards every count must be back to what the querying
//! handle holds. Waits are mixed in: every [`WAIT_EVERY`]th cycle also sends a short `WAIT`,
//! which must expire, and every [`CANCEL_EVERY`]th queues a long one on an overlapped handle and
//! cancels it, which must end it as cancelled.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pagelock_protocol::{self as protocol, DISPATCH_LEVEL, RunRequest, StateReply, WaitRequest};

use crate::client::{Session, wait_end};
use crate::device::Device;
use crate::scenarios::Check;

/// Rounds of locked work per `RUN_LOCKED` in the stress run: short, so the run is about
/// opening, locking and closing.
pub const RUN_ITERATIONS: u32 = 64;
/// Failures described one by one in the report; the rest are only counted.
const SAMPLES: usize = 10;
/// One cycle in this many also sends a short `WAIT` (1 to 10 ms), synchronously.
pub const WAIT_EVERY: u64 = 8;
/// One cycle in this many (another one) queues a long `WAIT` and cancels it.
pub const CANCEL_EVERY: u64 = 16;

/// How much stress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StressConfig {
    /// Threads, each with its own handles (or all on one, with `shared`).
    pub threads: u32,
    /// Open-to-close cycles per thread (`LOCK`, `RUN_LOCKED`, `UNLOCK` rounds with `shared`).
    pub iterations: u64,
    /// Every thread on one handle opened for overlapped I/O, so that several requests of one
    /// file object are in the driver at once; the handle is opened before and closed after.
    pub shared: bool,
}

impl StressConfig {
    /// Cycles over all threads.
    #[must_use]
    pub const fn total(&self) -> u64 {
        self.threads as u64 * self.iterations
    }
}

/// The steps of one cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Opening the handle.
    Open,
    /// `LOCK`.
    Lock,
    /// `RUN_LOCKED`, or a wrong reply to it.
    RunLocked,
    /// `UNLOCK`.
    Unlock,
    /// A `WAIT` (short, or cancelled), or a wrong end of it.
    Wait,
    /// Closing the handle.
    Close,
}

impl Step {
    const ALL: [Self; 6] =
        [Self::Open, Self::Lock, Self::RunLocked, Self::Unlock, Self::Wait, Self::Close];

    const fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Lock => "LOCK",
            Self::RunLocked => "RUN_LOCKED",
            Self::Unlock => "UNLOCK",
            Self::Wait => "WAIT",
            Self::Close => "close",
        }
    }
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    completed: u64,
    failures: [u64; Step::ALL.len()],
    samples: Vec<String>,
    runs_answered: u64,
}

impl Tally {
    fn fail(&mut self, step: Step, thread: u32, iteration: u64, what: impl std::fmt::Display) {
        self.failures[step as usize] += 1;
        if self.samples.len() < SAMPLES {
            self.samples
                .push(format!("thread {thread}, cycle {iteration}: {}: {what}", step.name()));
        }
    }

    fn merge(&mut self, other: Self) {
        self.completed += other.completed;
        for (total, count) in self.failures.iter_mut().zip(other.failures) {
            *total += count;
        }
        self.samples.extend(other.samples);
        self.samples.truncate(SAMPLES);
        self.runs_answered += other.runs_answered;
    }
}

/// The outcome of a stress run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StressReport {
    /// What was asked for.
    pub config: StressConfig,
    /// Cycles in which every step succeeded.
    pub completed: u64,
    /// Failures per step, in [`Step`] order.
    pub failures: Vec<(Step, u64)>,
    /// The first failures, described.
    pub samples: Vec<String>,
    /// The checks made on the state afterwards.
    pub checks: Vec<Check>,
    /// How long the cycles took.
    pub elapsed: Duration,
}

impl StressReport {
    /// Failures over all steps.
    #[must_use]
    pub fn failure_count(&self) -> u64 {
        self.failures.iter().map(|(_, count)| count).sum()
    }

    /// Whether every cycle completed and every check afterwards passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failure_count() == 0
            && self.completed == self.config.total()
            && !self.checks.is_empty()
            && self.checks.iter().all(|check| check.passed)
    }

    /// The report as text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        let cycle = if self.config.shared {
            "LOCK, RUN_LOCKED, UNLOCK, some WAITs, all threads on one overlapped handle"
        } else {
            "open, LOCK, RUN_LOCKED, UNLOCK, some WAITs, close"
        };
        let _ = writeln!(
            text,
            "stress: {} threads x {} cycles ({cycle}) in {:.1} s",
            self.config.threads,
            self.config.iterations,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(text, "  completed: {} of {} cycles", self.completed, self.config.total());
        if self.failure_count() == 0 {
            let _ = writeln!(text, "  failures: none");
        } else {
            let counts: Vec<_> = self
                .failures
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(step, count)| format!("{} {count}", step.name()))
                .collect();
            let _ = writeln!(text, "  failures: {}", counts.join(", "));
            for sample in &self.samples {
                let _ = writeln!(text, "    {sample}");
            }
        }
        let _ = writeln!(text, "  afterwards:");
        for check in &self.checks {
            let mark = if check.passed { "ok" } else { "FAILED" };
            let _ = writeln!(
                text,
                "    {mark}: {}: expected {}, seen {}",
                check.what, check.expected, check.seen
            );
        }
        let _ = writeln!(text, "stress: {}", if self.passed() { "PASS" } else { "FAIL" });
        text
    }
}

/// One thread's cycles, on its own handles or on `shared`.
fn cycles<D: Device + ?Sized>(
    device: &D,
    shared: Option<&Session<'_, D>>,
    thread: u32,
    iterations: u64,
    done: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    for iteration in 0..iterations {
        let ok = cycle(device, shared, thread, iteration, &mut tally);
        if ok {
            tally.completed += 1;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// One open-to-close cycle (without the open and close on a shared handle); whether every
/// step succeeded.
fn cycle<D: Device + ?Sized>(
    device: &D,
    shared: Option<&Session<'_, D>>,
    thread: u32,
    iteration: u64,
    tally: &mut Tally,
) -> bool {
    let cancelling = iteration % CANCEL_EVERY == CANCEL_EVERY - 5;
    let own = match shared {
        Some(_) => None,
        // The cycle that cancels a wait needs a handle whose request it can leave in flight.
        None if cancelling => match Session::open_overlapped(device) {
            Ok(session) => Some(session),
            Err(failure) => {
                tally.fail(Step::Open, thread, iteration, failure);
                return false;
            }
        },
        None => match Session::open(device) {
            Ok(session) => Some(session),
            Err(failure) => {
                tally.fail(Step::Open, thread, iteration, failure);
                return false;
            }
        },
    };
    let Some(session) = shared.or(own.as_ref()) else { return false };
    let mut ok = true;
    let locked = match session.lock() {
        Ok(_) => true,
        Err(failure) => {
            tally.fail(Step::Lock, thread, iteration, failure);
            ok = false;
            false
        }
    };
    let seed = (u64::from(thread) << 40) ^ iteration;
    match session.run_locked(&RunRequest::new(RUN_ITERATIONS, seed)) {
        Ok(reply) => {
            tally.runs_answered += 1;
            let expected = protocol::checksum(seed, RUN_ITERATIONS);
            if reply.checksum != expected || reply.irql != DISPATCH_LEVEL {
                let what = format!(
                    "checksum {:#x} at IRQL {} instead of {expected:#x} at {DISPATCH_LEVEL}",
                    reply.checksum, reply.irql
                );
                tally.fail(Step::RunLocked, thread, iteration, what);
                ok = false;
            }
        }
        Err(failure) => {
            tally.fail(Step::RunLocked, thread, iteration, failure);
            ok = false;
        }
    }
    let unlocked = if locked { session.unlock().err() } else { None };
    if let Some(failure) = unlocked {
        tally.fail(Step::Unlock, thread, iteration, failure);
        ok = false;
    }
    if let Err(what) = waits(session, shared.is_some(), cancelling, iteration) {
        tally.fail(Step::Wait, thread, iteration, what);
        ok = false;
    }
    if let Some(own) = own
        && let Err(error) = own.close()
    {
        tally.fail(Step::Close, thread, iteration, error);
        ok = false;
    }
    ok
}

/// The waits of one cycle, if it has any: a short one that must expire, or a long one that
/// must end cancelled. On a shared handle another thread's cancel may end a short wait too.
fn waits<D: Device + ?Sized>(
    session: &Session<'_, D>,
    shared: bool,
    cancelling: bool,
    iteration: u64,
) -> Result<(), String> {
    let cookie = iteration;
    let (result, expected) = if cancelling {
        let pending = session
            .start_wait(&WaitRequest::new(protocol::MAX_WAIT_MS, cookie))
            .map_err(|e| e.to_string())?;
        session.cancel().map_err(|e| e.to_string())?;
        (pending.finish(), "cancelled".to_owned())
    } else if iteration % WAIT_EVERY == WAIT_EVERY - 5 {
        let timeout_ms = 1 + u32::try_from(iteration % 10).unwrap_or(0);
        (session.wait(&WaitRequest::new(timeout_ms, cookie)), format!("expired, cookie {cookie}"))
    } else {
        return Ok(());
    };
    let seen = wait_end(&result);
    if seen == expected || (shared && seen == "cancelled") {
        Ok(())
    } else {
        Err(format!("ended {seen} instead of {expected}"))
    }
}

/// Runs the cycles on `config.threads` threads, calling `on_progress` with the cycles done so
/// far every few milliseconds from the calling thread, then checks the state.
pub fn stress<D: Device + Sync + ?Sized>(
    device: &D,
    config: StressConfig,
    mut on_progress: impl FnMut(u64),
) -> StressReport {
    let done = AtomicU64::new(0);
    let probe = Session::open(device);
    let before = probe.as_ref().ok().and_then(|probe| probe.query().ok());
    let shared = if config.shared {
        match Session::open_overlapped(device) {
            Ok(session) => Some(session),
            Err(failure) => {
                let mut tally = Tally::default();
                tally.fail(Step::Open, 0, 0, failure);
                return report(config, tally, Vec::new(), Duration::ZERO);
            }
        }
    } else {
        None
    };
    let start = Instant::now();
    let tally = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..config.threads)
            .map(|thread| {
                let (done, shared) = (&done, shared.as_ref());
                scope.spawn(move || cycles(device, shared, thread, config.iterations, done))
            })
            .collect();
        while !workers.iter().all(std::thread::ScopedJoinHandle::is_finished) {
            on_progress(done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(50));
        }
        on_progress(done.load(Ordering::Relaxed));
        let mut total = Tally::default();
        for (thread, worker) in (0..).zip(workers) {
            match worker.join() {
                Ok(tally) => total.merge(tally),
                Err(_) => total.fail(Step::Open, thread, 0, "the thread panicked"),
            }
        }
        total
    });
    let elapsed = start.elapsed();
    let mut tally = tally;
    if let Some(shared) = shared
        && let Err(error) = shared.close()
    {
        tally.fail(Step::Close, 0, config.iterations, error);
    }
    let checks = match probe {
        Ok(probe) => state_checks(&probe, before.as_ref(), tally.runs_answered),
        Err(failure) => vec![Check {
            what: "open the querying handle".into(),
            expected: "success".into(),
            seen: failure.to_string(),
            passed: false,
        }],
    };
    report(config, tally, checks, elapsed)
}

fn report(
    config: StressConfig,
    tally: Tally,
    checks: Vec<Check>,
    elapsed: Duration,
) -> StressReport {
    StressReport {
        config,
        completed: tally.completed,
        failures: Step::ALL.iter().map(|&step| (step, tally.failures[step as usize])).collect(),
        samples: tally.samples,
        checks,
        elapsed,
    }
}

/// Every count back to what the querying handle holds, and every answered run counted.
fn state_checks<D: Device + ?Sized>(
    probe: &Session<'_, D>,
    before: Option<&StateReply>,
    runs_answered: u64,
) -> Vec<Check> {
    let check = |what: String, expected: String, seen: String, passed: bool| Check {
        what,
        expected,
        seen,
        passed,
    };
    // The workers' closes may reach the driver after their CloseHandle returned.
    let state = match crate::scenarios::settled(probe, 1) {
        Ok(state) => state,
        Err(failure) => {
            return vec![check("QUERY_STATE".into(), "success".into(), failure.to_string(), false)];
        }
    };
    let mut checks = Vec::new();
    for section in &state.sections {
        checks.push(check(
            format!("locks on {} (what the querying handle holds)", section.name()),
            section.held_by_caller.to_string(),
            section.lock_count.to_string(),
            section.lock_count == section.held_by_caller,
        ));
    }
    checks.push(check(
        "open handles".into(),
        "1".into(),
        state.open_handles.to_string(),
        state.open_handles == 1,
    ));
    if let Some(before) = before {
        let counted = state.runs - before.runs;
        checks.push(check(
            "runs counted by the driver".into(),
            format!("at least {runs_answered}"),
            counted.to_string(),
            counted >= runs_answered,
        ));
    }
    if let Err(error) = probe.raw(protocol::IOCTL_QUERY_STATE, &[], 0) {
        checks.push(check("the querying handle".into(), "usable".into(), error.0, false));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn stress_passes_and_balances_against_the_model() {
        let model = Model::correct();
        let config = StressConfig { threads: 4, iterations: 200, shared: false };
        let mut last = 0;
        let report = stress(&model, config, |done| last = done);
        assert!(report.passed(), "{}", report.render());
        assert_eq!(report.completed, 800);
        assert_eq!(last, 800);
        assert_eq!(model.lock_count(), 0);
        assert!(report.render().ends_with("stress: PASS\n"));
    }

    #[test]
    fn stress_fails_when_close_leaks() {
        let model = Model::with(Fault::LeakOnClose);
        let report =
            stress(&model, StressConfig { threads: 2, iterations: 10, shared: false }, |_| {});
        assert!(!report.passed());
        assert_eq!(report.failure_count(), 0, "every step succeeded");
        let text = report.render();
        assert!(
            text.contains(
                "FAILED: locks on PAGELK (what the querying handle holds): expected 1, seen 21"
            ),
            "{text}"
        );
    }

    #[test]
    fn stress_mixes_in_waits_and_fails_when_a_cancel_ends_none() {
        let config = StressConfig { threads: 2, iterations: 32, shared: false };
        assert!(stress(&Model::correct(), config, |_| {}).passed());
        let report = stress(&Model::with(Fault::CancelLeavesWaitsQueued), config, |_| {});
        // Two cancelling cycles per thread, each wait ending expired instead.
        assert_eq!(report.failures[4], (Step::Wait, 4), "{}", report.render());
        assert!(report.render().contains("WAIT: ended expired, cookie 11 instead of cancelled"));
        let shared = StressConfig { shared: true, ..config };
        assert!(stress(&Model::correct(), shared, |_| {}).passed());
    }

    #[test]
    fn stress_counts_and_samples_step_failures() {
        let model = Model::with(Fault::WrongChecksum);
        let report =
            stress(&model, StressConfig { threads: 3, iterations: 5, shared: false }, |_| {});
        assert_eq!(report.failures[2], (Step::RunLocked, 15));
        assert_eq!(report.samples.len(), SAMPLES);
        assert!(report.render().contains("failures: RUN_LOCKED 15"));
        assert!(!report.passed());
    }
}
