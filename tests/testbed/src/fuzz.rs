//! IRP-sequence fuzzing and the concurrency run, against pagelock.sys on the bed.
//!
//! The fuzzer drives random sequences of opens, control requests (valid and invalid codes,
//! boundary and random buffer sizes, random contents) and closes over several handles, keeps a
//! model of the locks every open handle should hold, and at every quiescent point (no IRP in
//! flight) checks that the memory manager's lock counts, the counts the driver reports and the
//! model agree, that every reply has its documented status, and that no verifier rule fired.
//! Waits (`WAIT`) are left pending on their handles and end by `SIGNAL`, by a cancel, by their
//! handle's close or by their timer; the model keeps, for each, the outcomes it may end with,
//! and when none is pending the bed must hold no IRP at all. A failure is shrunk to a minimal
//! sequence, replayed from scratch each time; everything follows from the seed.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use pagelock_protocol::{
    self as protocol, BenchRequest, IOCTL_BENCH, IOCTL_LOCK, IOCTL_QUERY_STATE, IOCTL_RUN_LOCKED,
    IOCTL_SIGNAL, IOCTL_UNLOCK, IOCTL_WAIT, MAX_EXTRA_LOCKS, RunRequest, SignalReply,
    SignalRequest, SignalScope, StateReply, WaitOutcome, WaitReply, WaitRequest, status,
    zerocopy::{FromBytes, IntoBytes},
};
use serde::{Deserialize, Serialize};

use crate::{
    bed::{Bed, Handle, Options, Pending},
    isolate::isolated,
};

/// Options of a fuzz or stress run: the default rules, without the per-step trace.
fn quiet() -> Options {
    Options { trace: false, ..Options::default() }
}

/// What one sequence came to, carried out of its child process.
#[derive(Serialize, Deserialize)]
struct Outcome {
    failure: Option<Failure>,
    irps: u64,
    /// The sequence ended with a service stop.
    #[serde(default)]
    stopped: bool,
}

/// Most handles open at once.
const MAX_HANDLES: usize = 6;
/// Most waits the fuzzer leaves pending on one handle (far below the driver's cap).
const MAX_WAITS: usize = 4;

/// One step of a sequence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Op {
    /// Open a handle.
    Open,
    /// Close the handle in this slot (modulo the open ones).
    Close(usize),
    /// Send a control request on a handle.
    Control {
        /// Handle slot (modulo the open ones).
        handle: usize,
        /// The code.
        code: u32,
        /// The input bytes.
        input: Vec<u8>,
        /// The output capacity.
        output: usize,
    },
    /// Send a `WAIT` overlapped on a handle and leave it pending.
    Wait {
        /// Handle slot (modulo the open ones).
        handle: usize,
        /// Its timeout (0 and above the maximum are refused).
        timeout_ms: u32,
        /// Its cookie.
        cookie: u64,
    },
    /// Send `SIGNAL` on a handle: every wait, or the handle's own.
    Signal {
        /// Handle slot (modulo the open ones).
        handle: usize,
        /// All waits (otherwise the handle's).
        all: bool,
    },
    /// Cancel every request of a handle (`CancelIoEx`).
    Cancel(usize),
    /// Wait for the oldest pending wait of a handle to end, and check how it ended.
    Finish(usize),
    /// Send several control requests at once, one per emulated CPU, under the schedule of
    /// `seed` (the handles are opened for overlapped I/O, so several may be on one handle), and
    /// close a handle from one more CPU if the batch holds an [`Op::Close`].
    Parallel {
        /// The schedule's seed.
        seed: u64,
        /// The requests, each an [`Op::Control`], and at most one [`Op::Close`] that counts.
        requests: Vec<Self>,
        /// When the batch closes the only open handle: stop the driver's service first, so
        /// that `DriverUnload` runs as that close returns, on the closing CPU, while the
        /// others' requests may still be on their way back through the driver. The sequence
        /// ends there.
        #[serde(default)]
        stop: bool,
    },
}

/// A deterministic generator (`SplitMix64`), so that a seed reproduces a run.
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub const fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        protocol::splitmix64(self.0)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const fn sizes(size: usize) -> [usize; 5] {
    [0, size.saturating_sub(1), size, size + 1, 64]
}

/// A random step; with `threads` above 1, a third of the steps are [`Op::Parallel`] batches of
/// `threads` requests, half of them all on one handle, and a third of those with a close of
/// that handle too.
pub fn random_op(rng: &mut Rng, threads: usize) -> Op {
    if threads > 1 && rng.below(3) == 0 {
        let seed = rng.next();
        let same = (rng.below(2) == 0).then(|| rng.below(MAX_HANDLES));
        let mut requests: Vec<Op> = (0..threads)
            .map(|_| {
                let mut op = random_control(rng);
                if let (Op::Control { handle, .. }, Some(slot)) = (&mut op, same) {
                    *handle = slot;
                }
                op
            })
            .collect();
        // One batch on one handle in three also closes it, from one more CPU, while the
        // others' requests may be in the driver.
        let stop = if let (Some(slot), 0) = (same, rng.below(3)) {
            requests.push(Op::Close(slot));
            // One closing batch in four also stops the service, by its seed's low bits (no draw
            // of its own, so the sequences of a seed stay what they were).
            seed.is_multiple_of(4)
        } else {
            false
        };
        return Op::Parallel { seed, requests, stop };
    }
    match rng.below(16) {
        0 | 1 => Op::Open,
        2 | 3 => Op::Close(rng.below(MAX_HANDLES)),
        4 | 5 => Op::Wait {
            handle: rng.below(MAX_HANDLES),
            timeout_ms: rng.pick(&[1, 10, 50, 1000, 0, protocol::MAX_WAIT_MS + 1]),
            cookie: rng.next(),
        },
        6 => Op::Signal { handle: rng.below(MAX_HANDLES), all: rng.below(2) == 0 },
        7 => Op::Cancel(rng.below(MAX_HANDLES)),
        8 => Op::Finish(rng.below(MAX_HANDLES)),
        _ => random_control(rng),
    }
}

