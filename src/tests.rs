//! Host unit tests of the portable logic, over the stand-in kernel.

use std::sync::{Mutex, MutexGuard, Once};

use pagelock_protocol::zerocopy::{FromBytes, IntoBytes};
use pagelock_protocol::{self as protocol, RunRequest};

use crate::{
    ioctl::{self, Reply},
    kernel::{self, status},
    open::Open,
    sections::{LOCKABLE, LOCKED_CODE, PAGED_DATA},
};

/// The sections are process-wide statics: tests that lock them take turns.
fn exclusive() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    static LOADED: Once = Once::new();
    let turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    LOADED.call_once(|| {
        for section in LOCKABLE {
            section.take_handle(4096).expect("stand-in handles");
        }
    });
    turn
}

fn opened() -> Open {
    let open = Open::new();
    open.lock_sections().expect("handles were taken");
    open
}

fn counts() -> [u32; 2] {
    [LOCKED_CODE.lock_count(), PAGED_DATA.lock_count()]
}

#[test]
fn taking_handles_leaves_sections_unlocked() {
    let _turn = exclusive();
    assert_eq!(counts(), [0, 0]);
    for section in LOCKABLE {
        assert_eq!(section.handle().map(kernel::SectionHandle::count), Some(0));
    }
}

#[test]
fn each_open_holds_one_lock_per_section_until_dropped() {
    let _turn = exclusive();
    let first = opened();
    assert_eq!(counts(), [1, 1]);
    let second = opened();
    assert_eq!(counts(), [2, 2]);
    drop(first);
    assert_eq!(counts(), [1, 1]);
    drop(second);
    assert_eq!(counts(), [0, 0]);
    assert_eq!(LOCKED_CODE.handle().map(kernel::SectionHandle::count), Some(0));
}

#[test]
fn extra_locks_nest_are_bounded_and_are_released_by_drop() {
    let _turn = exclusive();
    let open = opened();
    assert_eq!(open.unlock_extra(), Err(status::INVALID_DEVICE_STATE));
    assert_eq!(counts(), [1, 1]);
    for depth in 1..=protocol::MAX_EXTRA_LOCKS {
        assert_eq!(open.lock_extra(), Ok(depth));
    }
    assert_eq!(open.lock_extra(), Err(status::INVALID_DEVICE_STATE));
    assert_eq!(counts(), [65, 65]);
    assert_eq!(open.unlock_extra(), Ok(63));
    drop(open);
    assert_eq!(counts(), [0, 0]);
}

#[test]
fn lock_and_unlock_from_many_threads_on_one_handle_keep_the_counts_exact() {
    // One handle opened for overlapped I/O: its requests run at once on several processors.
    let _turn = exclusive();
    let open = opened();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..2_000 {
                    for _ in [open.lock_extra(), open.unlock_extra()] {
                        // While requests are in flight, the memory manager holds at least the
                        // pair the handle took at create and at most the cap of extra locks
                        // more. The handle's count and the memory manager's cannot be read at
                        // one instant from here (a stale read of either is no violation); they
                        // must agree exactly once every thread is done (below).
                        for section in [&LOCKED_CODE, &PAGED_DATA] {
                            let count = section.lock_count();
                            assert!((1..=1 + protocol::MAX_EXTRA_LOCKS).contains(&count));
                        }
                    }
                }
            });
        }
    });
    // A refused LOCK or UNLOCK changed nothing: what the handle counts is exactly what the
    // memory manager holds for it.
    let extra = open.held() - 1;
    assert_eq!(counts(), [1 + extra, 1 + extra]);
    while open.unlock_extra().is_ok() {}
    assert_eq!(counts(), [1, 1]);
    drop(open);
    assert_eq!(counts(), [0, 0]);
    assert_eq!(LOCKED_CODE.handle().map(kernel::SectionHandle::count), Some(0));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "lockable code ran while its section was unlocked")]
fn lockable_code_asserts_its_section_is_locked() {
    let _turn = exclusive();
    assert_eq!(counts(), [0, 0]);
    let _ = crate::work::run_locked(1, 1);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "pageable code above APC_LEVEL")]
