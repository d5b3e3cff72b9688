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
                        // The memory manager never holds fewer locks than the handle counts.
                        let held = open.held();
                        assert!(
                            LOCKED_CODE.lock_count() >= held && PAGED_DATA.lock_count() >= held
                        );
                    }
                }
            });
        }
    });
    // A refused LOCK or UNLOCK changed nothing: what the handle counts is exactly what the
    // memory manager holds for it.
    let extra = open.extra();
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
        assert_eq!(open.extra(), 0);
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
