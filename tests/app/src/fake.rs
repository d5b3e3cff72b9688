//! An in-memory driver that follows the protocol's rules, to unit-test the scenarios, and
//! deliberately broken variants of it, to show that each scenario can fail.
//!
//! Its `WAIT`s are queued as the driver queues them and end the same four ways: signalled
//! (`SIGNAL`), cancelled ([`Device::cancel`], or the close of their handle), or expired. Time is
//! the model's own and deterministic: its clock moves only while a caller waits for a `WAIT`
//! ([`Device::finish`], or a `WAIT` sent synchronously), up to that wait's deadline, and every
//! queued wait whose deadline it passes expires then, in deadline order. So a wait that
//! nothing else ends expires when someone waits for it, and a wait signalled or cancelled before
//! anyone waits for it never expires, whatever order the threads run in.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pagelock_protocol::zerocopy::{FromBytes, IntoBytes};
use pagelock_protocol::{
    self as protocol, BenchReply, BenchRequest, DISPATCH_LEVEL, LockReply, MAX_EXTRA_LOCKS,
    MAX_PENDING, PROTOCOL_VERSION, RequestError, RunReply, RunRequest, SECTION_COUNT, SectionState,
    StateReply, status,
};

use crate::device::{BadOpen, BadOpenOutcome, Device, Reply, TransportError};

/// One way the fake driver breaks the protocol (or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Follows the protocol.
    None,
    /// A lock taken at load was never released: every count is one too high.
    StaleLock,
    /// Closing a handle releases none of its locks.
    LeakOnClose,
    /// Closing a handle releases its open lock but not its extra ones.
    ExtraLocksSurviveClose,
    /// `UNLOCK` with no extra lock held succeeds.
    UnlockWithoutLock,
    /// `LOCK` has no limit.
    LockWithoutLimit,
    /// `RUN_LOCKED` runs one round too few.
    WrongChecksum,
    /// `RUN_LOCKED` reports `PASSIVE_LEVEL`.
    RunsAtPassive,
    /// An input longer than the request (or any input to a code that takes none) is accepted.
    AcceptsOversizedInput,
    /// A refused request (or open) still counts as a run.
    RefusalChangesState,
    /// A name below the device and a directory open both open the device, as the driver did
    /// before it checked what a create asks for.
    AcceptsAnyOpen,
    /// `held_by_caller` counts every handle's locks, not the caller's.
    HeldCountsEveryHandle,
    /// `BENCH` measures nothing.
    ZeroTicks,
    /// An unknown code succeeds.
    AcceptsUnknownCodes,
    /// The first open after load leaves one more handle counted than there is.
    MiscountsHandles,
    /// On a handle opened for overlapped I/O an `UNLOCK` releases two locks, as a per-open
    /// state that two concurrent `UNLOCK`s both read before either wrote would.
    SharedHandleUnlocksTwice,
    /// Every `WAIT` expires as soon as it is queued, whatever its timeout.
    WaitsExpireAtOnce,
    /// `SIGNAL` of the caller's waits ends every handle's.
    SignalIgnoresScope,
    /// Cancelling a handle's requests leaves its queued waits queued.
    CancelLeavesWaitsQueued,
    /// Closing a handle releases its locks but leaves its queued waits queued (cleanup drains
    /// nothing).
    CloseLeavesWaitsQueued,
    /// `WAIT` has no limit on the waits queued at once.
    NoPendingLimit,
}

/// One `WAIT` the model holds: queued (`end` is `None`) or ended and not yet finished.
struct Wait {
    handle: u64,
    deadline_ms: u64,
    cookie: u64,
    end: Option<Reply>,
}

/// A request the model was sent with [`Device::start`].
pub struct Pending(Started);

enum Started {
    /// Completed at once, with this reply.
    Done(Reply),
    /// A queued `WAIT`, by its number.
    Wait(u64),
}