fn pageable_code_asserts_its_irql() {
    /// Lowers the IRQL again while the panic unwinds, before `open` drops.
    struct Raised;
    impl Drop for Raised {
        fn drop(&mut self) {
            kernel::set_irql(kernel::PASSIVE_LEVEL);
        }
    }
    let _turn = exclusive();
    let open = opened();
    kernel::set_irql(kernel::DISPATCH_LEVEL);
    let _raised = Raised;
    let _ = ioctl::handle(&open, protocol::IOCTL_QUERY_STATE, &[], 1024);
}

#[test]
#[should_panic(expected = "resident driver code above DISPATCH_LEVEL")]
fn resident_code_refuses_to_run_above_dispatch_level() {
    // The driver has no interrupt service routine: at DIRQL, resident code runs only by a bug.
    kernel::set_irql(kernel::DISPATCH_LEVEL);
    crate::sections::assert_resident_irql();
    kernel::set_irql(kernel::DISPATCH_LEVEL + 1);
    crate::sections::assert_resident_irql();
}

#[test]
#[should_panic(expected = "held by another lock")]
fn data_tied_to_a_lock_is_reached_only_with_that_locks_guard() {
    static OWNER: kernel::SpinLock = kernel::SpinLock::new();
    static OTHER: kernel::SpinLock = kernel::SpinLock::new();
    static DATA: kernel::LockedBy<u32> = kernel::LockedBy::new(&OWNER, 7);
    {
        let mut guard = OWNER.acquire();
        *DATA.access(&mut guard) += 1;
        assert_eq!(*DATA.access(&mut guard), 8);
    }
    let mut wrong = OTHER.acquire();
    let _ = DATA.access(&mut wrong);
}

#[test]
fn unload_releases_the_locks_a_buggy_handle_left_and_only_those() {
    let _turn = exclusive();
    // With nothing left, unload releases nothing (the stand-in would panic at count 0).
    for section in LOCKABLE {
        section.release_leftovers();
    }
    assert_eq!(counts(), [0, 0]);
    let open = opened();
    open.lock_extra().expect("one extra pair");
    // A handle whose close never came: its two pairs stay locked until unload.
    core::mem::forget(open);
    assert_eq!(counts(), [2, 2]);
    for section in LOCKABLE {
        section.release_leftovers();
    }
    assert_eq!(counts(), [0, 0]);
}

fn call(open: &Open, code: u32, input: &[u8], capacity: usize) -> Result<Vec<u8>, i32> {
    ioctl::handle(open, code, input, capacity).map(|reply| reply.as_bytes().to_vec())
}

#[test]
fn run_locked_returns_the_protocol_checksum_at_dispatch_level() {
    let _turn = exclusive();
    let open = opened();
    let request = RunRequest::new(1000, 0xFEED);
    let reply =
        call(&open, protocol::IOCTL_RUN_LOCKED, request.as_bytes(), 16).expect("valid request");
    let reply = protocol::RunReply::read_from_bytes(&reply).expect("reply size");
    assert_eq!(reply.checksum, protocol::checksum(0xFEED, 1000));
    assert_eq!(reply.irql, u32::from(kernel::DISPATCH_LEVEL));
    assert_eq!(kernel::current_irql(), kernel::PASSIVE_LEVEL);
}

#[test]
fn bad_requests_get_their_status_and_change_nothing() {
    let _turn = exclusive();
    let open = opened();
    let run = RunRequest::new(10, 1);
    let zero = RunRequest::new(0, 1);
    let too_many = RunRequest::new(protocol::MAX_RUN_ITERATIONS + 1, 1);
    let cases: [(u32, &[u8], usize, i32); 9] = [
        (protocol::IOCTL_QUERY_STATE, &[], 8, status::BUFFER_TOO_SMALL),
        (protocol::IOCTL_QUERY_STATE, &[1], 1024, status::INVALID_PARAMETER),
        (protocol::IOCTL_RUN_LOCKED, &[], 16, status::BUFFER_TOO_SMALL),
        (protocol::IOCTL_RUN_LOCKED, run.as_bytes(), 15, status::BUFFER_TOO_SMALL),
        (protocol::IOCTL_RUN_LOCKED, zero.as_bytes(), 16, status::INVALID_PARAMETER),
        (protocol::IOCTL_RUN_LOCKED, too_many.as_bytes(), 16, status::INVALID_PARAMETER),
        (protocol::IOCTL_LOCK, &[0; 4], 8, status::INVALID_PARAMETER),
        (protocol::IOCTL_LOCK, &[], 7, status::BUFFER_TOO_SMALL),
        (0x8337_6FFC, &[], 64, status::INVALID_DEVICE_REQUEST),
    ];
    for (code, input, capacity, expected) in cases {
        assert_eq!(call(&open, code, input, capacity), Err(expected), "code {code:#x}");
        assert_eq!(counts(), [1, 1]);
        assert_eq!(open.held() - 1, 0);
    }
}

