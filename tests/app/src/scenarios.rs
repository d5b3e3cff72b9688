//! The scenario suite: what "the driver works" means, written once against [`Device`].
//!
//! Every count is read with `QUERY_STATE`, and the handle that queries holds locks itself: with
//! only that handle open, each section's `lock_count` equals that handle's `held_by_caller`.
//! A scenario records every check it makes (what was expected, what was seen) in a
//! [`Verdict`]; it stops early only when a later check would mean nothing (a handle that did not
//! open), and every handle it opened is closed when it stops.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, Instant};

use pagelock_protocol::zerocopy::IntoBytes;
use pagelock_protocol::{
    self as protocol, BenchRequest, DISPATCH_LEVEL, MAX_BENCH_ITERATIONS, MAX_EXTRA_LOCKS,
    MAX_RUN_ITERATIONS, PROTOCOL_VERSION, RunRequest, SECTION_COUNT, StateReply, status,
};

use crate::client::{Failure, Session, code_name};
use crate::device::{Device, TransportError};
use crate::errors::status_text;

/// The scenarios, in the order [`run`] runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// With only the querying handle open, every count equals what that handle holds.
    Idle,
    /// Each open adds one lock per section, each close removes it.
    Lifecycle,
    /// `LOCK` and `UNLOCK` balance, refuse past their limits, and close releases them all.
    NestedLocks,
    /// `RUN_LOCKED` returns the predicted checksum at `DISPATCH_LEVEL`.
    RunLocked,
    /// Handles opened and closed in interleaved orders keep every count exact.
    ManyHandles,
    /// Every malformed request gets its documented status and changes nothing.
    BadInput,
    /// `BENCH` measures both lock paths.
    Bench,
    /// Threads on one overlapped handle, several requests of it in the driver at once, keep
    /// every count exact.
    SharedHandle,
}

impl Scenario {
    /// Every scenario, in the order [`run`] runs them.
    pub const ALL: [Self; 8] = [
        Self::Idle,
        Self::Lifecycle,
        Self::NestedLocks,
        Self::RunLocked,
        Self::ManyHandles,
        Self::SharedHandle,
        Self::BadInput,
        Self::Bench,
    ];

    /// The name used on the command line and in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Lifecycle => "lifecycle",
            Self::NestedLocks => "nested-locks",
            Self::RunLocked => "run-locked",
            Self::ManyHandles => "many-handles",
            Self::BadInput => "bad-input",
            Self::Bench => "bench",
            Self::SharedHandle => "shared-handle",
        }
    }

    /// One line on what the scenario proves.
    #[must_use]
    pub const fn summary(self) -> &'static str {
        match self {
            Self::Idle => "with only the querying handle open, each count is what it holds",
            Self::Lifecycle => "each open adds one lock per section, each close removes it",
            Self::NestedLocks => {
                "LOCK and UNLOCK balance and stop at their limits; close releases all"
            }
            Self::RunLocked => "RUN_LOCKED returns the predicted checksum at DISPATCH_LEVEL",
            Self::ManyHandles => "interleaved opens and closes keep every count exact",
            Self::BadInput => "malformed requests get their documented status and change nothing",
            Self::Bench => "BENCH times both lock paths (the ratio is printed, not checked)",
            Self::SharedHandle => {
                "threads on one overlapped handle: requests at once, every count exact"
            }
        }
    }

    /// The scenario called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Runs this scenario against `device`.
    pub fn run<D: Device + ?Sized>(self, device: &D) -> Verdict {
        match self {
            Self::Idle => idle(device),
            Self::Lifecycle => lifecycle(device),
            Self::NestedLocks => nested_locks(device),
            Self::RunLocked => run_locked(device),
            Self::ManyHandles => many_handles(device),
            Self::BadInput => bad_input(device),
            Self::Bench => bench(device),
            Self::SharedHandle => shared_handle(device),
        }
    }
}

impl Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which scenarios to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// All of them, in order.
    All,
    /// Only this one.
    One(Scenario),
}

impl Selection {
    /// The scenarios selected, in order.
    #[must_use]
    pub fn scenarios(self) -> Vec<Scenario> {
        match self {
            Self::All => Scenario::ALL.to_vec(),
            Self::One(scenario) => vec![scenario],
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if name == "all" {
            return Ok(Self::All);
        }
        Scenario::from_name(name).map(Self::One).ok_or_else(|| {
            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("no scenario is called `{name}`; use all or one of: {}", names.join(", "))
        })
    }
}

/// One thing a scenario checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// What the protocol says.
    pub expected: String,
    /// What the driver did.
    pub seen: String,
    /// Whether they agree.
    pub passed: bool,
}

/// The outcome of one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Which scenario.
    pub scenario: Scenario,
    /// Every check made, in order.
    pub checks: Vec<Check>,
    /// Things measured but not judged (the bench ratio), and why a scenario stopped early.
    pub notes: Vec<String>,
    /// A transport failure that ended the scenario.
    pub transport_error: Option<String>,
}