/// A random control request.
fn random_control(rng: &mut Rng) -> Op {
    let handle = rng.below(MAX_HANDLES);
    let code = match rng.below(10) {
        0 => IOCTL_QUERY_STATE,
        1 | 2 => IOCTL_RUN_LOCKED,
        3 => IOCTL_LOCK,
        4 => IOCTL_UNLOCK,
        5 => IOCTL_BENCH,
        6 => IOCTL_WAIT,
        7 => IOCTL_SIGNAL,
        8 => protocol::ctl_code(
            protocol::DEVICE_TYPE,
            0x800 + u32::try_from(rng.below(16)).unwrap_or(0),
            rng.pick(&[0, 1, 2, 3]),
            rng.pick(&[0, 1, 2, 3]),
        ),
        _ => u32::try_from(rng.next() & 0xFFFF_FFFF).unwrap_or(0),
    };
    let input = match (code, rng.below(4)) {
        (IOCTL_RUN_LOCKED, 0 | 1) => {
            let iterations = rng.pick(&[
                0,
                1,
                2,
                100,
                protocol::MAX_RUN_ITERATIONS,
                protocol::MAX_RUN_ITERATIONS + 1,
            ]);
            RunRequest::new(iterations, rng.next()).as_bytes().to_vec()
        }
        (IOCTL_BENCH, 0 | 1) => {
            BenchRequest::new(rng.pick(&[0, 1, 10, protocol::MAX_BENCH_ITERATIONS + 1]))
                .as_bytes()
                .to_vec()
        }
        (IOCTL_WAIT, 0..=2) => {
            // Sent and waited for: short timeouts, so that the timer ends them soon.
            WaitRequest::new(rng.pick(&[1, 5, 20, 0]), rng.next()).as_bytes().to_vec()
        }
        (IOCTL_SIGNAL, 0..=2) => {
            let scope = if rng.below(2) == 0 { SignalScope::All } else { SignalScope::Caller };
            SignalRequest::new(scope).as_bytes().to_vec()
        }
        (IOCTL_QUERY_STATE | IOCTL_LOCK | IOCTL_UNLOCK, 0..=2) => Vec::new(),
        _ => {
            let len = rng.pick(&sizes(16));
            (0..len).map(|_| u8::try_from(rng.next() & 0xFF).unwrap_or(0)).collect()
        }
    };
    let output = rng.pick(&[0, 7, 8, 15, 16, 31, 32, 95, 96, 97, 256]);
    Op::Control { handle, code, input, output }
}

/// What one handle should hold, by the protocol.
struct Model {
    handle: Handle,
    extra: u32,
    /// Its pending waits, oldest first.
    waits: Vec<WaitModel>,
}

/// Outcomes a pending wait may end with (a set of bits).
const EXPIRED: u8 = 1;
const SIGNALLED: u8 = 2;
const CANCELLED: u8 = 4;

/// A wait the fuzzer left pending, and what it may have become.
struct WaitModel {
    pending: Pending,
    cookie: u64,
    /// Outcomes it may have ended with so far; none while it is surely still queued (nothing
    /// that could end it has happened since it was sent).
    possible: u8,
    /// Surely ended (signalled, cancelled or closed while it could still be queued).
    ended: bool,
}

impl WaitModel {
    /// Surely still queued.
    const fn queued(&self) -> bool {
        self.possible == 0
    }

    /// Something may have let time run (a batch on the bed's CPUs): it may have expired.
    const fn may_expire(&mut self) {
        if !self.ended {
            self.possible |= EXPIRED;
        }
    }

    /// Something may have ended it with `outcome`, before or after whatever else did: the
    /// order of a concurrent batch is not known.
    const fn may_end_with(&mut self, outcome: u8) {
        self.possible |= outcome;
        self.ended = true;
    }

    /// Something ended it if it was still queued, with `outcome`.
    const fn end_with(&mut self, outcome: u8) {
        if !self.ended {
            self.possible |= outcome;
            self.ended = true;
        }
    }
}

/// Finishes `wait` and checks how it ended against the outcomes it may have.
fn finish_wait(bed: &Bed, mut wait: WaitModel) -> Result<(), String> {
    // Finishing waits for it: until it ends, the idle CPU lets its timer fire.
    wait.may_expire();
    let (got, reply) = bed.finish(wait.pending);
    if got == status::CANCELLED {
        return if wait.possible & CANCELLED != 0 && reply.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "a wait ended cancelled ({} bytes), possible {:#b}",
                reply.len(),
                wait.possible
            ))
        };
    }
    if got != status::SUCCESS {
        return Err(format!("a wait ended with {got:#x}"));
    }
    let Ok(reply) = WaitReply::read_from_bytes(&reply) else {
        return Err(format!("a wait's reply is {} bytes", reply.len()));
    };
    let outcome = match WaitOutcome::from_u32(reply.outcome) {
        Some(WaitOutcome::Expired) => EXPIRED,
        Some(WaitOutcome::Signalled) => SIGNALLED,
        _ => 0,
    };
    if reply.cookie != wait.cookie || outcome & wait.possible == 0 {
        return Err(format!(
            "a wait (cookie {:#x}, possible {:#b}) replied {reply:?}",
            wait.cookie, wait.possible
        ));
    }
    Ok(())
}