#[test]
fn query_state_reports_sections_and_what_the_caller_holds() {
    let _turn = exclusive();
    let open = opened();
    let other = opened();
    assert!(matches!(ioctl::handle(&open, protocol::IOCTL_LOCK, &[], 8), Ok(Reply::Lock(_))));
    let bytes = call(&open, protocol::IOCTL_QUERY_STATE, &[], 1024).expect("query");
    let state = protocol::StateReply::read_from_bytes(&bytes).expect("reply size");
    assert_eq!(state.sections[0].name(), "PAGELK");
    assert_eq!(state.sections[1].name(), "PAGEDATA");
    assert_eq!(state.sections[0].lock_count, 3);
    assert_eq!(state.sections[1].held_by_caller, 2);
    assert_eq!(state.caller_extra_locks, 1);
    drop(other);
}

#[test]
fn a_spin_lock_guard_is_not_send() {
    /// Implemented twice for a `Send` type, which makes the call below ambiguous.
    trait AmbiguousIfSend<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
    // Compiles only while the first impl is the one that applies: dropping a guard restores
    // its processor's IRQL, so it must not move to another thread.
    <kernel::SpinLockGuard<'static> as AmbiguousIfSend<_>>::check();
}

#[test]
fn a_guard_raises_to_dispatch_level_and_its_drop_returns_and_releases() {
    static LOCK: kernel::SpinLock = kernel::SpinLock::new();
    let guard = LOCK.acquire();
    assert_eq!(kernel::current_irql(), kernel::DISPATCH_LEVEL);
    assert!(guard.holds(&LOCK));
    drop(guard);
    assert_eq!(kernel::current_irql(), kernel::PASSIVE_LEVEL);
    // Released: a second acquire does not spin forever.
    drop(LOCK.acquire());
}

#[test]
fn an_open_of_a_name_below_the_device_or_of_a_directory_is_refused_with_its_status() {
    use crate::kernel::CreateRequest;
    use crate::open::check_create;
    let device = CreateRequest::default();
    let below = CreateRequest { names_a_file: true, ..device };
    let directory = CreateRequest { directory: true, ..device };
    assert_eq!(check_create(device), Ok(()));
    assert_eq!(check_create(below), Err(status::OBJECT_NAME_NOT_FOUND));
    assert_eq!(check_create(directory), Err(status::NOT_A_DIRECTORY));
    // A directory below the device names nothing first.
    let both = CreateRequest { names_a_file: true, directory: true };
    assert_eq!(check_create(both), Err(status::OBJECT_NAME_NOT_FOUND));
}

/// A driver's device list as the I/O manager keeps it, for [`kernel::delete_each`]: `delete`
/// marks a device, and unlinks and frees it only when nothing references it (as
/// `IoDeleteDevice` and `IopCompleteUnloadOrDelete` do); a freed device's link reads as
/// garbage.
struct DeviceList {
    head: Option<usize>,
    next: Vec<Option<usize>>,
    referenced: Vec<bool>,
    deletes: Vec<u32>,
    freed: Vec<bool>,
}

