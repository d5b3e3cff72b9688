//! In-process stand-ins for the kernel routines the portable logic uses, so that the section
//! bookkeeping and the IOCTL handlers can be unit-tested on the build host. The real kernel
//! image is exercised on the test bed instead.

use core::{
    cell::Cell,
    ffi::{CStr, c_void},
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
};
use std::{boxed::Box, sync::Mutex, vec::Vec};

use super::Irql;

std::thread_local! {
    static IRQL: Cell<Irql> = const { Cell::new(super::PASSIVE_LEVEL) };
}

/// The current IRQL of this thread (a test may raise it with [`set_irql`]).
#[must_use]
pub fn current_irql() -> Irql {
    IRQL.with(Cell::get)
}

/// Sets this thread's IRQL, for tests.
pub fn set_irql(irql: Irql) {
    IRQL.with(|cell| cell.set(irql));
}

/// Prints to standard error.
pub fn log_info(message: &CStr) {
    std::eprintln!("pagelock: {}", message.to_string_lossy());
}

/// Prints to standard error.
pub fn log_error(message: &CStr, first: u32, second: u32) {
    std::eprintln!("pagelock: {} ({first}, {second})", message.to_string_lossy());
}

/// The stand-in performance counter, in nanoseconds (1 GHz). It moves only when a test moves it
/// ([`advance_clock`]), so that the timing of waits is exact in tests.
static CLOCK_NS: AtomicU64 = AtomicU64::new(0);

/// The stand-in performance counter and its frequency (1 GHz).
#[must_use]
pub fn performance_counter() -> (u64, u64) {
    (CLOCK_NS.load(Ordering::SeqCst), 1_000_000_000)
}

/// Moves the stand-in performance counter `ns` nanoseconds on, for tests.
pub fn advance_clock(ns: u64) {
    CLOCK_NS.fetch_add(ns, Ordering::SeqCst);
}

/// Boxes `value`; the host allocator does not fail.
///
/// # Errors
/// Never.
pub fn try_box<T>(value: T) -> Result<Box<T>, T> {
    Ok(Box::new(value))
}