#[derive(Default)]
struct State {
    next_handle: u64,
    /// Extra locks of each open handle.
    opens: BTreeMap<u64, u32>,
    locks: u32,
    by_address: u64,
    by_handle: u64,
    unlocks: u64,
    runs: u64,
    completed_waits: u64,
    handle_bias: u32,
    /// Handles opened for overlapped I/O.
    overlapped: std::collections::BTreeSet<u64>,
    /// Handles an I/O manager gave for a create the driver refused: the driver keeps no state
    /// for them, and answers their requests as for a handle without state.
    stateless: std::collections::BTreeSet<u64>,
    /// The model's clock in milliseconds (see the module's docs).
    clock_ms: u64,
    /// The number of the next `WAIT`.
    next_wait: u64,
    /// The waits held, by number, which is queue order.
    waits: BTreeMap<u64, Wait>,
}

impl State {
    /// The numbers of the queued waits `take` selects, in queue order.
    fn queued(&self, take: impl Fn(&Wait) -> bool) -> Vec<u64> {
        self.waits.iter().filter(|(_, w)| w.end.is_none() && take(w)).map(|(&n, _)| n).collect()
    }

    /// Ends a queued wait as `outcome`, counting it, as the driver counts every wait it ends.
    fn end(&mut self, number: u64, outcome: protocol::WaitOutcome) {
        self.completed_waits += 1;
        let completed_waits = self.completed_waits;
        let Some(wait) = self.waits.get_mut(&number) else { return };
        wait.end = Some(if outcome == protocol::WaitOutcome::Cancelled {
            Reply { status: status::CANCELLED, output: Vec::new() }
        } else {
            let reply = protocol::WaitReply {
                version: PROTOCOL_VERSION,
                outcome: outcome as u32,
                cookie: wait.cookie,
                completed_waits,
            };
            Reply { status: status::SUCCESS, output: reply.as_bytes().to_vec() }
        });
    }

    /// Ends every queued wait of `handle` as cancelled; how many.
    fn cancel(&mut self, handle: u64) -> usize {
        let numbers = self.queued(|w| w.handle == handle);
        for &number in &numbers {
            self.end(number, protocol::WaitOutcome::Cancelled);
        }
        numbers.len()
    }

    /// Moves the clock to `to_ms` (never back) and expires every queued wait whose deadline it
    /// reached, in deadline order.
    fn advance(&mut self, to_ms: u64) {
        self.clock_ms = self.clock_ms.max(to_ms);
        let now = self.clock_ms;
        let mut due: Vec<(u64, u64)> = self
            .queued(|w| w.deadline_ms <= now)
            .into_iter()
            .map(|n| (self.waits[&n].deadline_ms, n))
            .collect();
        due.sort_unstable();
        for (_, number) in due {
            self.end(number, protocol::WaitOutcome::Expired);
        }
    }
}

/// The fake driver. Handles are numbers; a closed one is refused like a handle without state.
pub struct Model {
    fault: Fault,
    state: Mutex<State>,
    /// Behind an I/O manager that answers an open before the driver's `IRP_MJ_CREATE` (Wine 8):
    /// a refused open still gives a handle, one without state.
    answers_opens_early: bool,
}

const SECTIONS: [(&[u8; 8], u32); SECTION_COUNT] = [(b"PAGELK\0\0", 4096), (b"PAGEDATA", 8192)];

impl Model {
    /// A driver that follows the protocol.
    pub fn correct() -> Self {
        Self::with(Fault::None)
    }

    /// A driver with `fault`.
    pub fn with(fault: Fault) -> Self {
        let mut state = State {
            // The driver locks each section by address once at load to get its handle.
            by_address: SECTION_COUNT as u64,
            ..State::default()
        };
        if fault == Fault::StaleLock {
            state.locks = 1;
        }
        Self { fault, state: Mutex::new(state), answers_opens_early: false }
    }