impl DeviceList {
    /// Devices `0..referenced.len()`, linked in order; `referenced[i]` says whether a file
    /// object still references device `i`.
    fn new(referenced: &[bool]) -> Self {
        let n = referenced.len();
        Self {
            head: (n > 0).then_some(0),
            next: (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect(),
            referenced: referenced.to_vec(),
            deletes: vec![0; n],
            freed: vec![false; n],
        }
    }

    fn delete(&mut self, device: usize) {
        assert!(!self.freed[device], "device {device} deleted after it was freed");
        self.deletes[device] += 1;
        if self.referenced[device] {
            return;
        }
        let successor = self.next[device];
        if self.head == Some(device) {
            self.head = successor;
        } else if let Some(before) = self.next.iter().position(|n| *n == Some(device)) {
            self.next[before] = successor;
        }
        self.freed[device] = true;
        // Freed memory: what its link reads is not the successor any more.
        self.next[device] = None;
    }
}

#[test]
fn deleting_the_devices_deletes_each_once_even_when_a_delete_leaves_it_linked() {
    for referenced in [
        &[][..],
        &[false],
        &[true],
        &[false, false, false],
        &[true, false, true],
        &[false, true, false, true],
    ] {
        let list = std::cell::RefCell::new(DeviceList::new(referenced));
        let head = list.borrow().head;
        kernel::delete_each(head, |d| list.borrow().next[d], |d| list.borrow_mut().delete(d));
        let list = list.into_inner();
        assert!(list.deletes.iter().all(|&n| n == 1), "{referenced:?}: {:?}", list.deletes);
        // Only the referenced devices stay on the list, to be freed at their last close.
        let mut left = Vec::new();
        let mut at = list.head;
        while let Some(device) = at {
            left.push(device);
            at = list.next[device];
        }
        let expected: Vec<usize> = (0..referenced.len()).filter(|&i| referenced[i]).collect();
        assert_eq!(left, expected, "{referenced:?}");
    }
}

mod pending {
    //! `WAIT`, `SIGNAL`, cleanup, cancel and the timer's tick, over the stand-in queue.

    use pagelock_protocol::zerocopy::{FromBytes, IntoBytes};
    use pagelock_protocol::{
        MAX_PENDING, MAX_WAIT_MS, SignalRequest, SignalScope, WAIT_TICK_MS, WaitOutcome, WaitReply,
        WaitRequest,
    };

    use super::{counts, exclusive, opened};
    use crate::kernel::{self, Completion, FileId, Irp, QueueGate, status};
    use crate::pending;

    const A: FileId = FileId(0xA000);
    const B: FileId = FileId(0xB000);

    /// Queues a wait of `timeout_ms` on `file`; its completion record.
    fn wait(file: FileId, timeout_ms: u32, cookie: u64) -> Completion {
        let request = WaitRequest::new(timeout_ms, cookie);
        let checked = pending::check_wait(request.as_bytes(), size_of::<WaitReply>());
        let (irp, done) = Irp::new(file);
        let returned = pending::wait(irp, checked.expect("a valid wait"));
        assert_eq!(returned, status::PENDING);
        done
    }

    fn ended(done: &Completion) -> Option<(i32, Option<WaitReply>)> {
        let slot = done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().map(|(status, bytes)| (*status, WaitReply::read_from_bytes(bytes).ok()))
    }

    fn outcome(done: &Completion) -> Option<WaitOutcome> {
        match ended(done)? {
            (status::CANCELLED, None) => Some(WaitOutcome::Cancelled),
            (status::SUCCESS, Some(reply)) => WaitOutcome::from_u32(reply.outcome),
            other => panic!("completed with {other:?}"),
        }
    }

    fn signal(file: FileId, scope: SignalScope) -> u32 {
        let reply = pending::signal(file, SignalRequest::new(scope).as_bytes(), 8);
        reply.expect("a valid signal").completed
    }

    /// Nanoseconds in a millisecond, the stand-in performance counter's unit being 1 ns.
    const MS: u64 = 1_000_000;
    /// One period of the timer, in nanoseconds.
    const PERIOD: u64 = WAIT_TICK_MS as u64 * MS;