impl Verdict {
    /// Whether every check passed (and there was at least one, and no transport failure).
    #[must_use]
    pub fn passed(&self) -> bool {
        self.transport_error.is_none()
            && !self.checks.is_empty()
            && self.checks.iter().all(|check| check.passed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|check| !check.passed)
    }
}

/// Runs the selected scenarios against `device`, in order.
pub fn run<D: Device + ?Sized>(device: &D, which: Selection) -> Vec<Verdict> {
    which.scenarios().into_iter().map(|scenario| scenario.run(device)).collect()
}

/// Whether every verdict passed.
#[must_use]
pub fn all_passed(verdicts: &[Verdict]) -> bool {
    verdicts.iter().all(Verdict::passed)
}

/// The verdicts as text: one line per scenario, each failed check with what was expected and
/// what was seen (every check with `verbose`), notes, and a closing count.
#[must_use]
pub fn render(verdicts: &[Verdict], verbose: bool) -> String {
    let mut text = String::new();
    let width = Scenario::ALL.iter().map(|s| s.name().len()).max().unwrap_or(0);
    for verdict in verdicts {
        let failed = verdict.failures().count();
        let word = if verdict.passed() { "PASS" } else { "FAIL" };
        let mut counts = format!("{} checks", verdict.checks.len());
        if failed > 0 {
            let _ = write!(counts, ", {failed} failed");
        }
        let _ = writeln!(text, "{word}  {:width$}  {counts}", verdict.scenario.name());
        for check in &verdict.checks {
            if verbose || !check.passed {
                let mark = if check.passed { "ok" } else { "FAILED" };
                let _ = writeln!(text, "      {mark}: {}", check.what);
                let _ = writeln!(text, "        expected: {}", check.expected);
                let _ = writeln!(text, "        seen:     {}", check.seen);
            }
        }
        if let Some(error) = &verdict.transport_error {
            let _ = writeln!(text, "      stopped by a transport error: {error}");
        }
        for note in &verdict.notes {
            let _ = writeln!(text, "      note: {note}");
        }
    }
    let passed = verdicts.iter().filter(|v| v.passed()).count();
    let _ = writeln!(text, "scenarios: {passed} passed, {} failed", verdicts.len() - passed);
    text
}

/// Why a scenario stopped before its end.
enum Stop {
    /// A failed check that later checks depend on (already recorded).
    Failed,
    /// The transport failed.
    Transport(String),
}

impl From<TransportError> for Stop {
    fn from(error: TransportError) -> Self {
        Self::Transport(error.0)
    }
}

/// Collects the checks of one scenario.
struct Recorder {
    checks: Vec<Check>,
    notes: Vec<String>,
}

impl Recorder {
    const fn new() -> Self {
        Self { checks: Vec::new(), notes: Vec::new() }
    }

    fn check(
        &mut self,
        what: impl Into<String>,
        expected: impl Display,
        seen: impl Display,
        passed: bool,
    ) -> bool {
        self.checks.push(Check {
            what: what.into(),
            expected: expected.to_string(),
            seen: seen.to_string(),
            passed,
        });
        passed
    }

    fn eq<T: PartialEq + Display>(
        &mut self,
        what: impl Into<String>,
        expected: T,
        seen: T,
    ) -> bool {
        let passed = expected == seen;
        self.check(what, expected, seen, passed)
    }

    /// Records a request that must succeed; stops the scenario when it did not.
    fn require<T>(
        &mut self,
        what: impl Into<String>,
        result: Result<T, Failure>,
    ) -> Result<T, Stop> {
        match result {
            Ok(value) => Ok(value),
            Err(Failure::Transport(error)) => Err(Stop::Transport(error.0)),
            Err(failure) => {
                let what = what.into();
                self.check(what.clone(), "success", &failure, false);
                self.notes.push(format!(
                    "stopped after `{what}` failed: the checks after it depend on it"
                ));
                Err(Stop::Failed)
            }
        }
    }

    /// Checks each section's `lock_count` against `expected`.
    fn lock_counts(&mut self, context: &str, state: &StateReply, expected: u32) {
        for section in &state.sections {
            self.eq(
                format!("{context}: locks on {}", section.name()),
                expected,
                section.lock_count,
            );
        }
    }

    /// Checks what the querying handle holds on each section.
    fn held(&mut self, context: &str, state: &StateReply, expected: u32) {
        for section in &state.sections {
            self.eq(
                format!("{context}: locks on {} held by this handle", section.name()),
                expected,
                section.held_by_caller,
            );
        }
    }

    fn finish(self, scenario: Scenario, result: Result<(), Stop>) -> Verdict {
        let transport_error = match result {
            Err(Stop::Transport(error)) => Some(error),
            Ok(()) | Err(Stop::Failed) => None,
        };
        Verdict { scenario, checks: self.checks, notes: self.notes, transport_error }
    }
}

fn scenario<D: Device + ?Sized>(
    scenario: Scenario,
    device: &D,
    body: impl FnOnce(&mut Recorder, &D) -> Result<(), Stop>,
) -> Verdict {
    let mut recorder = Recorder::new();
    let result = body(&mut recorder, device);
    recorder.finish(scenario, result)
}