/// Closes a handle with its waits pending (cleanup cancels them) and checks each.
fn close_with_waits(bed: &Bed, mut model: Model) -> Result<(), String> {
    for wait in &mut model.waits {
        wait.end_with(CANCELLED);
    }
    bed.close(model.handle);
    model.waits.into_iter().try_for_each(|wait| finish_wait(bed, wait))
}

/// Why a sequence failed, at which step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    /// Index of the step after which the check failed.
    pub step: usize,
    /// What was wrong.
    pub reason: String,
}

fn query(bed: &Bed, handle: &Handle) -> Option<StateReply> {
    let (status, bytes) = bed.control(handle, IOCTL_QUERY_STATE, &[], size_of::<StateReply>());
    if status != status::SUCCESS {
        return None;
    }
    StateReply::read_from_bytes(&bytes).ok()
}

/// Expected status of a control request, from the protocol's rules.
fn expected_status(code: u32, input: &[u8], output: usize, extra: u32) -> i32 {
    let too_small = |reply: usize| output < reply;
    match code {
        IOCTL_QUERY_STATE => {
            if too_small(size_of::<StateReply>()) {
                status::BUFFER_TOO_SMALL
            } else if !input.is_empty() {
                status::INVALID_PARAMETER
            } else {
                status::SUCCESS
            }
        }
        IOCTL_LOCK | IOCTL_UNLOCK => {
            if too_small(size_of::<protocol::LockReply>()) {
                status::BUFFER_TOO_SMALL
            } else if !input.is_empty() {
                status::INVALID_PARAMETER
            } else if (code == IOCTL_LOCK && extra >= MAX_EXTRA_LOCKS)
                || (code == IOCTL_UNLOCK && extra == 0)
            {
                status::INVALID_DEVICE_STATE
            } else {
                status::SUCCESS
            }
        }
        IOCTL_RUN_LOCKED => {
            if too_small(size_of::<protocol::RunReply>()) {
                status::BUFFER_TOO_SMALL
            } else {
                match protocol::decode::<RunRequest>(input) {
                    Err(protocol::RequestError::BufferTooSmall) => status::BUFFER_TOO_SMALL,
                    Err(protocol::RequestError::InvalidParameter) => status::INVALID_PARAMETER,
                    Ok(r) if !r.is_valid() => status::INVALID_PARAMETER,
                    Ok(_) => status::SUCCESS,
                }
            }
        }
        IOCTL_BENCH => {
            if too_small(size_of::<protocol::BenchReply>()) {
                status::BUFFER_TOO_SMALL
            } else {
                match protocol::decode::<BenchRequest>(input) {
                    Err(protocol::RequestError::BufferTooSmall) => status::BUFFER_TOO_SMALL,
                    Err(protocol::RequestError::InvalidParameter) => status::INVALID_PARAMETER,
                    Ok(r) if !r.is_valid() => status::INVALID_PARAMETER,
                    Ok(_) => status::SUCCESS,
                }
            }
        }
        IOCTL_WAIT => {
            if too_small(size_of::<WaitReply>()) {
                status::BUFFER_TOO_SMALL
            } else {
                match protocol::decode::<WaitRequest>(input) {
                    Err(protocol::RequestError::BufferTooSmall) => status::BUFFER_TOO_SMALL,
                    Err(protocol::RequestError::InvalidParameter) => status::INVALID_PARAMETER,
                    Ok(r) if !r.is_valid() => status::INVALID_PARAMETER,
                    // Sent synchronously: it ends by its timer, the caller waiting for it.
                    Ok(_) => status::SUCCESS,
                }
            }
        }
        IOCTL_SIGNAL => {
            if too_small(size_of::<SignalReply>()) {
                status::BUFFER_TOO_SMALL
            } else {
                match protocol::decode::<SignalRequest>(input) {
                    Err(protocol::RequestError::BufferTooSmall) => status::BUFFER_TOO_SMALL,
                    Err(protocol::RequestError::InvalidParameter) => status::INVALID_PARAMETER,
                    Ok(r) if r.scope().is_none() => status::INVALID_PARAMETER,
                    Ok(_) => status::SUCCESS,
                }
            }
        }
        // Every other code; the fuzzer's handles have read and write access, so the I/O
        // manager's access check passes them all to the driver.
        _ => status::INVALID_DEVICE_REQUEST,
    }
}

/// What a reply must hold beyond its status: nothing on failure, the right checksum at
/// `DISPATCH_LEVEL` from `RUN_LOCKED`.
fn check_reply(code: u32, input: &[u8], got: i32, reply: &[u8]) -> Result<(), String> {
    if !status::is_success(got) && !reply.is_empty() {
        return Err(format!("code {code:#x} failed but returned {} bytes", reply.len()));
    }
    if got == status::SUCCESS && code == IOCTL_WAIT {
        let request = WaitRequest::read_from_bytes(input).unwrap_or_default();
        let reply = WaitReply::read_from_bytes(reply).unwrap_or_default();
        let outcome = WaitOutcome::from_u32(reply.outcome);
        if reply.cookie != request.cookie
            || !matches!(outcome, Some(WaitOutcome::Expired | WaitOutcome::Signalled))
        {
            return Err(format!("WAIT replied {reply:?} for {request:?}"));
        }
    }
    if got == status::SUCCESS && code == IOCTL_RUN_LOCKED {
        let request = RunRequest::read_from_bytes(input).unwrap_or_default();
        let reply = protocol::RunReply::read_from_bytes(reply).unwrap_or_default();
        if reply.checksum != protocol::checksum(request.seed, request.iterations)
            || reply.irql != protocol::DISPATCH_LEVEL
        {
            return Err(format!("RUN_LOCKED replied {reply:?} for {request:?}"));
        }
    }
    Ok(())
}