    /// The timer's next tick, `ns` after the last thing that moved the clock: the clock moves
    /// on, then the DPC runs at `DISPATCH_LEVEL`.
    fn tick_after(ns: u64) {
        kernel::advance_clock(ns);
        kernel::set_irql(kernel::DISPATCH_LEVEL);
        pending::on_tick();
        kernel::set_irql(kernel::PASSIVE_LEVEL);
    }

    #[test]
    fn malformed_waits_are_refused_and_queue_nothing() {
        let _turn = exclusive();
        let good = WaitRequest::new(100, 1);
        let (zero, long) = (WaitRequest::new(0, 1), WaitRequest::new(MAX_WAIT_MS + 1, 1));
        let old = WaitRequest { version: 9, ..good };
        let cases: [(&[u8], usize, i32); 6] = [
            (&good.as_bytes()[..8], 24, status::BUFFER_TOO_SMALL),
            (good.as_bytes(), 23, status::BUFFER_TOO_SMALL),
            (&[0; 17], 24, status::INVALID_PARAMETER),
            (zero.as_bytes(), 24, status::INVALID_PARAMETER),
            (long.as_bytes(), 24, status::INVALID_PARAMETER),
            (old.as_bytes(), 24, status::INVALID_PARAMETER),
        ];
        for (input, capacity, expected) in cases {
            assert_eq!(pending::check_wait(input, capacity), Err(expected));
        }
        assert_eq!(pending::check_wait(good.as_bytes(), 24), Ok(good));
        assert_eq!((pending::pending(), kernel::queued()), (0, 0));
    }

    #[test]
    fn malformed_signals_are_refused_and_complete_nothing() {
        let _turn = exclusive();
        let open = opened();
        let queued = wait(A, 1000, 1);
        let unknown = SignalRequest { scope: 7, ..SignalRequest::new(SignalScope::All) };
        assert_eq!(pending::signal(A, unknown.as_bytes(), 8), Err(status::INVALID_PARAMETER));
        let all = SignalRequest::new(SignalScope::All);
        assert_eq!(pending::signal(A, all.as_bytes(), 7), Err(status::BUFFER_TOO_SMALL));
        assert_eq!(pending::signal(A, &all.as_bytes()[..4], 8), Err(status::BUFFER_TOO_SMALL));
        assert_eq!((pending::pending(), outcome(&queued)), (1, None));
        assert_eq!(pending::cleanup(A, &QueueGate::new()), 1);
        drop(open);
    }

    #[test]
    fn the_queue_is_capped_and_a_refusal_changes_nothing() {
        let _turn = exclusive();
        let open = opened();
        let waits: Vec<_> = (0..u64::from(MAX_PENDING)).map(|i| wait(A, 1000, i)).collect();
        assert!(kernel::timer_armed(), "the first wait arms the timer");
        let (irp, refused) = Irp::new(A);
        let request = WaitRequest::new(10, 99);
        assert_eq!(pending::wait(irp, request), status::INVALID_DEVICE_STATE);
        assert_eq!(ended(&refused), Some((status::INVALID_DEVICE_STATE, None)));
        assert_eq!((pending::pending(), kernel::queued()), (MAX_PENDING, MAX_PENDING as usize));
        assert_eq!(signal(A, SignalScope::All), MAX_PENDING);
        assert!(waits.iter().all(|w| outcome(w) == Some(WaitOutcome::Signalled)));
        drop(open);
    }

    #[test]
    fn only_the_wait_that_finds_nothing_pending_arms_the_timer() {
        let _turn = exclusive();
        let open = opened();
        kernel::timer_stop();
        let first = wait(A, 1000, 1);
        assert!(kernel::timer_armed(), "the first wait arms the timer");
        // Stopped behind the driver's back: a later wait must not arm it again, as the
        // periodic timer already runs for the pending one.
        kernel::timer_stop();
        let second = wait(B, 1000, 2);
        assert!(!kernel::timer_armed(), "a wait that finds another pending arms nothing");
        assert_eq!(signal(A, SignalScope::All), 2);
        assert!([&first, &second].iter().all(|w| outcome(w) == Some(WaitOutcome::Signalled)));
        assert_eq!(pending::pending(), 0);
        drop(open);
    }