/// How long the counts may take to settle after a close.
///
/// `CloseHandle` can return before the driver's `IRP_MJ_CLOSE` has run: Windows sends close
/// when the last reference to the file object goes, which can be later, in a worker thread
/// (`ObDereferenceObjectDeferDelete`), and Wine 8 delivers it asynchronously (seen there:
/// run-locked's starting counts included a handle nested-locks had just closed). So a query
/// whose counts depend on earlier closes waits, up to this bound, until the driver counts no
/// more open handles than expected. The driver releases a handle's locks before it stops
/// counting the handle, so the lock counts have settled by then too. A close that never arrives
/// still fails the checks, after the bound; the test bed closes synchronously, so there the
/// wait is one query.
pub const CLOSE_SETTLE: Duration = Duration::from_secs(2);

/// `QUERY_STATE` on `probe`, repeated until at most `open_handles` handles are counted or
/// [`CLOSE_SETTLE`] has passed; the last state.
///
/// # Errors
/// When a query fails.
pub fn settled<D: Device + ?Sized>(
    probe: &Session<'_, D>,
    open_handles: u32,
) -> Result<StateReply, Failure> {
    let start = Instant::now();
    loop {
        let state = probe.query()?;
        if state.open_handles <= open_handles || start.elapsed() >= CLOSE_SETTLE {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Each section's lock count, in report order.
fn lock_counts(state: &StateReply) -> [u32; SECTION_COUNT] {
    state.sections.map(|section| section.lock_count)
}

/// What changed between two states, field by field; empty when nothing did.
#[must_use]
pub fn state_changes(before: &StateReply, after: &StateReply) -> Vec<String> {
    let mut changes = Vec::new();
    let mut field = |name: &str, a: u64, b: u64| {
        if a != b {
            changes.push(format!("{name} {a} -> {b}"));
        }
    };
    field("version", before.version.into(), after.version.into());
    field("driver_version", before.driver_version.into(), after.driver_version.into());
    field("open_handles", before.open_handles.into(), after.open_handles.into());
    field("caller_extra_locks", before.caller_extra_locks.into(), after.caller_extra_locks.into());
    for (a, b) in before.sections.iter().zip(&after.sections) {
        let name = a.name();
        field(&format!("{name}.size"), a.size.into(), b.size.into());
        field(&format!("{name}.lock_count"), a.lock_count.into(), b.lock_count.into());
        field(&format!("{name}.held_by_caller"), a.held_by_caller.into(), b.held_by_caller.into());
    }
    field("lock_by_address_calls", before.lock_by_address_calls, after.lock_by_address_calls);
    field("lock_by_handle_calls", before.lock_by_handle_calls, after.lock_by_handle_calls);
    field("unlock_calls", before.unlock_calls, after.unlock_calls);
    field("runs", before.runs, after.runs);
    if changes.is_empty() && before.sections.map(|s| s.name) != after.sections.map(|s| s.name) {
        changes.push("section names".to_owned());
    }
    changes
}

fn describe_changes(changes: &[String]) -> String {
    if changes.is_empty() { "no change".to_owned() } else { changes.join(", ") }
}

/// With only the querying handle open, every section's count is what that handle holds.
pub fn idle<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::Idle, device, |r, device| {
        let probe = r.require("open a handle", Session::open(device))?;
        // A larger output buffer than the reply is fine; the reply is still exactly its size.
        let reply = probe.raw(protocol::IOCTL_QUERY_STATE, &[], 2 * size_of::<StateReply>())?;
        r.eq(
            "QUERY_STATE with a larger output buffer: status",
            status_text(status::SUCCESS),
            status_text(reply.status),
        );
        r.eq(
            "QUERY_STATE with a larger output buffer: reply length",
            size_of::<StateReply>(),
            reply.output.len(),
        );
        let state = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.eq("protocol version of the reply", PROTOCOL_VERSION, state.version);
        r.eq("open handles", 1, state.open_handles);
        r.eq("extra locks of the querying handle", 0, state.caller_extra_locks);
        r.held("only this handle open", &state, 1);
        for section in &state.sections {
            r.eq(
                format!("only this handle open: locks on {} equal what it holds", section.name()),
                section.held_by_caller,
                section.lock_count,
            );
            r.check(
                format!("{}: named, with a size", section.name()),
                "a name and a size > 0",
                format!("{:?}, {} bytes", section.name(), section.size),
                !section.name().is_empty() && section.size > 0,
            );
        }
        probe.close()?;
        Ok(())
    })
}

/// Each open adds one lock per section and each close removes it; counts return to what the
/// querying handle holds. Opening and closing never locks by address.
pub fn lifecycle<D: Device + ?Sized>(device: &D) -> Verdict {
    const HANDLES: u32 = 3;
    let sections = SECTION_COUNT as u64;
    scenario(Scenario::Lifecycle, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = base.sections[0].held_by_caller;
        r.lock_counts("before", &base, held);
        let mut opened = Vec::new();
        for n in 1..=HANDLES {
            let session = r.require(format!("open handle #{n}"), Session::open(device))?;
            let own = r.require(format!("QUERY_STATE on handle #{n}"), session.query())?;
            r.held(&format!("handle #{n}, just opened"), &own, 1);
            r.eq(format!("handle #{n}, just opened: its extra locks"), 0, own.caller_extra_locks);
            opened.push(session);
            let state = r.require("QUERY_STATE", probe.query())?;
            let context = format!("after opening handle #{n}");
            r.lock_counts(&context, &state, held + n);
            r.eq(format!("{context}: open handles"), base.open_handles + n, state.open_handles);
            r.held(&format!("{context}, querying handle"), &state, held);
            r.eq(
                format!("{context}: lock-by-handle calls"),
                base.lock_by_handle_calls + sections * u64::from(n),
                state.lock_by_handle_calls,
            );
        }
        for n in 1..=HANDLES {
            opened.remove(0).close()?;
            let state =
                r.require("QUERY_STATE", settled(&probe, base.open_handles + HANDLES - n))?;
            let context = format!("after closing handle #{n}");
            r.lock_counts(&context, &state, held + HANDLES - n);
            r.eq(
                format!("{context}: open handles"),
                base.open_handles + HANDLES - n,
                state.open_handles,
            );
            r.eq(
                format!("{context}: unlock calls"),
                base.unlock_calls + sections * u64::from(n),
                state.unlock_calls,
            );
        }
        let end = r.require("QUERY_STATE", settled(&probe, base.open_handles))?;
        r.lock_counts("all closed again", &end, held);
        r.eq(
            "opens and closes never lock by address",
            base.lock_by_address_calls,
            end.lock_by_address_calls,
        );
        probe.close()?;
        Ok(())
    })
}

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