/// Runs `ops` on a loaded bed, checking after every step. Returns the first failure. A
/// sequence with [`Op::Parallel`] or [`Op::Wait`] steps opens its handles for overlapped I/O.
pub fn check_sequence(bed: &Bed, ops: &[Op], irps: &mut u64) -> Option<Failure> {
    // Waits left pending and concurrent batches need overlapped handles: a synchronous
    // handle lets one request in at a time, and a pending wait would hold it.
    let overlapped = ops.iter().any(|op| matches!(op, Op::Parallel { .. } | Op::Wait { .. }));
    let mut sequence = Sequence { bed, open: Vec::new(), overlapped, irps };
    for (step, op) in ops.iter().enumerate() {
        if let Err(reason) = sequence.step(op).and_then(|()| sequence.check_quiescent()) {
            return Some(Failure { step, reason });
        }
        if bed.stopped() {
            // The driver is unloaded: nothing after the stop can reach it.
            break;
        }
    }
    let reason = sequence.close_all().err().or_else(|| {
        bed.unload();
        bed.violations().first().map(|v| format!("verifier rule {}: {}", v.rule, v.detail))
    })?;
    Some(Failure { step: ops.len(), reason })
}

/// A sequence being run: the bed, the model of its open handles, and the IRPs sent.
struct Sequence<'a> {
    bed: &'a Bed,
    open: Vec<Model>,
    /// Handles are opened for overlapped I/O.
    overlapped: bool,
    irps: &'a mut u64,
}