    #[test]
    fn signal_counts_the_waits_it_completes_by_scope() {
        let _turn = exclusive();
        let open = opened();
        let on_a: Vec<_> = (0..3).map(|i| wait(A, 1000, i)).collect();
        let on_b: Vec<_> = (0..2).map(|i| wait(B, 1000, 10 + i)).collect();
        assert_eq!(signal(A, SignalScope::Caller), 3);
        assert!(on_a.iter().all(|w| outcome(w) == Some(WaitOutcome::Signalled)));
        assert!(on_b.iter().all(|w| outcome(w).is_none()));
        assert_eq!(signal(A, SignalScope::Caller), 0);
        assert_eq!(signal(A, SignalScope::All), 2);
        let cookies: Vec<_> =
            on_b.iter().map(|w| ended(w).and_then(|e| e.1).map(|r| r.cookie)).collect();
        assert_eq!(cookies, [Some(10), Some(11)]);
        assert_eq!(pending::pending(), 0);
        drop(open);
    }

    #[test]
    fn cleanup_cancels_exactly_the_handles_waits_before_it_returns() {
        let _turn = exclusive();
        let open = opened();
        let on_a: Vec<_> = (0..4).map(|i| wait(A, 1000, i)).collect();
        let on_b = wait(B, 1000, 9);
        assert_eq!(pending::cleanup(A, &QueueGate::new()), 4);
        assert!(on_a.iter().all(|w| ended(w) == Some((status::CANCELLED, None))));
        assert_eq!((outcome(&on_b), kernel::queued()), (None, 1));
        assert_eq!(pending::cleanup(B, &QueueGate::new()), 1);
        assert_eq!(pending::cleanup(B, &QueueGate::new()), 0);
        assert_eq!(pending::pending(), 0);
        drop(open);
    }

    #[test]
    fn a_wait_that_reaches_the_queue_after_its_handles_cleanup_ends_cancelled_and_holds_nothing() {
        let _turn = exclusive();
        let open = opened();
        let gate: &'static QueueGate = Box::leak(Box::new(QueueGate::new()));
        let request = WaitRequest::new(1000, 5);
        let (early, queued) = Irp::with_gate(A, gate);
        assert_eq!(pending::wait(early, request), status::PENDING);
        let other = wait(B, 1000, 6);
        assert_eq!(pending::cleanup(A, gate), 1, "the wait queued before cleanup is drained");
        // Sent before the close, it reaches the queue after cleanup: refused, not queued.
        let (late, refused) = Irp::with_gate(A, gate);
        assert_eq!(pending::wait(late, request), status::PENDING, "marked pending: PENDING");
        assert_eq!(ended(&refused), Some((status::CANCELLED, None)));
        assert_eq!(ended(&queued), Some((status::CANCELLED, None)));
        // Its slot went back: only the other handle's wait is pending, and it is untouched.
        assert_eq!((pending::pending(), kernel::queued(), outcome(&other)), (1, 1, None));
        assert_eq!(signal(B, SignalScope::Caller), 1);
        drop(open);
    }

    #[test]
    fn a_cancelled_wait_completes_once_as_cancelled() {
        let _turn = exclusive();
        let open = opened();
        let first = wait(A, 1000, 1);
        let second = wait(A, 1000, 2);
        assert!(kernel::cancel_first(A));
        assert_eq!(outcome(&first), Some(WaitOutcome::Cancelled));
        assert_eq!(signal(A, SignalScope::Caller), 1);
        assert_eq!(outcome(&second), Some(WaitOutcome::Signalled));
        // A cancel that comes after the completion finds nothing to cancel.
        assert!(!kernel::cancel_first(A));
        drop(open);
    }