fn reply_text(status: i32, len: usize) -> String {
    if len == 0 { status_text(status) } else { format!("{}, {len} bytes", status_text(status)) }
}

fn summarize(values: &[u32]) -> String {
    match values {
        [] => "none".to_owned(),
        [one] => one.to_string(),
        [first, second, .., last] if values.len() > 3 => format!("{first}, {second}, ... {last}"),
        _ => values.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
    }
}

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

/// A value printed in hexadecimal.
#[derive(PartialEq, Eq)]
struct Hex(u64);

impl Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// `SplitMix64` as a small deterministic generator for the interleavings.
struct Mix(u64);

impl Mix {
    const fn below(&mut self, n: usize) -> usize {
        self.0 = protocol::splitmix64(self.0);
        // n is small; the modulo bias does not matter for picking an order.
        #[allow(clippy::cast_possible_truncation)]
        let pick = (self.0 % n as u64) as usize;
        pick
    }
}

/// The handles a many-handles round holds open: (label, session, extra locks it holds).
type Opened<'d, D> = Vec<(u32, Session<'d, D>, u32)>;

/// A count of handles as the protocol reports it.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Several handles, some holding extra locks, opened and closed in interleaved orders: the
/// counts always equal what the open handles hold.
pub fn many_handles<D: Device + ?Sized>(device: &D) -> Verdict {
    const ROUNDS: u64 = 3;
    const HANDLES: u32 = 6;
    scenario(Scenario::ManyHandles, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let mut round = Round { probe: &probe, base, label: 0, number: 0, mix: Mix(0) };
        for number in 1..=ROUNDS {
            round.number = number;
            round.mix = Mix(number);
            let mut open: Opened<'_, D> = Vec::new();
            for _ in 0..HANDLES {
                round.open_one(r, device, &mut open)?;
            }
            // Close half in a shuffled order, open two more, close the rest newest first.
            for _ in 0..HANDLES / 2 {
                let (n, session, _) = open.remove(round.mix.below(open.len()));
                session.close()?;
                round.step(r, &open, &format!("closed handle #{n}"))?;
            }
            for _ in 0..2 {
                round.open_one(r, device, &mut open)?;
            }
            while let Some((n, session, _)) = open.pop() {
                session.close()?;
                round.step(r, &open, &format!("closed handle #{n}"))?;
            }
        }
        let end = r.require("QUERY_STATE", probe.query())?;
        r.lock_counts("all closed", &end, base.sections[0].held_by_caller);
        probe.close()?;
        Ok(())
    })
}

/// The bookkeeping of the many-handles scenario.
struct Round<'p, 'd, D: Device + ?Sized> {
    probe: &'p Session<'d, D>,
    base: StateReply,
    label: u32,
    number: u64,
    mix: Mix,
}