    /// The driver with `fault`, behind an I/O manager that answers an open before the driver's
    /// `IRP_MJ_CREATE` (Wine 8).
    pub fn answering_opens_early(fault: Fault) -> Self {
        Self { answers_opens_early: true, ..Self::with(fault) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks held on each section now, over all handles.
    pub fn lock_count(&self) -> u32 {
        self.state().locks
    }

    fn state_reply(&self, state: &State, extra: u32) -> StateReply {
        let held = if self.fault == Fault::HeldCountsEveryHandle {
            state.opens.values().map(|extra| 1 + extra).sum()
        } else {
            1 + extra
        };
        let mut sections = [SectionState::default(); SECTION_COUNT];
        for (section, (name, size)) in sections.iter_mut().zip(SECTIONS) {
            *section = SectionState {
                name: *name,
                size,
                lock_count: state.locks,
                held_by_caller: held,
                reserved: 0,
            };
        }
        StateReply {
            version: PROTOCOL_VERSION,
            driver_version: protocol::encode_version(0, 1, 0),
            open_handles: u32::try_from(state.opens.len()).unwrap_or(u32::MAX) + state.handle_bias,
            caller_extra_locks: extra,
            sections,
            lock_by_address_calls: state.by_address,
            lock_by_handle_calls: state.by_handle,
            unlock_calls: state.unlocks,
            runs: state.runs,
        }
    }

    fn bench(&self, state: &mut State, iterations: u32) -> BenchReply {
        let n = u64::from(iterations);
        state.by_address += n;
        state.by_handle += n;
        state.unlocks += 2 * n;
        BenchReply {
            version: PROTOCOL_VERSION,
            iterations,
            by_address_ticks: if self.fault == Fault::ZeroTicks { 0 } else { 41 * n },
            by_handle_ticks: if self.fault == Fault::ZeroTicks { 0 } else { 3 * n },
            frequency: 10_000_000,
        }
    }

    fn serve(
        &self,
        state: &mut State,
        handle: u64,
        code: u32,
        input: &[u8],
        capacity: usize,
    ) -> Result<Vec<u8>, i32> {
        let fault = self.fault;
        let Some(&extra) = state.opens.get(&handle) else {
            return Err(status::INVALID_DEVICE_STATE);
        };
        let no_input = |input: &[u8]| {
            if fault == Fault::AcceptsOversizedInput {
                return Ok(());
            }
            protocol::expect_no_input(input).map_err(refusal)
        };
        let decode = |input: &[u8], size: usize| -> Result<Vec<u8>, i32> {
            let input = if fault == Fault::AcceptsOversizedInput && input.len() > size {
                &input[..size]
            } else {
                input
            };
            Ok(input.to_vec())
        };
        match code {
            protocol::IOCTL_QUERY_STATE => {
                fits::<StateReply>(capacity)?;
                no_input(input)?;
                Ok(self.state_reply(state, extra).as_bytes().to_vec())
            }
            protocol::IOCTL_RUN_LOCKED => {
                fits::<RunReply>(capacity)?;
                let bytes = decode(input, size_of::<RunRequest>())?;
                let request = protocol::decode::<RunRequest>(&bytes).map_err(refusal)?;
                if !request.is_valid() {
                    return Err(status::INVALID_PARAMETER);
                }
                state.runs += 1;
                let rounds = if fault == Fault::WrongChecksum {
                    request.iterations - 1
                } else {
                    request.iterations
                };
                let irql = if fault == Fault::RunsAtPassive { 0 } else { DISPATCH_LEVEL };
                let reply = RunReply {
                    version: PROTOCOL_VERSION,
                    irql,
                    checksum: protocol::checksum(request.seed, rounds),
                };
                Ok(reply.as_bytes().to_vec())
            }
            protocol::IOCTL_LOCK => {
                fits::<LockReply>(capacity)?;
                no_input(input)?;
                if extra >= MAX_EXTRA_LOCKS && fault != Fault::LockWithoutLimit {
                    return Err(status::INVALID_DEVICE_STATE);
                }
                state.opens.insert(handle, extra + 1);
                state.locks += 1;
                state.by_handle += SECTION_COUNT as u64;
                Ok(LockReply { version: PROTOCOL_VERSION, extra_locks: extra + 1 }
                    .as_bytes()
                    .to_vec())
            }
            protocol::IOCTL_UNLOCK => {
                fits::<LockReply>(capacity)?;
                no_input(input)?;
                if extra == 0 {
                    return if fault == Fault::UnlockWithoutLock {
                        Ok(LockReply { version: PROTOCOL_VERSION, extra_locks: 0 }
                            .as_bytes()
                            .to_vec())
                    } else {
                        Err(status::INVALID_DEVICE_STATE)
                    };
                }
                state.opens.insert(handle, extra - 1);
                let twice =
                    fault == Fault::SharedHandleUnlocksTwice && state.overlapped.contains(&handle);
                // Saturating: the broken variant can release more than the sections hold.
                state.locks = state.locks.saturating_sub(if twice { 2 } else { 1 });
                state.unlocks += SECTION_COUNT as u64;
                Ok(LockReply { version: PROTOCOL_VERSION, extra_locks: extra - 1 }
                    .as_bytes()
                    .to_vec())
            }
            protocol::IOCTL_BENCH => {
                fits::<BenchReply>(capacity)?;
                let bytes = decode(input, size_of::<BenchRequest>())?;
                let request = protocol::decode::<BenchRequest>(&bytes).map_err(refusal)?;
                if !request.is_valid() {
                    return Err(status::INVALID_PARAMETER);
                }
                Ok(self.bench(state, request.iterations).as_bytes().to_vec())
            }
            protocol::IOCTL_SIGNAL => {
                let bytes = decode(input, size_of::<protocol::SignalRequest>())?;
                self.signal(state, handle, &bytes, capacity)
            }
            _ if fault == Fault::AcceptsUnknownCodes => Ok(Vec::new()),
            _ => Err(status::INVALID_DEVICE_REQUEST),
        }
    }
}

impl Model {
    /// `SIGNAL` on `handle`: ends the queued waits its scope names, as signalled.
    fn signal(
        &self,
        state: &mut State,
        handle: u64,
        input: &[u8],
        capacity: usize,
    ) -> Result<Vec<u8>, i32> {
        fits::<protocol::SignalReply>(capacity)?;
        let request = protocol::decode::<protocol::SignalRequest>(input).map_err(refusal)?;
        let numbers = match request.scope() {
            Some(protocol::SignalScope::All) => state.queued(|_| true),
            Some(protocol::SignalScope::Caller) if self.fault == Fault::SignalIgnoresScope => {
                state.queued(|_| true)
            }
            Some(protocol::SignalScope::Caller) => state.queued(|w| w.handle == handle),
            None => return Err(status::INVALID_PARAMETER),
        };
        for &number in &numbers {
            state.end(number, protocol::WaitOutcome::Signalled);
        }
        let completed = u32::try_from(numbers.len()).unwrap_or(u32::MAX);
        Ok(protocol::SignalReply { version: PROTOCOL_VERSION, completed }.as_bytes().to_vec())
    }

    /// Queues a `WAIT` on `handle`, refused as the driver refuses it; its number.
    fn queue_wait(
        &self,
        state: &mut State,
        handle: u64,
        input: &[u8],
        capacity: usize,
    ) -> Result<u64, i32> {
        if !state.opens.contains_key(&handle) {
            return Err(status::INVALID_DEVICE_STATE);
        }
        fits::<protocol::WaitReply>(capacity)?;
        let size = size_of::<protocol::WaitRequest>();
        let input = if self.fault == Fault::AcceptsOversizedInput && input.len() > size {
            &input[..size]
        } else {
            input
        };
        let request = protocol::decode::<protocol::WaitRequest>(input).map_err(refusal)?;
        if !request.is_valid() {
            return Err(status::INVALID_PARAMETER);
        }
        let queued = state.queued(|_| true).len();
        if queued >= MAX_PENDING as usize && self.fault != Fault::NoPendingLimit {
            return Err(status::INVALID_DEVICE_STATE);
        }
        let number = state.next_wait;
        state.next_wait += 1;
        let deadline_ms = state.clock_ms + u64::from(request.timeout_ms);
        state.waits.insert(number, Wait { handle, deadline_ms, cookie: request.cookie, end: None });
        if self.fault == Fault::WaitsExpireAtOnce {
            state.end(number, protocol::WaitOutcome::Expired);
        }
        Ok(number)
    }

    /// Waits for wait `number`: the clock moves to its deadline unless it has ended already.
    fn finish_wait(state: &mut State, number: u64) -> Result<Reply, TransportError> {
        let Some(wait) = state.waits.get(&number) else {
            return Err(TransportError(format!("wait {number} was finished already")));
        };
        if wait.end.is_none() {
            let deadline = wait.deadline_ms;
            state.advance(deadline);
        }
        state
            .waits
            .remove(&number)
            .and_then(|wait| wait.end)
            .ok_or_else(|| TransportError(format!("wait {number} did not end at its deadline")))
    }
}

const fn refusal(error: RequestError) -> i32 {
    match error {
        RequestError::BufferTooSmall => status::BUFFER_TOO_SMALL,
        RequestError::InvalidParameter => status::INVALID_PARAMETER,
    }
}

const fn fits<T>(capacity: usize) -> Result<(), i32> {
    if capacity < size_of::<T>() { Err(status::BUFFER_TOO_SMALL) } else { Ok(()) }
}

impl Device for Model {
    type Handle = u64;
    type Pending = Pending;

    fn open(&self) -> Result<Result<u64, i32>, TransportError> {
        let mut state = self.state();
        let handle = state.next_handle;
        state.next_handle += 1;
        if handle == 0 && self.fault == Fault::MiscountsHandles {
            state.handle_bias = 1;
        }
        state.opens.insert(handle, 0);
        state.locks += 1;
        state.by_handle += SECTION_COUNT as u64;
        drop(state);
        Ok(Ok(handle))
    }

    fn open_bad(&self, open: BadOpen) -> Result<BadOpenOutcome<u64>, TransportError> {
        if self.fault == Fault::AcceptsAnyOpen {
            let handle = self.open()?.map_err(|status| TransportError(format!("{status:#x}")))?;
            return Ok(if self.answers_opens_early {
                BadOpenOutcome::OpenedBeforeTheDriverAnswered(handle)
            } else {
                BadOpenOutcome::Opened(handle)
            });
        }
        if self.fault == Fault::RefusalChangesState {
            self.state().runs += 1;
        }
        if !self.answers_opens_early {
            return Ok(BadOpenOutcome::Refused(open.expected()));
        }
        // As Wine 8: a handle for the refused create, which the driver keeps no state for.
        let mut state = self.state();
        let handle = state.next_handle;
        state.next_handle += 1;
        state.stateless.insert(handle);
        drop(state);
        Ok(BadOpenOutcome::OpenedBeforeTheDriverAnswered(handle))
    }

    fn open_overlapped(&self) -> Result<Result<u64, i32>, TransportError> {
        let handle = self.open()?;
        if let Ok(handle) = handle {
            self.state().overlapped.insert(handle);
        }
        Ok(handle)
    }

    fn control(
        &self,
        handle: &u64,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Reply, TransportError> {
        let mut state = self.state();
        if code == protocol::IOCTL_WAIT {
            // Sent synchronously: the caller waits for it, so the clock moves to its deadline.
            let reply = match self.queue_wait(&mut state, *handle, input, output_capacity) {
                Ok(number) => Self::finish_wait(&mut state, number)?,
                Err(refused) => {
                    if self.fault == Fault::RefusalChangesState {
                        state.runs += 1;
                    }
                    Reply { status: refused, output: Vec::new() }
                }
            };
            return Ok(reply);
        }
        let served = self.serve(&mut state, *handle, code, input, output_capacity);
        if served.is_err() && self.fault == Fault::RefusalChangesState {
            state.runs += 1;
        }
        drop(state);
        Ok(match served {
            Ok(output) => Reply { status: status::SUCCESS, output },
            Err(refused) => Reply { status: refused, output: Vec::new() },
        })
    }

    fn start(
        &self,
        handle: &u64,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Pending, TransportError> {
        let mut state = self.state();
        if !state.overlapped.contains(handle) {
            return Err(TransportError(format!(
                "handle {handle} was not opened for overlapped I/O"
            )));
        }
        if code != protocol::IOCTL_WAIT {
            drop(state);
            return self
                .control(handle, code, input, output_capacity)
                .map(|r| Pending(Started::Done(r)));
        }
        Ok(Pending(match self.queue_wait(&mut state, *handle, input, output_capacity) {
            Ok(number) => Started::Wait(number),
            Err(refused) => Started::Done(Reply { status: refused, output: Vec::new() }),
        }))
    }

    fn finish(&self, pending: Pending) -> Result<Reply, TransportError> {
        match pending.0 {
            Started::Done(reply) => Ok(reply),
            Started::Wait(number) => Self::finish_wait(&mut self.state(), number),
        }
    }

    fn cancel(&self, handle: &u64) -> Result<(), TransportError> {
        let mut state = self.state();
        let open = state.opens.contains_key(handle);
        if open && self.fault != Fault::CancelLeavesWaitsQueued {
            state.cancel(*handle);
        }
        drop(state);
        if open { Ok(()) } else { Err(TransportError(format!("handle {handle} is not open"))) }
    }

    fn close(&self, handle: u64) -> Result<(), TransportError> {
        let mut state = self.state();
        if state.stateless.remove(&handle) {
            return Ok(());
        }
        let Some(extra) = state.opens.remove(&handle) else {
            drop(state);
            return Err(TransportError(format!("handle {handle} is not open")));
        };
        // IRP_MJ_CLEANUP: the handle's queued waits are cancelled before its locks go.
        if self.fault != Fault::CloseLeavesWaitsQueued {
            state.cancel(handle);
        }
        let released = match self.fault {
            Fault::LeakOnClose => 0,
            Fault::ExtraLocksSurviveClose => 1,
            _ => 1 + extra,
        };
        state.locks = state.locks.saturating_sub(released);
        state.unlocks += u64::from(released) * SECTION_COUNT as u64;
        drop(state);
        Ok(())
    }
}

#[test]
fn the_model_decodes_what_it_encodes() {
    let model = Model::correct();
    let handle = model.open().expect("transport").expect("open");
    let reply = model.control(&handle, protocol::IOCTL_QUERY_STATE, &[], 200).expect("transport");
    let state = StateReply::read_from_bytes(&reply.output).expect("a whole reply");
    assert_eq!((state.open_handles, state.sections[1].name()), (1, "PAGEDATA"));
    model.close(handle).expect("close");
    assert_eq!(model.lock_count(), 0);
}

/// A device no handle can be opened on: the open is refused with a status, or the transport
/// fails. Nothing else is ever asked of it.
pub enum Unopenable {
    /// `CreateFileW` fails with the error of this `NTSTATUS`.
    Refused(i32),
    /// The transport itself fails, with this message.
    Gone(&'static str),
}

impl Device for Unopenable {
    type Handle = ();
    type Pending = ();

    fn open(&self) -> Result<Result<(), i32>, TransportError> {
        match self {
            Self::Refused(status) => Ok(Err(*status)),
            Self::Gone(why) => Err(TransportError((*why).to_owned())),
        }
    }

    fn open_bad(&self, _: BadOpen) -> Result<BadOpenOutcome<()>, TransportError> {
        Ok(match self.open()? {
            Ok(()) => BadOpenOutcome::Opened(()),
            Err(status) => BadOpenOutcome::Refused(status),
        })
    }

    fn control(&self, (): &(), _: u32, _: &[u8], _: usize) -> Result<Reply, TransportError> {
        unreachable!("no handle was ever opened")
    }

    fn start(&self, (): &(), _: u32, _: &[u8], _: usize) -> Result<(), TransportError> {
        unreachable!("no handle was ever opened")
    }

    fn finish(&self, (): ()) -> Result<Reply, TransportError> {
        unreachable!("no handle was ever opened")
    }

    fn cancel(&self, (): &()) -> Result<(), TransportError> {
        unreachable!("no handle was ever opened")
    }

    fn close(&self, (): ()) -> Result<(), TransportError> {
        unreachable!("no handle was ever opened")
    }
}