    #[test]
    fn waits_expire_in_deadline_order_not_in_queue_order() {
        let _turn = exclusive();
        let open = opened();
        let slow = wait(A, 5 * WAIT_TICK_MS, 1);
        let fast = wait(B, WAIT_TICK_MS, 2);
        let middle = wait(A, 3 * WAIT_TICK_MS, 3);
        let mut order = Vec::new();
        for _ in 0..10 {
            tick_after(PERIOD);
            for (name, done) in [("slow", &slow), ("fast", &fast), ("middle", &middle)] {
                if outcome(done).is_some() && !order.contains(&name) {
                    order.push(name);
                }
            }
        }
        assert_eq!(order, ["fast", "middle", "slow"]);
        for done in [&slow, &fast, &middle] {
            assert_eq!(outcome(done), Some(WaitOutcome::Expired));
        }
        let sequence: Vec<_> =
            [&fast, &middle, &slow].iter().map(|d| ended(d).and_then(|e| e.1)).collect();
        let sequence: Vec<_> = sequence.iter().map(|r| r.map(|r| r.completed_waits)).collect();
        assert!(sequence.windows(2).all(|p| p[0] < p[1]), "{sequence:?}");
        drop(open);
    }

    #[test]
    fn a_wait_expires_at_the_first_tick_at_or_after_its_timeout() {
        let _turn = exclusive();
        let open = opened();
        // Sent at several points of a period (`phase` after the last tick), with timeouts on,
        // just after and just before a whole number of periods.
        for phase in [0, 1, PERIOD / 2, PERIOD - 1] {
            for timeout_ms in [1, WAIT_TICK_MS, 3 * WAIT_TICK_MS, 3 * WAIT_TICK_MS + 1] {
                let timeout = u64::from(timeout_ms) * MS;
                kernel::advance_clock(phase);
                let done = wait(A, timeout_ms, 7);
                // The ticks after the send come at `PERIOD - phase`, then a period apart.
                let mut since_sent = PERIOD - phase;
                tick_after(PERIOD - phase);
                while outcome(&done).is_none() {
                    assert!(since_sent < timeout, "not expired {since_sent} ns after the send");
                    since_sent += PERIOD;
                    tick_after(PERIOD);
                }
                let case = format!("phase {phase} ns, timeout {timeout_ms} ms");
                assert!(since_sent >= timeout, "{case}: expired {since_sent} ns after the send");
                assert!(since_sent < timeout + PERIOD, "{case}: expired a period late");
                assert_eq!(ended(&done).and_then(|e| e.1).map(|r| r.cookie), Some(7), "{case}");
            }
        }
        drop(open);
    }

    #[test]
    fn a_tick_with_nothing_pending_stops_the_timer_and_runs_no_locked_code() {
        // With no handle open the sections are unlocked: any locked code the tick ran would
        // trip `#[locked]`'s check in a debug build.
        let _turn = exclusive();
        assert_eq!(counts(), [0, 0]);
        kernel::timer_start(WAIT_TICK_MS);
        kernel::set_irql(kernel::DISPATCH_LEVEL);
        pending::on_tick();
        kernel::set_irql(kernel::PASSIVE_LEVEL);
        assert!(!kernel::timer_armed());
    }
}

/// The section table reader of `DriverEntry`, on images written with `object`'s PE writer.
mod section_table {
    use object::{
        pe,
        write::pe::{NtHeaders, Writer},
    };

    use crate::sections::size_in_image;

    /// A PE32+ image with `.text` and the named sections of the given virtual sizes, in that
    /// order, one page apart; returns the image and each section's RVA.
    fn image(sections: &[(&[u8; 8], u32)]) -> (Vec<u8>, Vec<u32>) {
        let mut out = Vec::new();
        let mut writer = Writer::new(true, 0x1000, 0x200, &mut out);
        writer.reserve_dos_header_and_stub();
        writer.reserve_nt_headers(16);
        writer.reserve_section_headers(u16::try_from(sections.len()).unwrap() + 1);
        let text = writer.reserve_text_section(0x40);
        let code = pe::IMAGE_SCN_CNT_CODE | pe::IMAGE_SCN_MEM_EXECUTE | pe::IMAGE_SCN_MEM_READ;
        let ranges: Vec<_> = sections
            .iter()
            .map(|(name, size)| writer.reserve_section(**name, code, *size, *size))
            .collect();
        writer.write_dos_header_and_stub().unwrap();
        writer.write_nt_headers(NtHeaders {
            machine: pe::IMAGE_FILE_MACHINE_AMD64,
            time_date_stamp: 0,
            characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE | pe::IMAGE_FILE_DLL,
            major_linker_version: 14,
            minor_linker_version: 0,
            address_of_entry_point: text.virtual_address,
            image_base: 0x1_4000_0000,
            major_operating_system_version: 10,
            minor_operating_system_version: 0,
            major_image_version: 0,
            minor_image_version: 0,
            major_subsystem_version: 10,
            minor_subsystem_version: 0,
            subsystem: pe::IMAGE_SUBSYSTEM_NATIVE,
            dll_characteristics: 0,
            size_of_stack_reserve: 0,
            size_of_stack_commit: 0,
            size_of_heap_reserve: 0,
            size_of_heap_commit: 0,
        });
        writer.write_section_headers();
        writer.write_section(text.file_offset, &[0xCC; 0x40]);
        for (range, (_, size)) in ranges.iter().zip(sections) {
            writer.write_section(range.file_offset, &vec![0xCC; *size as usize]);
        }
        (out, ranges.iter().map(|r| r.virtual_address).collect())
    }