impl Sequence<'_> {
    /// Runs one step.
    fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Open => self.open(),
            Op::Close(slot) => match self.slot(*slot) {
                Some(index) => {
                    *self.irps += 2;
                    close_with_waits(self.bed, self.open.remove(index))
                }
                None => Ok(()),
            },
            Op::Control { handle, code, input, output } => self
                .slot(*handle)
                .map_or(Ok(()), |index| self.control(index, *code, input, *output)),
            Op::Wait { handle, timeout_ms, cookie } => {
                self.slot(*handle).map_or(Ok(()), |index| self.wait(index, *timeout_ms, *cookie))
            }
            Op::Signal { handle, all } => {
                self.slot(*handle).map_or(Ok(()), |index| self.signal(index, *all))
            }
            Op::Cancel(slot) => {
                if let Some(index) = self.slot(*slot) {
                    self.bed.cancel_all(&self.open[index].handle);
                    self.open[index].waits.iter_mut().for_each(|w| w.end_with(CANCELLED));
                }
                Ok(())
            }
            Op::Finish(slot) => match self.slot(*slot) {
                Some(index) if !self.open[index].waits.is_empty() => {
                    let wait = self.open[index].waits.remove(0);
                    // Its timer may fire for the others too while this one is waited for.
                    self.waits().for_each(WaitModel::may_expire);
                    finish_wait(self.bed, wait)
                }
                _ => Ok(()),
            },
            Op::Parallel { seed, requests, stop } => self.parallel(*seed, requests, *stop),
        }
    }

    /// The open handle a slot names (modulo the open ones), if any is open.
    const fn slot(&self, slot: usize) -> Option<usize> {
        if self.open.is_empty() { None } else { Some(slot % self.open.len()) }
    }

    /// Every pending wait of every open handle.
    fn waits(&mut self) -> impl Iterator<Item = &mut WaitModel> {
        self.open.iter_mut().flat_map(|m| m.waits.iter_mut())
    }

    fn open(&mut self) -> Result<(), String> {
        if self.open.len() >= MAX_HANDLES {
            return Ok(());
        }
        *self.irps += 1;
        let opened = if self.overlapped {
            self.bed.open_overlapped(protocol::DEVICE_NAME)
        } else {
            self.bed.open(protocol::DEVICE_NAME)
        };
        let handle = opened.map_err(|status| format!("open failed with {status:#x}"))?;
        self.open.push(Model { handle, extra: 0, waits: Vec::new() });
        Ok(())
    }

    fn control(
        &mut self,
        index: usize,
        code: u32,
        input: &[u8],
        output: usize,
    ) -> Result<(), String> {
        *self.irps += 1;
        let (got, reply) = self.bed.control(&self.open[index].handle, code, input, output);
        let expected = expected_status(code, input, output, self.open[index].extra);
        if expected != got {
            return Err(format!(
                "code {code:#x}, input {} bytes, output {output}: status {got:#x}, expected {expected:#x}",
                input.len()
            ));
        }
        check_reply(code, input, got, &reply)?;
        let model = &mut self.open[index];
        model.extra = model.extra + u32::from(got == status::SUCCESS && code == IOCTL_LOCK)
            - u32::from(got == status::SUCCESS && code == IOCTL_UNLOCK);
        after_control(&mut self.open, index, code, input, got);
        Ok(())
    }

    fn wait(&mut self, index: usize, timeout_ms: u32, cookie: u64) -> Result<(), String> {
        if self.open[index].waits.len() >= MAX_WAITS {
            return Ok(());
        }
        let request = WaitRequest::new(timeout_ms, cookie);
        *self.irps += 1;
        let pending = self.bed.control_overlapped(
            &self.open[index].handle,
            IOCTL_WAIT,
            request.as_bytes(),
            size_of::<WaitReply>(),
        );
        if !request.is_valid() {
            let (got, reply) = self.bed.finish(pending);
            return if got == status::INVALID_PARAMETER && reply.is_empty() {
                Ok(())
            } else {
                Err(format!("WAIT of {timeout_ms} ms: {got:#x}, expected a refusal"))
            };
        }
        self.open[index].waits.push(WaitModel { pending, cookie, possible: 0, ended: false });
        Ok(())
    }

    fn signal(&mut self, index: usize, all: bool) -> Result<(), String> {
        let scope = if all { SignalScope::All } else { SignalScope::Caller };
        let input = SignalRequest::new(scope);
        let in_scope = |i: usize| all || i == index;
        let (low, high) = self.open.iter().enumerate().filter(|(i, _)| in_scope(*i)).fold(
            (0, 0),
            |(low, high), (_, m)| {
                (
                    low + m.waits.iter().filter(|w| w.queued()).count(),
                    high + m.waits.iter().filter(|w| !w.ended).count(),
                )
            },
        );
        *self.irps += 1;
        let (got, reply) = self.bed.control(
            &self.open[index].handle,
            IOCTL_SIGNAL,
            input.as_bytes(),
            size_of::<SignalReply>(),
        );
        let completed = SignalReply::read_from_bytes(&reply)
            .map_or(usize::MAX, |r| usize::try_from(r.completed).unwrap_or(usize::MAX));
        if got != status::SUCCESS || !(low..=high).contains(&completed) {
            return Err(format!(
                "SIGNAL ({scope:?}): {got:#x}, {completed} completed, expected {low} to {high}"
            ));
        }
        after_control(&mut self.open, index, IOCTL_SIGNAL, input.as_bytes(), got);
        Ok(())
    }

    /// Sends a batch at once, one request per emulated CPU; a close in the batch closes its
    /// handle while the others' requests may be in the driver. With `stop`, when that handle is
    /// the only one open, the service is stopped first and the batch runs under PCT (depth 2,
    /// change points within the first 40 switch points), which brings the unload to a request
    /// still returning through the driver in most schedules, where the uniform policy almost
    /// never does (see `exec --stop` in the README).
    fn parallel(&mut self, seed: u64, requests: &[Op], stop: bool) -> Result<(), String> {
        let Some(batch) = Batch::of(requests, self.open.len()) else { return Ok(()) };
        *self.irps += batch.targets.len() as u64 + 2 * u64::from(batch.closing.is_some());
        let policy = if stop && batch.closing.is_some() && self.open.len() == 1 {
            self.bed.stop_service();
            crate::sched::Policy::Pct { depth: 2, steps: 40 }
        } else {
            crate::sched::Policy::Uniform
        };
        let (bed, open) = (self.bed, &self.open);
        let replies = crate::sched::run(batch.cpus(), seed, policy, |cpu| {
            let Some(&(index, code, input, output)) = batch.targets.get(cpu as usize) else {
                // The closing CPU: CloseHandle at a moment the schedule draws.
                for _ in 0..crate::sched::choose_below(8) {
                    crate::sched::point();
                }
                bed.close_shared(&open[batch.closing.unwrap_or_default()].handle);
                return (status::SUCCESS, Vec::new());
            };
            bed.control(&open[index].handle, code, input, output)
        });
        let net = self.check_batch(&batch, &replies)?;
        // On the bed's CPUs time may run: any wait may have expired, and a SIGNAL in the batch
        // ended what it reached.
        self.waits().for_each(WaitModel::may_expire);
        for ((index, code, input, _), (got, _)) in batch.targets.iter().zip(&replies) {
            after_control(&mut self.open, *index, *code, input, *got);
        }
        for (model, net) in self.open.iter_mut().zip(net) {
            let extra = i64::from(model.extra) + net;
            if !(0..=i64::from(MAX_EXTRA_LOCKS)).contains(&extra) {
                return Err(format!("concurrent LOCK/UNLOCK left {extra} extra locks"));
            }
            model.extra = u32::try_from(extra).unwrap_or(0);
        }
        let Some(closed) = batch.closing else { return Ok(()) };
        // Closed under the batch: its cleanup may have cancelled its waits, whatever else the
        // batch did to them, and its requests after the close never reached the driver.
        let mut model = self.open.remove(closed);
        model.waits.iter_mut().for_each(|w| w.may_end_with(CANCELLED));
        model.waits.into_iter().try_for_each(|wait| finish_wait(self.bed, wait))
    }

    /// Checks each status of a batch against the protocol, in some order of the batch; returns
    /// the net change of each handle's extra locks.
    fn check_batch(
        &self,
        batch: &Batch<'_>,
        replies: &[(i32, Vec<u8>)],
    ) -> Result<Vec<i64>, String> {
        let mut net = vec![0i64; self.open.len()];
        for ((index, code, input, output), (got, reply)) in batch.targets.iter().zip(replies) {
            let expected = expected_status(*code, input, *output, self.open[*index].extra);
            // LOCK and UNLOCK may succeed or meet the limit depending on which ran first.
            let either = [status::SUCCESS, status::INVALID_DEVICE_STATE];
            let order_dependent = (*code == IOCTL_LOCK || *code == IOCTL_UNLOCK)
                && either.contains(&expected)
                && either.contains(got);
            // On a handle closed in the batch: looked up after the close, or a WAIT that the
            // cleanup cancelled (queued before it, or refused after it).
            let closed = batch.closing == Some(*index)
                && (*got == crate::ob::STATUS_INVALID_HANDLE
                    || (*code == IOCTL_WAIT && *got == status::CANCELLED));
            if expected != *got && !order_dependent && !closed {
                return Err(format!(
                    "concurrent code {code:#x}, input {} bytes, output {output}: status {got:#x}, expected {expected:#x}",
                    input.len()
                ));
            }
            check_reply(*code, input, *got, reply)?;
            if *got == status::SUCCESS {
                net[*index] += i64::from(*code == IOCTL_LOCK) - i64::from(*code == IOCTL_UNLOCK);
            }
        }
        Ok(net)
    }

    /// At a quiescent point, nothing is in flight but the waits left pending: the model, the
    /// memory manager and the driver agree, with no wait pending the bed holds no IRP, and no
    /// rule fired.
    fn check_quiescent(&mut self) -> Result<(), String> {
        let outstanding = self.bed.irps_outstanding();
        if self.open.iter().all(|m| m.waits.is_empty()) && outstanding > 0 {
            return Err(format!("{outstanding} IRP(s) outstanding with no wait pending"));
        }
        let expected: i64 = self.open.iter().map(|m| 1 + i64::from(m.extra)).sum();
        for (name, count) in self.bed.lock_counts() {
            if (name == "PAGELK" || name == "PAGEDATA") && count != expected {
                return Err(format!(
                    "{name}: memory manager holds {count} locks, open handles should hold {expected}"
                ));
            }
        }
        if let Some(first) = self.open.first() {
            *self.irps += 1;
            let state = query(self.bed, &first.handle).ok_or("QUERY_STATE failed")?;
            for section in &state.sections {
                if i64::from(section.lock_count) != expected {
                    return Err(format!(
                        "driver reports {} locks on {}, expected {expected}",
                        section.lock_count,
                        section.name()
                    ));
                }
            }
            if state.caller_extra_locks != first.extra {
                return Err(format!(
                    "driver reports {} extra locks for the handle, model {}",
                    state.caller_extra_locks, first.extra
                ));
            }
        }
        self.bed
            .violations()
            .first()
            .map_or(Ok(()), |v| Err(format!("verifier rule {}: {}", v.rule, v.detail)))
    }

    /// Closes every handle still open, checking its waits.
    fn close_all(&mut self) -> Result<(), String> {
        for model in std::mem::take(&mut self.open) {
            *self.irps += 2;
            close_with_waits(self.bed, model)?;
        }
        Ok(())
    }
}