impl<'d, D: Device + ?Sized> Round<'_, 'd, D> {
    /// Opens the next handle, takes `label % 3` extra locks on it, and checks the counts.
    fn open_one(
        &mut self,
        r: &mut Recorder,
        device: &'d D,
        open: &mut Opened<'d, D>,
    ) -> Result<(), Stop> {
        self.label += 1;
        let n = self.label;
        let session = r.require(format!("open handle #{n}"), Session::open(device))?;
        let extra = n % 3;
        for _ in 0..extra {
            r.require(format!("LOCK on handle #{n}"), session.lock())?;
        }
        open.push((n, session, extra));
        self.step(r, open, &format!("opened handle #{n} with {extra} extra locks"))
    }

    /// Checks the totals through the querying handle, and what one open handle holds.
    fn step(&mut self, r: &mut Recorder, open: &Opened<'d, D>, what: &str) -> Result<(), Stop> {
        let round = self.number;
        let handles = self.base.open_handles + count(open.len());
        let state = r.require("QUERY_STATE", settled(self.probe, handles))?;
        let locks = self.base.sections[0].lock_count
            + open.iter().map(|(_, _, extra)| 1 + extra).sum::<u32>();
        let seen = lock_counts(&state);
        r.check(
            format!("round {round}, {what}: locks per section and open handles"),
            format!("{} locks, {handles} handles", summarize(&[locks; SECTION_COUNT])),
            format!("{} locks, {} handles", summarize(&seen), state.open_handles),
            seen.iter().all(|&count| count == locks) && state.open_handles == handles,
        );
        if !open.is_empty() {
            let (n, session, extra) = &open[self.mix.below(open.len())];
            let own = r.require(format!("QUERY_STATE on handle #{n}"), session.query())?;
            let held = own.sections.map(|section| section.held_by_caller);
            r.check(
                format!("round {round}, {what}: what handle #{n} holds"),
                format!("{} locks, {extra} extra", summarize(&[1 + extra; SECTION_COUNT])),
                format!("{} locks, {} extra", summarize(&held), own.caller_extra_locks),
                held.iter().all(|&count| count == 1 + extra) && own.caller_extra_locks == *extra,
            );
        }
        Ok(())
    }
}

/// A request built to be refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// What is wrong with it.
    pub what: String,
    /// The control code.
    pub code: u32,
    /// The input bytes.
    pub input: Vec<u8>,
    /// The output capacity offered.
    pub output_capacity: usize,
    /// The status the protocol documents for it.
    pub expected: i32,
}

impl BadRequest {
    fn new(what: &str, code: u32, input: &[u8], output_capacity: usize, expected: i32) -> Self {
        Self {
            what: format!("{}: {what}", code_name(code)),
            code,
            input: input.to_vec(),
            output_capacity,
            expected,
        }
    }
}

/// Every malformed request of the bad-input scenario: for each IOCTL no buffers, a short
/// input, a short output, an oversized input and bad values, then unknown codes.
#[must_use]
pub fn bad_requests() -> Vec<BadRequest> {
    use protocol::{BenchReply, LockReply, RunReply};
    let too_small = status::BUFFER_TOO_SMALL;
    let invalid = status::INVALID_PARAMETER;
    let mut requests = Vec::new();

    // The codes that take no input.
    for (code, reply) in [
        (protocol::IOCTL_QUERY_STATE, size_of::<StateReply>()),
        (protocol::IOCTL_LOCK, size_of::<LockReply>()),
        (protocol::IOCTL_UNLOCK, size_of::<LockReply>()),
    ] {
        requests.push(BadRequest::new("no buffers", code, &[], 0, too_small));
        let short = format!("output of {} bytes", reply - 1);
        requests.push(BadRequest::new(&short, code, &[], reply - 1, too_small));
        requests.push(BadRequest::new("an input of 1 byte", code, &[0], reply, invalid));
        requests.push(BadRequest::new("an input of 16 bytes", code, &[0; 16], reply, invalid));
    }

    let run = RunRequest::new(1, 7);
    let mut values = vec![
        ("0 iterations".to_owned(), RunRequest::new(0, 7).as_bytes().to_vec()),
        (
            format!("{} iterations", MAX_RUN_ITERATIONS + 1),
            RunRequest::new(MAX_RUN_ITERATIONS + 1, 7).as_bytes().to_vec(),
        ),
        ("u32::MAX iterations".to_owned(), RunRequest::new(u32::MAX, 7).as_bytes().to_vec()),
    ];
    for version in [0, PROTOCOL_VERSION + 1] {
        values.push((
            format!("version {version}"),
            RunRequest { version, ..run }.as_bytes().to_vec(),
        ));
    }
    let code = protocol::IOCTL_RUN_LOCKED;
    requests.extend(with_input(code, run.as_bytes(), size_of::<RunReply>(), values));

    let bench = BenchRequest::new(1);
    let mut values = vec![
        ("0 iterations".to_owned(), BenchRequest::new(0).as_bytes().to_vec()),
        (
            format!("{} iterations", MAX_BENCH_ITERATIONS + 1),
            BenchRequest::new(MAX_BENCH_ITERATIONS + 1).as_bytes().to_vec(),
        ),
    ];
    for version in [0, PROTOCOL_VERSION + 1] {
        let request = BenchRequest { version, ..bench };
        values.push((format!("version {version}"), request.as_bytes().to_vec()));
    }
    let code = protocol::IOCTL_BENCH;
    requests.extend(with_input(code, bench.as_bytes(), size_of::<BenchReply>(), values));

    requests.extend(unknown_codes());
    requests
}