/// Lock counts by section address, kept like the memory manager keeps them.
static SECTIONS: Mutex<Vec<(usize, &'static AtomicI64)>> = Mutex::new(Vec::new());

/// A handle to a stand-in section: its lock count.
#[derive(Clone, Copy)]
pub struct SectionHandle(&'static AtomicI64);

impl SectionHandle {
    pub(super) const fn into_raw(self) -> *mut c_void {
        core::ptr::from_ref(self.0).cast_mut().cast()
    }

    /// # Safety
    /// `raw` must come from [`Self::into_raw`].
    pub(super) const unsafe fn from_raw(raw: NonNull<c_void>) -> Self {
        // SAFETY: by the contract `raw` is a leaked `&'static AtomicI64`.
        Self(unsafe { raw.cast::<AtomicI64>().as_ref() })
    }

    /// Locks the section containing `address` (one handle per distinct address).
    ///
    /// # Panics
    /// Above `APC_LEVEL`, as the real routine's rule demands.
    #[must_use]
    pub fn lock_by_address(address: *const c_void) -> Option<Self> {
        assert!(current_irql() <= super::APC_LEVEL, "Mm routine above APC_LEVEL");
        let key = address as usize;
        let count = {
            let mut sections = SECTIONS.lock().ok()?;
            if let Some((_, count)) = sections.iter().find(|(at, _)| *at == key) {
                *count
            } else {
                let count: &'static AtomicI64 = Box::leak(Box::new(AtomicI64::new(0)));
                sections.push((key, count));
                count
            }
        };
        count.fetch_add(1, Ordering::SeqCst);
        Some(Self(count))
    }

    /// Adds one lock.
    ///
    /// # Panics
    /// Above `APC_LEVEL`.
    pub fn lock(self) {
        assert!(current_irql() <= super::APC_LEVEL, "Mm routine above APC_LEVEL");
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes one lock.
    ///
    /// # Panics
    /// Above `APC_LEVEL`, or when the count is already zero (a verifier violation).
    pub fn unlock(self) {
        assert!(current_irql() <= super::APC_LEVEL, "Mm routine above APC_LEVEL");
        let before = self.0.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "section unlocked more often than locked");
    }

    /// The stand-in memory manager's count, for tests.
    #[must_use]
    pub fn count(self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The stand-in spin lock: a flag taken with an atomic swap; raising the IRQL is modelled per
/// thread. The backend of [`super::SpinLock`].
pub(super) struct SpinBackend;

// SAFETY: `acquire` raises this thread's IRQL to DISPATCH_LEVEL, then spins until it swaps the
// flag from released to held (Acquire), so one thread holds it at a time and sees what the last
// holder wrote; `release` stores released (Release) and returns to the IRQL it is given.
unsafe impl super::lock::Backend for SpinBackend {
    type State = bool;
    const UNLOCKED: bool = false;

    unsafe fn acquire(state: *mut bool) -> Irql {
        // SAFETY: by the caller's contract `state` is live; only this backend touches it, and
        // always atomically.
        let held = unsafe { AtomicBool::from_ptr(state) };
        let previous = current_irql();
        set_irql(super::DISPATCH_LEVEL);
        while held.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            core::hint::spin_loop();
        }
        previous
    }

    unsafe fn release(state: *mut bool, previous: Irql) {
        // SAFETY: as in `acquire`.
        let held = unsafe { AtomicBool::from_ptr(state) };
        held.store(false, Ordering::Release);
        set_irql(previous);
    }
}

/// How a stand-in IRP was completed: its status and reply, once.
pub type Completion = std::sync::Arc<Mutex<Option<(super::Status, Vec<u8>)>>>;

/// A stand-in IRP: the file object it came on, its handle's queue gate, and where its
/// completion is recorded.
pub struct Irp {
    file: super::FileId,
    gate: Option<&'static super::QueueGate>,
    completion: Completion,
}

impl Irp {
    /// A request on `file`, whose handle's gate stays open, and the record its completion
    /// will fill.
    #[must_use]
    pub fn new(file: super::FileId) -> (Self, Completion) {
        let completion = Completion::default();
        (Self { file, gate: None, completion: completion.clone() }, completion)
    }

    /// A request on `file`, whose handle's gate is `gate`.
    #[must_use]
    pub fn with_gate(file: super::FileId, gate: &'static super::QueueGate) -> (Self, Completion) {
        let (irp, completion) = Self::new(file);
        (Self { gate: Some(gate), ..irp }, completion)
    }

    /// Completes a request the queue refused; returns `STATUS_PENDING`, as the real one does
    /// for the IRP it marked pending.
    #[must_use]
    pub fn complete_pended(self, status: super::Status) -> super::Status {
        let _ = self.complete(status, &[]);
        super::status::PENDING
    }

    /// Completes the request; returns `status` for the dispatch routine.
    ///
    /// # Panics
    /// When the request was completed before (the kernel's bugcheck 0x44).
    #[must_use]
    pub fn complete(self, status: super::Status, reply: &[u8]) -> super::Status {
        let mut slot = self.completion.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(slot.is_none(), "MULTIPLE_IRP_COMPLETE_REQUESTS");
        *slot = Some((
            status,
            if super::status::is_success(status) { reply.to_vec() } else { Vec::new() },
        ));
        status
    }
}

/// A wait taken off the stand-in queue, not yet completed.
pub struct QueuedWait {
    irp: Irp,
    deadline: u64,
    cookie: u64,
    result: (super::Status, Vec<u8>),
}

impl QueuedWait {
    /// The cookie the request carried.
    #[must_use]
    pub const fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Sets how the request ends: `status` and, on success, `reply`.
    pub fn set_result(&mut self, status: super::Status, reply: &[u8]) {
        self.result = (status, reply.to_vec());
    }

    /// Completes the request with what [`Self::set_result`] set.
    pub fn complete(self) {
        let (status, reply) = self.result;
        let _ = self.irp.complete(status, &reply);
    }
}

/// The stand-in cancel-safe queue, in insertion order.
static QUEUE: Mutex<Vec<QueuedWait>> = Mutex::new(Vec::new());
/// Whether the stand-in timer is armed.
static TIMER_ARMED: AtomicBool = AtomicBool::new(false);

fn queue() -> std::sync::MutexGuard<'static, Vec<QueuedWait>> {
    QUEUE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Queues a wait (`IoCsqInsertIrpEx`), unless its handle's gate is closed.
///
/// # Errors
/// The IRP, refused.
#[expect(
    clippy::significant_drop_tightening,
    reason = "the gate's check and the insert are one step under the queue's lock"
)]
pub fn queue_wait(irp: Irp, deadline: u64, cookie: u64) -> Result<(), Irp> {
    // Under the stand-in queue's lock, as the real insert callback looks.
    let mut queue = queue();
    if irp.gate.is_some_and(super::QueueGate::is_closed) {
        return Err(irp);
    }
    queue.push(QueuedWait { irp, deadline, cookie, result: (super::status::PENDING, Vec::new()) });
    Ok(())
}

/// Closes a handle's gate under the stand-in queue's lock (`IRP_MJ_CLEANUP`).
pub fn close_gate(gate: &super::QueueGate) {
    let _queue = queue();
    gate.close();
}

/// Takes the first queued wait `filter` matches (`IoCsqRemoveNextIrp`).
#[must_use]
pub fn dequeue(filter: super::Filter) -> Option<QueuedWait> {
    let mut queue = queue();
    let at = queue.iter().position(|w| filter.matches(w.irp.file, w.deadline))?;
    Some(queue.remove(at))
}

/// Cancels the first queued wait on `file`, as `IoCancelIrp` does.
///
/// Through the queue's cancel routine: the wait leaves the queue and reaches the complete-cancelled
/// callback. False when none was queued (the cancel found the IRP already taken).
pub fn cancel_first(file: super::FileId) -> bool {
    let taken = dequeue(super::Filter::File(file));
    taken.map(crate::pending::on_cancelled).is_some()
}

/// Waits queued now, for tests.
#[must_use]
pub fn queued() -> usize {
    queue().len()
}

/// Arms the stand-in periodic timer (`KeSetTimerEx`).
pub fn timer_start(_period_ms: u32) {
    TIMER_ARMED.store(true, Ordering::SeqCst);
}

/// Cancels the stand-in timer (`KeCancelTimer`).
pub fn timer_stop() {
    TIMER_ARMED.store(false, Ordering::SeqCst);
}

/// Whether the stand-in timer is armed, for tests.
#[must_use]
pub fn timer_armed() -> bool {
    TIMER_ARMED.load(Ordering::SeqCst)
}

/// `KeFlushQueuedDpcs`: the stand-in runs its DPC only when a test calls it.
///
/// # Panics
/// Above `PASSIVE_LEVEL`, as the real routine's rule demands.
pub fn flush_dpcs() {
    assert_eq!(current_irql(), super::PASSIVE_LEVEL, "KeFlushQueuedDpcs above PASSIVE_LEVEL");
}