/// The requests of an [`Op::Parallel`] step, resolved to open handles: one CPU each, and one
/// more for a close, if the batch has one (the first; others are dropped).
struct Batch<'a> {
    /// Handle index, code, input and output capacity of each request.
    targets: Vec<(usize, u32, &'a [u8], usize)>,
    /// The handle a CPU of the batch closes.
    closing: Option<usize>,
}

impl<'a> Batch<'a> {
    /// The batch over `open` handles; None when nothing is open or nothing is to be sent.
    fn of(requests: &'a [Op], open: usize) -> Option<Self> {
        if open == 0 {
            return None;
        }
        let targets: Vec<_> = requests
            .iter()
            .filter_map(|r| match r {
                Op::Control { handle, code, input, output } => {
                    Some((handle % open, *code, input.as_slice(), *output))
                }
                _ => None,
            })
            .collect();
        let closing = requests.iter().find_map(|r| match r {
            Op::Close(slot) => Some(slot % open),
            _ => None,
        });
        (!targets.is_empty()).then_some(Self { targets, closing })
    }

    /// The CPUs the batch runs on: one per request, and the closing one.
    fn cpus(&self) -> usize {
        self.targets.len() + usize::from(self.closing.is_some())
    }
}

/// What a control request sent with `bed.control` did to the pending waits: a `WAIT` waited
/// for (time ran: any may have expired), a `SIGNAL` that succeeded (it ended what it reached).
fn after_control(open: &mut [Model], index: usize, code: u32, input: &[u8], got: i32) {
    if code == IOCTL_WAIT && got == status::SUCCESS {
        for wait in open.iter_mut().flat_map(|m| m.waits.iter_mut()) {
            wait.may_expire();
        }
    }
    if code == IOCTL_SIGNAL && got == status::SUCCESS {
        let all = SignalRequest::read_from_bytes(input)
            .ok()
            .and_then(|r| r.scope())
            .is_some_and(|s| s == SignalScope::All);
        for (i, model) in open.iter_mut().enumerate() {
            if all || i == index {
                for wait in &mut model.waits {
                    wait.end_with(SIGNALLED);
                }
            }
        }
    }
}

/// Replays `ops` on a fresh bed in a child process.
///
/// # Errors
/// When the child cannot run.
pub fn replay(driver: &Path, ops: &[Op]) -> Result<Option<Failure>> {
    let report = isolated(|| {
        let bed = Bed::load(driver, quiet())?
            .map_err(|(s, _)| anyhow::anyhow!("DriverEntry failed: {s:#x}"))?;
        let failure = check_sequence(&bed, ops, &mut 0);
        let mut report = bed.report();
        report.scenarios = failure.map(|f| serde_json::to_string(&f).unwrap_or_default());
        Ok(report)
    })?;
    if let Some(b) = &report.bugcheck {
        return Ok(Some(Failure {
            step: ops.len(),
            reason: format!("bugcheck {:#x}: {}", b.code, b.detail),
        }));
    }
    Ok(report.scenarios.and_then(|f| serde_json::from_str(&f).ok()))
}