/// The bad requests of a code that takes an input: `valid` is a good one, `values` are inputs
/// of the right size with bad values.
fn with_input(
    code: u32,
    valid: &[u8],
    reply: usize,
    values: Vec<(String, Vec<u8>)>,
) -> Vec<BadRequest> {
    let too_small = status::BUFFER_TOO_SMALL;
    let invalid = status::INVALID_PARAMETER;
    let short = &valid[..valid.len() - 1];
    let mut long = valid.to_vec();
    long.push(0);
    let mut requests = vec![
        BadRequest::new("no buffers", code, &[], 0, too_small),
        BadRequest::new("no input", code, &[], reply, too_small),
        BadRequest::new(&format!("input of {} bytes", short.len()), code, short, reply, too_small),
        BadRequest::new(
            &format!("output of {} bytes", reply - 1),
            code,
            valid,
            reply - 1,
            too_small,
        ),
        BadRequest::new(&format!("input of {} bytes", long.len()), code, &long, reply, invalid),
    ];
    for (what, input) in values {
        requests.push(BadRequest::new(&what, code, &input, reply, invalid));
    }
    requests
}

/// Codes the driver does not implement, each offered buffers that would fit any reply: the
/// neighbours of its codes, and `QUERY_STATE`'s function with another device type, another
/// transfer method or other access bits.
fn unknown_codes() -> Vec<BadRequest> {
    use protocol::ctl_code;
    let query = (protocol::IOCTL_QUERY_STATE >> 2) & 0xFFF;
    let device = protocol::DEVICE_TYPE;
    let read = protocol::FILE_READ_ACCESS;
    let buffered = protocol::METHOD_BUFFERED;
    [
        ("the function after the last IOCTL", ctl_code(device, 0x805, buffered, read)),
        ("a function below the vendor range", ctl_code(device, 0x7FF, buffered, read)),
        (
            "QUERY_STATE's function on FILE_DEVICE_UNKNOWN (0x22)",
            ctl_code(0x22, query, buffered, read),
        ),
        (
            "QUERY_STATE's function on device type 0x8338",
            ctl_code(device + 1, query, buffered, read),
        ),
        ("QUERY_STATE's function with METHOD_NEITHER", ctl_code(device, query, 3, read)),
        ("QUERY_STATE's function with METHOD_OUT_DIRECT", ctl_code(device, query, 2, read)),
        ("QUERY_STATE's function with FILE_ANY_ACCESS", ctl_code(device, query, buffered, 0)),
        ("code 0", 0),
    ]
    .into_iter()
    .map(|(what, code)| BadRequest {
        what: format!("unknown code {code:#010x} ({what})"),
        code,
        input: vec![0; 16],
        output_capacity: size_of::<StateReply>(),
        expected: status::INVALID_DEVICE_REQUEST,
    })
    .collect()
}