    #[test]
    fn a_sections_size_is_found_by_its_name_and_an_address_inside_it() {
        let (image, rvas) = image(&[(b"PAGELK\0\0", 0x234), (b"PAGEDATA", 0x1800)]);
        let (lk, data) = (rvas[0] as usize, rvas[1] as usize);
        assert_eq!(size_in_image(&image, b"PAGELK\0\0", lk), Some(0x234));
        assert_eq!(size_in_image(&image, b"PAGELK\0\0", lk + 0x233), Some(0x234));
        assert_eq!(size_in_image(&image, b"PAGEDATA", data + 0x17FF), Some(0x1800));
        // An address past the section's end, or in another section, or before it: none.
        assert_eq!(size_in_image(&image, b"PAGELK\0\0", lk + 0x234), None);
        assert_eq!(size_in_image(&image, b"PAGELK\0\0", data), None);
        assert_eq!(size_in_image(&image, b"PAGEDATA", lk), None);
        assert_eq!(size_in_image(&image, b"INIT\0\0\0\0", lk), None);
    }

    #[test]
    fn headers_that_do_not_parse_give_no_size() {
        let (image, rvas) = image(&[(b"PAGELK\0\0", 0x100)]);
        let at = rvas[0] as usize;
        // Cut inside the section table, or with a broken NT signature.
        let table_end = image.iter().rposition(|&b| b == b'K').unwrap();
        assert_eq!(size_in_image(&image[..table_end], b"PAGELK\0\0", at), None);
        let mut broken = image.clone();
        let nt = u32::from_le_bytes(broken[0x3C..0x40].try_into().unwrap()) as usize;
        broken[nt] = b'X';
        assert_eq!(size_in_image(&broken, b"PAGELK\0\0", at), None);
        assert_eq!(size_in_image(&image, b"PAGELK\0\0", at), Some(0x100));
    }
}

#[test]
fn a_timer_due_in_a_period_is_that_many_100_ns_units_before_now() {
    // KeSetTimerEx: negative due times are relative, in 100 ns units.
    assert_eq!(kernel::relative_due_time(protocol::WAIT_TICK_MS), -100_000);
    assert_eq!(kernel::relative_due_time(1), -10_000);
    assert_eq!(kernel::relative_due_time(0), 0);
}

#[test]
fn bench_reports_the_time_its_loops_took_on_the_counter_it_reads() {
    let _turn = exclusive();
    let open = opened();
    // The stand-in counter moves only when a test moves it: from any reading, both loops take
    // no time, and the reply says so, with the counter's frequency.
    kernel::advance_clock(1_000_000);
    let input = protocol::BenchRequest::new(5);
    let bytes = call(&open, protocol::IOCTL_BENCH, input.as_bytes(), 64).expect("bench");
    let reply = protocol::BenchReply::read_from_bytes(&bytes).expect("reply size");
    assert_eq!((reply.iterations, reply.by_address_ticks, reply.by_handle_ticks), (5, 0, 0));
    assert_eq!(reply.frequency, kernel::performance_counter().1);
    assert_eq!(counts(), [1, 1], "every pair the loops took is released");
    drop(open);
}