/// Shrinks a failing sequence while it still fails: drops chunks of steps, then single
/// steps, then points every step at the first handle; again until nothing changes.
///
/// # Errors
/// When a replay cannot run.
pub fn shrink(driver: &Path, mut ops: Vec<Op>) -> Result<Vec<Op>> {
    loop {
        let before = ops.clone();
        let mut chunk = ops.len() / 2;
        while chunk >= 1 {
            let mut start = 0;
            while start < ops.len() {
                let mut candidate = ops.clone();
                candidate.drain(start..(start + chunk).min(ops.len()));
                if replay(driver, &candidate)?.is_some() {
                    ops = candidate;
                } else {
                    start += chunk;
                }
            }
            chunk /= 2;
        }
        // Handle slots are taken modulo the open handles, so a dropped open moves the steps
        // after it to other handles; on the first handle they stay where they are. All at
        // once first (steps on one handle move together), then one by one.
        let all: Vec<Op> =
            ops.iter().map(|op| on_first_handle(op).unwrap_or_else(|| op.clone())).collect();
        if all != ops && replay(driver, &all)?.is_some() {
            ops = all;
        }
        for i in 0..ops.len() {
            if let Some(simpler) = on_first_handle(&ops[i]) {
                let mut candidate = ops.clone();
                candidate[i] = simpler;
                if replay(driver, &candidate)?.is_some() {
                    ops = candidate;
                }
            }
        }
        if ops == before {
            return Ok(ops);
        }
    }
}

/// `op` sent on the first handle instead, when it names another.
fn on_first_handle(op: &Op) -> Option<Op> {
    let mut simpler = op.clone();
    match &mut simpler {
        Op::Close(slot) | Op::Cancel(slot) | Op::Finish(slot) => *slot = 0,
        Op::Control { handle, .. } | Op::Wait { handle, .. } | Op::Signal { handle, .. } => {
            *handle = 0;
        }
        Op::Open | Op::Parallel { .. } => return None,
    }
    (simpler != *op).then_some(simpler)
}

const fn one() -> usize {
    1
}

/// Figures of a fuzz run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// The seed everything followed from.
    pub seed: u64,
    /// Seconds asked for.
    pub seconds: u64,
    /// Emulated CPUs sending the requests of a parallel step (1: none).
    #[serde(default = "one")]
    pub threads: usize,
    /// Sequences run.
    pub sequences: u64,
    /// Steps (opens, requests, closes) generated.
    pub steps: u64,
    /// IRPs sent, checks included.
    pub irps: u64,
    /// Failures found.
    pub failures: u64,
    /// Sequences that ended with a service stop under a concurrent batch.
    #[serde(default)]
    pub stops: u64,
    /// Of those, unloads that began while a dispatch routine ran on another CPU.
    #[serde(default)]
    pub unloads_under_a_dispatch: u64,
    /// The first failure, shrunk, if any.
    pub minimal_failure: Option<(Vec<Op>, Failure)>,
}

/// How long a fuzz run goes on: until `seconds` are up, or `sequences` have run if that comes
/// first.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    /// Seconds at most.
    pub seconds: u64,
    /// Sequences at most (none: as many as the time allows).
    pub sequences: Option<u64>,
}

/// Fuzzes `driver` within `limit`, one sequence (one fresh driver load, in its own process)
/// after another, each of up to 200 steps.
///
/// # Errors
/// When a run cannot start.
pub fn fuzz(driver: &Path, limit: Limit, seed: u64, threads: usize) -> Result<Stats> {
    let seconds = limit.seconds;
    let mut stats = Stats { seed, seconds, threads, ..Stats::default() };
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    #[expect(clippy::literal_string_with_formatting_args, reason = "an indicatif template")]
    let bar = crate::report::progress(seconds, "{bar:40} {pos}/{len} s, {msg}");
    while Instant::now() < deadline && limit.sequences.is_none_or(|n| stats.sequences < n) {
        bar.set_position(start.elapsed().as_secs());
        bar.set_message(format!("{} sequences, {} IRPs", stats.sequences, stats.irps));
        let len = 1 + rng.below(200);
        let ops: Vec<Op> = (0..len).map(|_| random_op(&mut rng, threads)).collect();
        stats.sequences += 1;
        stats.steps += ops.len() as u64;
        let sequence = ops.clone();
        let report = isolated(move || {
            let bed = Bed::load(driver, quiet())?
                .map_err(|(s, _)| anyhow::anyhow!("DriverEntry failed: {s:#x}"))?;
            let mut irps = 0;
            let failure = check_sequence(&bed, &sequence, &mut irps);
            let mut report = bed.report();
            let stopped = bed.stopped();
            report.scenarios = serde_json::to_string(&Outcome { failure, irps, stopped }).ok();
            Ok(report)
        })?;
        let outcome: Option<Outcome> =
            report.scenarios.as_deref().and_then(|o| serde_json::from_str(o).ok());
        stats.irps += outcome.as_ref().map_or(0, |o| o.irps);
        stats.stops += u64::from(outcome.as_ref().is_some_and(|o| o.stopped));
        stats.unloads_under_a_dispatch += report
            .races
            .iter()
            .filter(|(race, _)| race == crate::bed::UNLOAD_MEETS_A_DISPATCH)
            .map(|(_, times)| times)
            .sum::<u64>();
        let failure = report
            .bugcheck
            .as_ref()
            .map(|b| Failure {
                step: ops.len(),
                reason: format!("bugcheck {:#x}: {}", b.code, b.detail),
            })
            .or_else(|| outcome.and_then(|o| o.failure));
        if let Some(failure) = failure {
            stats.failures += 1;
            let minimal = shrink(driver, ops)?;
            let why = replay(driver, &minimal)?.unwrap_or(failure);
            stats.minimal_failure = Some((minimal, why));
            break;
        }
    }
    bar.finish_and_clear();
    Ok(stats)
}