/// Every malformed request is answered with its documented status and no reply.
///
/// After each, `QUERY_STATE` on the same handle works and shows that nothing changed. The handle holds one
/// extra lock throughout, so a wrongly accepted `LOCK` or `UNLOCK` shows in the counts.
pub fn bad_input<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::BadInput, device, |r, device| {
        let session = r.require("open a handle", Session::open(device))?;
        r.require("LOCK, so that a wrong UNLOCK would show", session.lock())?;
        // Earlier scenarios' closes must not show up as changes below.
        r.require("QUERY_STATE", settled(&session, 1))?;
        for request in bad_requests() {
            let before = r.require("QUERY_STATE", session.query())?;
            let reply = session.raw(request.code, &request.input, request.output_capacity)?;
            r.check(
                format!("{}: status", request.what),
                status_text(request.expected),
                reply_text(reply.status, reply.output.len()),
                reply.status == request.expected && reply.output.is_empty(),
            );
            match session.query() {
                Ok(after) => {
                    r.eq(
                        format!("{}: QUERY_STATE afterwards", request.what),
                        "no change".to_owned(),
                        describe_changes(&state_changes(&before, &after)),
                    );
                }
                Err(Failure::Transport(error)) => return Err(error.into()),
                Err(failure) => {
                    r.check(
                        format!("{}: QUERY_STATE afterwards", request.what),
                        "no change",
                        format!("the handle no longer works: {failure}"),
                        false,
                    );
                }
            }
        }
        r.require("UNLOCK", session.unlock())?;
        session.close()?;
        Ok(())
    })
}

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

    fn verdict(fault: Fault, scenario: Scenario) -> Verdict {
        scenario.run(&Model::with(fault))
    }

    #[test]
    fn every_scenario_passes_against_a_driver_that_follows_the_protocol() {
        let model = Model::correct();
        let verdicts = run(&model, Selection::All);
        assert_eq!(verdicts.len(), Scenario::ALL.len());
        for verdict in &verdicts {
            assert!(verdict.passed(), "{}", render(std::slice::from_ref(verdict), false));
        }
        assert_eq!(model.lock_count(), 0, "the suite closed every handle it opened");
    }

    #[test]
    fn the_suite_can_run_twice_on_the_same_driver() {
        let model = Model::correct();
        assert!(all_passed(&run(&model, Selection::All)));
        assert!(all_passed(&run(&model, Selection::All)));
    }

    #[test]
    fn idle_fails_when_a_lock_is_left_over() {
        let verdict = verdict(Fault::StaleLock, Scenario::Idle);
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what.contains("equal what it holds") && c.seen == "2")
        );
    }

    #[test]
    fn idle_fails_when_open_handles_are_miscounted() {
        assert!(!verdict(Fault::MiscountsHandles, Scenario::Idle).passed());
    }

    #[test]
    fn lifecycle_fails_when_close_leaks_a_lock() {
        let verdict = verdict(Fault::LeakOnClose, Scenario::Lifecycle);
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what.starts_with("after closing handle #1: locks on"))
        );
    }

    #[test]
    fn nested_locks_fails_when_unlock_goes_below_zero() {
        let verdict = verdict(Fault::UnlockWithoutLock, Scenario::NestedLocks);
        assert!(!verdict.passed());
        let failure = verdict.failures().next().expect("a failed check");
        assert_eq!(failure.what, "UNLOCK with no extra lock held: status");
        assert_eq!(failure.seen, "STATUS_SUCCESS (0x00000000), 8 bytes");
    }

    #[test]
    fn nested_locks_fails_when_lock_has_no_limit() {
        let verdict = verdict(Fault::LockWithoutLimit, Scenario::NestedLocks);
        assert!(verdict.failures().any(|c| c.what == "LOCK at the limit: status"));
    }

    #[test]
    fn nested_locks_fails_when_close_keeps_extra_locks() {
        let verdict = verdict(Fault::ExtraLocksSurviveClose, Scenario::NestedLocks);
        assert!(
            verdict.failures().any(|c| c.what.starts_with("closed with 5 extra locks: locks on"))
        );
    }

    #[test]
    fn run_locked_fails_on_a_wrong_checksum_or_irql() {
        let wrong = verdict(Fault::WrongChecksum, Scenario::RunLocked);
        assert!(wrong.failures().any(|c| c.what.ends_with("checksum")));
        let passive = verdict(Fault::RunsAtPassive, Scenario::RunLocked);
        assert!(passive.failures().all(|c| c.what.ends_with("IRQL")));
        assert!(!passive.passed());
    }

    #[test]
    fn many_handles_fails_when_held_counts_are_not_per_handle() {
        let verdict = verdict(Fault::HeldCountsEveryHandle, Scenario::ManyHandles);
        assert!(!verdict.passed());
        assert!(verdict.failures().all(|c| c.what.contains("holds")));
    }

    #[test]
    fn many_handles_fails_when_close_keeps_extra_locks() {
        assert!(!verdict(Fault::ExtraLocksSurviveClose, Scenario::ManyHandles).passed());
    }

    #[test]
    fn bad_input_fails_when_an_oversized_input_is_accepted() {
        let verdict = verdict(Fault::AcceptsOversizedInput, Scenario::BadInput);
        let failed: Vec<_> = verdict.failures().map(|c| c.what.as_str()).collect();
        assert!(failed.contains(&"UNLOCK: an input of 1 byte: status"), "{failed:?}");
        assert!(failed.contains(&"UNLOCK: an input of 1 byte: QUERY_STATE afterwards"));
        assert!(failed.contains(&"RUN_LOCKED: input of 17 bytes: QUERY_STATE afterwards"));
        assert!(!failed.iter().any(|what| what.contains("no buffers")));
    }

    #[test]
    fn bad_input_fails_when_a_refusal_changes_state() {
        let verdict = verdict(Fault::RefusalChangesState, Scenario::BadInput);
        let failure = verdict.failures().next().expect("a failed check");
        assert_eq!(failure.seen, "runs 0 -> 1");
    }

    #[test]
    fn bad_input_fails_when_an_unknown_code_succeeds() {
        let verdict = verdict(Fault::AcceptsUnknownCodes, Scenario::BadInput);
        assert_eq!(verdict.failures().count(), 8);
        assert!(verdict.failures().all(|c| c.what.starts_with("unknown code")));
    }

    #[test]
    fn bad_input_covers_every_ioctl_and_unknown_codes() {
        let requests = bad_requests();
        for (code, name) in protocol::IOCTLS {
            let of_code: Vec<_> = requests.iter().filter(|r| r.code == code).collect();
            assert!(of_code.iter().any(|r| r.what.ends_with("no buffers")), "{name}");
            assert!(
                of_code
                    .iter()
                    .any(|r| r.expected == status::BUFFER_TOO_SMALL && r.output_capacity > 0),
                "{name}: short output"
            );
            assert!(
                of_code.iter().any(|r| r.expected == status::INVALID_PARAMETER),
                "{name}: oversized input"
            );
        }
        let unknown: Vec<_> =
            requests.iter().filter(|r| r.expected == status::INVALID_DEVICE_REQUEST).collect();
        assert!(unknown.iter().any(|r| r.code >> 16 != protocol::DEVICE_TYPE));
        assert!(unknown.iter().any(|r| r.code & 3 == 3));
        assert!(requests.iter().all(|r| protocol::IOCTLS.iter().all(|&(code, _)| code != r.code)
            || r.expected != status::INVALID_DEVICE_REQUEST));
    }

    #[test]
    fn bench_fails_on_zero_ticks_and_notes_the_ratio() {
        let verdict = verdict(Fault::ZeroTicks, Scenario::Bench);
        assert_eq!(verdict.failures().count(), 2);
        let good = bench(&Model::correct());
        assert!(good.passed());
        assert_eq!(good.notes.len(), 1);
        assert!(
            good.notes[0].starts_with("lock by address / lock by handle = 13.7"),
            "{}",
            good.notes[0]
        );
    }

    #[test]
    fn shared_handle_fails_when_concurrent_unlocks_release_too_much() {
        let verdict = verdict(Fault::SharedHandleUnlocksTwice, Scenario::SharedHandle);
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what.contains("locks on")),
            "{}",
            render(&[verdict], true)
        );
        // The other scenarios use no overlapped handle and still pass against it.
        assert!(
            super::tests::verdict(Fault::SharedHandleUnlocksTwice, Scenario::NestedLocks).passed()
        );
    }

    #[test]
    fn every_scenario_can_fail() {
        let faults = [
            (Scenario::Idle, Fault::StaleLock),
            (Scenario::Lifecycle, Fault::LeakOnClose),
            (Scenario::NestedLocks, Fault::UnlockWithoutLock),
            (Scenario::RunLocked, Fault::WrongChecksum),
            (Scenario::ManyHandles, Fault::HeldCountsEveryHandle),
            (Scenario::SharedHandle, Fault::SharedHandleUnlocksTwice),
            (Scenario::BadInput, Fault::AcceptsOversizedInput),
            (Scenario::Bench, Fault::ZeroTicks),
        ];
        for scenario in Scenario::ALL {
            let (_, fault) =
                faults.iter().find(|(s, _)| *s == scenario).expect("a fault per scenario");
            assert!(!verdict(*fault, scenario).passed(), "{scenario} passed against {fault:?}");
        }
    }

    #[test]
    fn selection_parses_all_and_each_name() {
        assert_eq!("all".parse(), Ok(Selection::All));
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse(), Ok(Selection::One(scenario)));
        }
        let error = "everything".parse::<Selection>().unwrap_err();
        assert!(error.contains("idle, lifecycle, nested-locks"), "{error}");
    }

    #[test]
    fn render_shows_failed_checks_with_expected_and_seen() {
        let verdicts = vec![idle(&Model::correct()), verdict(Fault::StaleLock, Scenario::Idle)];
        let text = render(&verdicts, false);
        assert!(text.starts_with("PASS  idle"), "{text}");
        assert!(text.contains("FAIL  idle"));
        assert!(text.contains("      FAILED: only this handle open: locks on PAGELK equal what it holds\n        expected: 1\n        seen:     2\n"), "{text}");
        assert!(text.ends_with("scenarios: 1 passed, 1 failed\n"));
        assert!(!text.contains(": ok"));
        assert!(render(&verdicts[..1], true).contains("      ok: open handles"));
    }

    #[test]
    fn a_transport_failure_stops_the_scenario_and_fails_it() {
        struct Broken;
        impl Device for Broken {
            type Handle = ();
            fn open(&self) -> Result<Result<(), i32>, TransportError> {
                Err(TransportError("the device went away".into()))
            }
            fn control(
                &self,
                (): &(),
                _: u32,
                _: &[u8],
                _: usize,
            ) -> Result<crate::device::Reply, TransportError> {
                unreachable!()
            }
            fn close(&self, (): ()) -> Result<(), TransportError> {
                Ok(())
            }
        }
        let verdicts = run(&Broken, Selection::All);
        assert!(verdicts.iter().all(|v| !v.passed() && v.transport_error.is_some()));
        assert!(
            render(&verdicts, false).contains("stopped by a transport error: the device went away")
        );
    }

    #[test]
    fn a_refused_open_fails_the_scenario_with_its_status() {
        struct Denied;
        impl Device for Denied {
            type Handle = ();
            fn open(&self) -> Result<Result<(), i32>, TransportError> {
                Ok(Err(status::ACCESS_DENIED))
            }
            fn control(
                &self,
                (): &(),
                _: u32,
                _: &[u8],
                _: usize,
            ) -> Result<crate::device::Reply, TransportError> {
                unreachable!()
            }
            fn close(&self, (): ()) -> Result<(), TransportError> {
                Ok(())
            }
        }
        let verdict = idle(&Denied);
        assert!(!verdict.passed());
        assert_eq!(verdict.checks[0].seen, "STATUS_ACCESS_DENIED (0xC0000022)");
    }
}