/// Figures of a concurrency run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StressStats {
    /// Threads.
    pub threads: usize,
    /// Iterations per thread (open, `LOCK`, `RUN_LOCKED`, `UNLOCK`, close).
    pub iterations: u64,
    /// Operations that succeeded.
    pub operations: u64,
    /// `RUN_LOCKED` requests the driver counted (its counter lives in `PAGEDATA`, updated under
    /// its spin lock): must equal the ones that succeeded, or an update was lost.
    pub runs_counted: u64,
    /// What went wrong, if anything.
    pub problems: Vec<String>,
}

/// `threads` threads each open, lock, run, unlock and close `iterations` times, at once; then
/// every count must be back to what the checking handle holds and no update may be lost.
///
/// # Errors
/// When the run cannot start.
pub fn stress(driver: &Path, threads: usize, iterations: u64) -> Result<StressStats> {
    let report = isolated(move || {
        let bed = Bed::load(driver, quiet())?
            .map_err(|(s, _)| anyhow::anyhow!("DriverEntry failed: {s:#x}"))?;
        let bed = std::sync::Arc::new(bed);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let bed = std::sync::Arc::clone(&bed);
                std::thread::spawn(move || {
                    let mut done = 0u64;
                    let mut problems = Vec::new();
                    for i in 0..iterations {
                        let Ok(handle) = bed.open(protocol::DEVICE_NAME) else {
                            problems.push(format!("thread {t}: open {i} failed"));
                            continue;
                        };
                        let run = RunRequest::new(64, i);
                        for (code, input, output) in [
                            (IOCTL_LOCK, Vec::new(), 8),
                            (IOCTL_RUN_LOCKED, run.as_bytes().to_vec(), 16),
                            (IOCTL_UNLOCK, Vec::new(), 8),
                        ] {
                            let (got, _) = bed.control(&handle, code, &input, output);
                            if got == status::SUCCESS {
                                done += 1;
                            } else {
                                problems.push(format!("thread {t}: {code:#x} -> {got:#x}"));
                            }
                        }
                        bed.close(handle);
                        done += 2;
                    }
                    (done, problems)
                })
            })
            .collect();
        let mut stats = StressStats { threads, iterations, ..StressStats::default() };
        for worker in workers {
            let (done, problems) =
                worker.join().unwrap_or_else(|_| (0, vec!["a thread panicked".into()]));
            stats.operations += done;
            stats.problems.extend(problems);
        }
        match bed.open(protocol::DEVICE_NAME) {
            Ok(handle) => {
                if let Some(state) = query(&bed, &handle) {
                    stats.runs_counted = state.runs;
                    for section in &state.sections {
                        if section.lock_count != 1 {
                            stats.problems.push(format!(
                                "{} has {} locks with one handle open",
                                section.name(),
                                section.lock_count
                            ));
                        }
                    }
                }
                bed.close(handle);
            }
            Err(refused) => stats.problems.push(format!("final open failed: {refused:#x}")),
        }
        let expected_runs = threads as u64 * iterations;
        if stats.runs_counted != expected_runs {
            stats.problems.push(format!(
                "driver counted {} runs, {expected_runs} succeeded: updates lost",
                stats.runs_counted
            ));
        }
        for (name, count) in bed.lock_counts() {
            if count != 0 {
                stats
                    .problems
                    .push(format!("{name}: lock count {count} after every handle closed"));
            }
        }
        bed.unload();
        let mut report = bed.report();
        report.scenarios = Some(serde_json::to_string(&stats).unwrap_or_default());
        Ok(report)
    })?;
    let mut stats: StressStats =
        report.scenarios.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
    stats.problems.extend(
        report.violations.iter().map(|v| format!("verifier rule {}: {}", v.rule, v.detail)),
    );
    if let Some(b) = report.bugcheck {
        stats.problems.push(format!("bugcheck {:#x}: {}", b.code, b.detail));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::{Op, Rng, random_op};

    #[test]
    fn concurrent_batches_on_one_handle_sometimes_close_it_and_only_that_handle() {
        let mut rng = Rng::new(20_261_207);
        let batches: Vec<Vec<Op>> = (0..3000)
            .filter_map(|_| match random_op(&mut rng, 2) {
                Op::Parallel { requests, .. } => Some(requests),
                _ => None,
            })
            .collect();
        let closing: Vec<&Vec<Op>> =
            batches.iter().filter(|b| b.iter().any(|op| matches!(op, Op::Close(_)))).collect();
        assert!(closing.len() * 10 > batches.len(), "{} of {}", closing.len(), batches.len());
        for batch in closing {
            let closes: Vec<usize> = batch
                .iter()
                .filter_map(|op| if let Op::Close(slot) = op { Some(*slot) } else { None })
                .collect();
            assert_eq!(closes.len(), 1, "{batch:?}");
            let on_it = batch.iter().all(|op| match op {
                Op::Control { handle, .. } => *handle == closes[0],
                op => matches!(op, Op::Close(_)),
            });
            assert!(on_it, "a close with requests on other handles: {batch:?}");
        }
    }

    #[test]
    fn about_one_closing_batch_in_four_stops_the_service_and_no_other_batch_does() {
        let mut rng = Rng::new(20_261_207);
        let (mut closing, mut stopping) = (0, 0);
        for _ in 0..3000 {
            if let Op::Parallel { requests, stop, .. } = random_op(&mut rng, 2) {
                let closes = requests.iter().any(|op| matches!(op, Op::Close(_)));
                assert!(closes || !stop, "a stop with no close: {requests:?}");
                closing += usize::from(closes);
                stopping += usize::from(stop);
            }
        }
        assert!(stopping * 8 > closing && stopping * 8 < closing * 3, "{stopping} of {closing}");
    }
}
