//! The cancel-safe queue of `WAIT` requests (`IoCsq*`), the periodic `KTIMER` and its `KDPC`.
//!
//! The objects are **resident** (`.data`, never `PAGE*`): the kernel touches them at
//! `DISPATCH_LEVEL` (timer expiry, DPC queueing, `IoCancelIrp`) whether or not a handle holds
//! the lockable sections locked. The routines are resident (`.text`) where they can run with no
//! handle's lock behind them: the DPC routine, the queue's lock callbacks, its peek (up to the
//! emptiness test), its complete-cancelled callback, [`dequeue`], [`timer_stop`] and
//! [`QueuedWait::complete`]. The rest is in `PAGELK`, each with the lock that covers it:
//!
//! - **a queued IRP covers the queue's list work.** An IRP on the list is not completed (every
//!   path takes it off under the queue's lock first), so its file object is referenced, its
//!   `IRP_MJ_CLOSE` cannot have come, and the pair of locks its handle took in `IRP_MJ_CREATE`
//!   is held. So whatever runs under the queue's lock while the list is not empty runs covered:
//!   the insert callback (the `WAIT` being queued is in its dispatch routine, on its handle),
//!   the remove callback (the IRP being removed is on the list) and the peek's search.
//! - **an IRP the driver holds covers its own completion's preparation**
//!   ([`QueuedWait::set_result`]): not completed, so its handle's pair is held.
//! - **the `WAIT` in dispatch covers arming the timer** ([`timer_start`]).
//!
//! None of that code runs after the `IofCompleteRequest` of the IRP that covers it.
//!
//! The queue's list is linked through each IRP's `Tail.Overlay.ListEntry`; a wait's deadline
//! (a performance-counter reading) is kept in `Tail.Overlay.DriverContext[0]` and its cookie in
//! `DriverContext[1]`; the queue routines use `DriverContext[3]` themselves.

use core::{cell::UnsafeCell, ffi::c_void, mem::offset_of, ptr::NonNull};

use super::{
    Irp,
    sys::{self, IO_CSQ, IRP, KDPC, KIRQL, KSPIN_LOCK, KTIMER, LIST_ENTRY, ntddk},
};
use crate::kernel::{FileId, Filter, QueueGate, Status, lock::Backend as _, status};
use crate::sections::LOCKED_CODE;

/// `NotificationTimer` (wdm.h's `TIMER_TYPE`): stays signalled once due; only its DPC matters.
const NOTIFICATION_TIMER: sys::TIMER_TYPE = 0;
/// `IO_NO_INCREMENT`: no priority boost for the waiting thread.
const IO_NO_INCREMENT: i8 = 0;

/// The resident kernel objects of the queue and the timer.
///
/// # Invariants
/// After [`init_queue`] (`DriverEntry`, before any dispatch routine is set), `head` is a valid
/// circular list of queued IRPs touched only under `lock` (by the queue's callbacks), `csq` is
/// initialised with this module's callbacks, and `timer` and `dpc` are initialised kernel
/// objects; all of them stay where they are until the driver unloads.
struct Resident {
    csq: UnsafeCell<IO_CSQ>,
    lock: UnsafeCell<KSPIN_LOCK>,
    head: UnsafeCell<LIST_ENTRY>,
    timer: UnsafeCell<KTIMER>,
    dpc: UnsafeCell<KDPC>,
}

// SAFETY: the kernel objects are made to be shared between processors: the timer and DPC are
// the kernel's to synchronise, the list is touched only under `lock` (the queue's acquire and
// release callbacks), and `csq` is written once, before any other processor can reach it.
unsafe impl Sync for Resident {}

// SAFETY (of the zeroed values): every member is a plain C structure of integers and pointers
// for which all-zero bytes are valid (a released spin lock, null links and routines), and each
// is initialised by `init_queue` before use.
static RESIDENT: Resident = Resident {
    // SAFETY: see above; all-zero is a valid IO_CSQ.
    csq: UnsafeCell::new(unsafe { core::mem::zeroed() }),
    lock: UnsafeCell::new(0),
    // SAFETY: see above; all-zero is a valid LIST_ENTRY.
    head: UnsafeCell::new(unsafe { core::mem::zeroed() }),
    // SAFETY: see above; all-zero is a valid KTIMER.
    timer: UnsafeCell::new(unsafe { core::mem::zeroed() }),
    // SAFETY: see above; all-zero is a valid KDPC.
    dpc: UnsafeCell::new(unsafe { core::mem::zeroed() }),
};

/// Sets up the list, the timer, the DPC and the queue. `DriverEntry`, `PASSIVE_LEVEL`, once.
///
/// # Errors
/// The status of `IoCsqInitialize`.
#[pagelock_macros::init]
pub fn init_queue() -> Result<(), Status> {
    let head = RESIDENT.head.get();
    // SAFETY: `head` is the resident list head, not yet reachable by anything else; an empty
    // list points at itself (InitializeListHead).
    unsafe { head.write(LIST_ENTRY { Flink: head, Blink: head }) };
    // SAFETY: the timer is resident storage no one uses yet; PASSIVE_LEVEL.
    unsafe { ntddk::KeInitializeTimerEx(RESIDENT.timer.get(), NOTIFICATION_TIMER) };
    // SAFETY: as above for the DPC; the routine is resident and lives as long as the driver.
    unsafe { ntddk::KeInitializeDpc(RESIDENT.dpc.get(), Some(dpc_routine), core::ptr::null_mut()) };
    // SAFETY: `csq` is resident storage no one uses yet; the callbacks are resident and follow
    // the documented signatures (wdm.h, IO_CSQ_*; the insert callback IO_CSQ_INSERT_IRP_EX's,
    // which may refuse an IRP).
    let initialised = unsafe {
        ntddk::IoCsqInitializeEx(
            RESIDENT.csq.get(),
            Some(csq_insert),
            Some(csq_remove),
            Some(csq_peek_next),
            Some(csq_acquire_lock),
            Some(csq_release_lock),
            Some(csq_complete_canceled),
        )
    };
    // INVARIANT: list, timer, DPC and queue are initialised, before any dispatch routine is set.
    if status::is_success(initialised) { Ok(()) } else { Err(initialised) }
}

/// Arms the periodic timer: first due in `period_ms`, then every `period_ms`. Any IRQL up to
/// `DISPATCH_LEVEL`.
///
/// `PAGELK`, covered by the handle of the `WAIT` that arms it: its only caller,
/// `pending::reserve`, runs in that `WAIT`'s dispatch routine, whose IRP keeps the file object
/// and so the handle's pair of locks.
#[pagelock_macros::locked(LOCKED_CODE)]
pub fn timer_start(period_ms: u32) {
    let due = sys::LARGE_INTEGER { QuadPart: crate::kernel::relative_due_time(period_ms) };
    // SAFETY: timer and DPC were initialised at load (invariant of `RESIDENT`) and are resident;
    // the period fits a LONG (it is at most a few milliseconds).
    unsafe {
        ntddk::KeSetTimerEx(RESIDENT.timer.get(), due, period_ms.cast_signed(), RESIDENT.dpc.get())
    };
}

/// Cancels the timer (a DPC it already queued may still run). Any IRQL up to `DISPATCH_LEVEL`.
/// Resident: the DPC calls it when nothing is pending, so with no lock behind it.
#[pagelock_macros::resident]
pub fn timer_stop() {
    // SAFETY: the timer was initialised at load; cancelling one that is not set does nothing.
    unsafe { ntddk::KeCancelTimer(RESIDENT.timer.get()) };
}

/// Waits until every DPC queued on any processor has run (`KeFlushQueuedDpcs`). Unload only,
/// at `PASSIVE_LEVEL`.
#[pagelock_macros::paged]
pub fn flush_dpcs() {
    // SAFETY: no preconditions beyond PASSIVE_LEVEL, which `#[paged]`'s caller (unload) runs at.
    unsafe { ntddk::KeFlushQueuedDpcs() };
}

/// Queues a `WAIT` with its deadline and cookie (`IoCsqInsertIrpEx`, which marks it pending).
///
/// Unless its handle's [`QueueGate`] is closed: then the IRP comes back, not queued, for the
/// caller to complete (`Irp::complete_pended`). Once queued, the IRP may be completed by the
/// time this returns (it was cancelled).
///
/// # Errors
/// The IRP, refused: its handle's cleanup has run.
#[pagelock_macros::paged]
pub fn queue_wait(mut irp: Irp, deadline: u64, cookie: u64) -> Result<(), Irp> {
    let gate = irp.queue_gate();
    let owned = irp.into_raw();
    let raw = owned.as_ptr();
    // DriverContext[0] and [1] are the driver's while it owns the IRP; on x64 (the image's
    // only target) a pointer holds the 64 bits of each.
    let values = [deadline, cookie].map(|v| usize::try_from(v).unwrap_or(usize::MAX));
    let context = context_of(raw);
    // SAFETY: the IRP is ours until queued (taken from `Irp`), so live, and its driver context
    // is plain pointers the driver may write.
    unsafe { (*context)[0] = values[0] as *mut c_void };
    // SAFETY: as above.
    unsafe { (*context)[1] = values[1] as *mut c_void };
    // SAFETY: the queue was initialised at load; the IRP is a device control request this
    // driver owns and has not completed; no context (the queue keeps its own reference); the
    // insert context is the handle's gate (or null), which lives in the per-open state until
    // close, after this request.
    let inserted = unsafe {
        ntddk::IoCsqInsertIrpEx(
            RESIDENT.csq.get(),
            raw,
            core::ptr::null_mut(),
            gate.cast_mut().cast(),
        )
    };
    if status::is_success(inserted) {
        return Ok(());
    }
    // SAFETY: refused, so not queued: the IRP is still ours alone, live and not completed.
    Err(unsafe { Irp::from_raw(owned) })
}

/// Closes a handle's [`QueueGate`] under the queue's lock (`IRP_MJ_CLEANUP`, before it drains
/// the handle's waits): an insert of the handle's `WAIT` comes before, or sees it closed.
///
/// `PAGELK`, covered by the handle being cleaned up: the cleanup IRP holds its file object, so
/// the pair of locks the handle took in `IRP_MJ_CREATE`, released only in close, is held.
#[pagelock_macros::locked(LOCKED_CODE)]
pub fn close_gate(gate: &QueueGate) {
    // SAFETY: the lock is resident and initialised; cleanup runs at PASSIVE_LEVEL, not holding
    // it.
    let previous = unsafe { super::SpinBackend::acquire(RESIDENT.lock.get()) };
    // INVARIANT: closed under the queue's lock.
    gate.close();
    // SAFETY: taken just above on this processor, released with the IRQL it returned.
    unsafe { super::SpinBackend::release(RESIDENT.lock.get(), previous) };
}

/// Takes the first queued wait that `filter` matches, its cancel routine cleared
/// (`IoCsqRemoveNextIrp`). Any IRQL up to `DISPATCH_LEVEL`. Resident: the DPC calls it
/// whether or not anything is queued.
#[pagelock_macros::resident]
#[must_use]
pub fn dequeue(filter: Filter) -> Option<QueuedWait> {
    let mut filter = filter;
    // SAFETY: the queue was initialised at load; the peek context is `filter`, which outlives
    // the call and is read by `csq_peek_next` only during it.
    let raw = unsafe {
        ntddk::IoCsqRemoveNextIrp(RESIDENT.csq.get(), (&raw mut filter).cast::<c_void>())
    };
    // INVARIANT: an IRP the queue handed back is off the queue, uncancellable and not completed.
    NonNull::new(raw).map(|raw| QueuedWait { raw })
}

/// A `WAIT` taken off the queue and not yet completed.
///
/// # Invariants
/// `raw` is a device control IRP this driver owns: off the queue, its cancel routine cleared,
/// not completed; it keeps its file object referenced until [`QueuedWait::complete`].
pub struct QueuedWait {
    raw: NonNull<IRP>,
}

// SAFETY: the IRP is owned by this value alone; the kernel lets any thread complete it.
unsafe impl Send for QueuedWait {}

impl QueuedWait {
    /// The cookie the request carried.
    #[inline]
    #[must_use]
    pub fn cookie(&self) -> u64 {
        // SAFETY: by the invariant the IRP is live and ours; `queue_wait` stored the cookie.
        let context = unsafe { context_of(self.raw.as_ptr()).read() };
        context[1] as usize as u64
    }

    /// Sets how the request ends: `status`, and `reply` copied to the caller's buffer first
    /// when the status is a success (`check_wait` made sure it fits).
    ///
    /// `PAGELK`, covered by the IRP itself: by the invariant it is not completed, so its file
    /// object is referenced and its handle's pair of locks is held for the whole call.
    #[pagelock_macros::locked(LOCKED_CODE)]
    pub fn set_result(&mut self, status: Status, reply: &[u8]) {
        let raw = self.raw.as_ptr();
        let stack = stack_of(raw);
        // SAFETY: the stack location of a live IRP of ours.
        let parameters = unsafe { &(*stack).Parameters };
        // SAFETY: a device control IRP: `DeviceIoControl` holds its parameters.
        let capacity = unsafe { parameters.DeviceIoControl.OutputBufferLength } as usize;
        // SAFETY: the IRP is live and ours (invariant).
        let associated = unsafe { &(*raw).AssociatedIrp };
        // SAFETY: `AssociatedIrp` is a union of pointers; for METHOD_BUFFERED it is the buffer.
        let buffer = unsafe { associated.SystemBuffer }.cast::<u8>();
        let (status, information) = if !status::is_success(status) || reply.is_empty() {
            (status, 0)
        } else if buffer.is_null() || reply.len() > capacity {
            (status::BUFFER_TOO_SMALL, 0)
        } else {
            // SAFETY: the system buffer holds at least OutputBufferLength bytes, and nothing
            // else touches it while the driver owns the IRP.
            unsafe { core::ptr::copy_nonoverlapping(reply.as_ptr(), buffer, reply.len()) };
            (status, reply.len() as u64)
        };
        // SAFETY: the IRP is live and ours (invariant) until `complete`.
        let io_status = unsafe { &mut (*raw).IoStatus };
        io_status.__bindgen_anon_1.Status = status;
        io_status.Information = information;
    }

    /// Completes the request with what [`Self::set_result`] set (`IofCompleteRequest`).
    ///
    /// Resident, and inlined only into resident callers: once the IRP is completed, its
    /// handle's cleanup, close and last unlock may run on another processor, so the code that
    /// returns from here must not be in `PAGELK`. Any IRQL up to `DISPATCH_LEVEL`.
    #[inline]
    pub fn complete(self) {
        // SAFETY: the IRP is ours to complete, once: `self` is consumed here.
        unsafe { ntddk::IofCompleteRequest(self.raw.as_ptr(), IO_NO_INCREMENT) };
    }
}

/// The current stack location of a queued IRP.
#[inline]
fn stack_of(irp: *mut IRP) -> *mut sys::IO_STACK_LOCATION {
    // SAFETY: `irp` is a live IRP this driver holds (queued or taken off the queue); a place,
    // nothing read.
    let slot = unsafe {
        &raw const (*irp).Tail.Overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation
    };
    // SAFETY: the members of this union are pointers laid over each other, and the I/O
    // manager set `CurrentStackLocation` before calling the driver.
    unsafe { slot.read() }
}

/// `Tail.Overlay.DriverContext` of a live IRP this driver holds.
#[inline]
fn context_of(irp: *mut IRP) -> *mut [*mut c_void; 4] {
    // SAFETY: a place inside a live IRP; nothing is read.
    unsafe { &raw mut (*irp).Tail.Overlay.__bindgen_anon_1.__bindgen_anon_1.DriverContext }
}

/// The file object and deadline of a queued IRP.
#[inline]
fn file_and_deadline(irp: *mut IRP) -> (FileId, u64) {
    let stack = stack_of(irp);
    // SAFETY: `irp` is a queued IRP, live while queued; its stack location was set before.
    let file = unsafe { (*stack).FileObject };
    // SAFETY: as above; `queue_wait` wrote DriverContext[0] before queueing it.
    let deadline = unsafe { (*context_of(irp))[0] };
    (FileId(file as usize), deadline as usize as u64)
}

/// Reads a list link.
#[inline]
fn next_of(entry: *mut LIST_ENTRY) -> *mut LIST_ENTRY {
    // SAFETY: callers pass an entry of the queue's list, read under the queue's lock.
    unsafe { (*entry).Flink }
}

/// Reads a list link backwards.
#[inline]
fn previous_of(entry: *mut LIST_ENTRY) -> *mut LIST_ENTRY {
    // SAFETY: as `next_of`.
    unsafe { (*entry).Blink }
}

/// Sets both links of `entry`.
#[inline]
const fn set_links(entry: *mut LIST_ENTRY, next: *mut LIST_ENTRY, previous: *mut LIST_ENTRY) {
    // SAFETY: callers pass entries of the queue's list (or the one being linked), under the
    // queue's lock, so nothing else reads or writes them meanwhile.
    unsafe { entry.write(LIST_ENTRY { Flink: next, Blink: previous }) };
}

/// The list entry of a queued IRP.
#[inline]
fn entry_of(irp: *mut IRP) -> *mut LIST_ENTRY {
    // SAFETY: a place expression inside a live IRP; nothing is read.
    unsafe { &raw mut (*irp).Tail.Overlay.__bindgen_anon_2.ListEntry }
}

/// The IRP a list entry belongs to (`CONTAINING_RECORD`).
#[inline]
const fn irp_of(entry: *mut LIST_ENTRY) -> *mut IRP {
    entry.wrapping_byte_sub(offset_of!(IRP, Tail.Overlay.__bindgen_anon_2.ListEntry)).cast()
}

/// `IO_CSQ_INSERT_IRP_EX`: links the IRP at the tail, or refuses it (`STATUS_CANCELLED`)
/// when `gate`, its handle's [`QueueGate`], is closed or missing. Under the queue's lock.
///
/// `PAGELK`, covered by the `WAIT` being queued: only `IoCsqInsertIrpEx` calls this, from
/// [`queue_wait`], in that `WAIT`'s dispatch routine: its IRP holds the file object, so the
/// handle's pair of locks is held even when its cleanup has already run.
#[pagelock_macros::locked(LOCKED_CODE)]
unsafe extern "C" fn csq_insert(_csq: *mut IO_CSQ, irp: *mut IRP, gate: *mut c_void) -> i32 {
    // SAFETY: `queue_wait` passes the handle's gate, alive until the handle's close, which
    // cannot come while this request is in the driver; or null.
    let gate = unsafe { gate.cast::<QueueGate>().as_ref() };
    // Under the queue's lock, where the gate cannot change (invariant of `QueueGate`).
    if gate.is_none_or(QueueGate::is_closed) {
        return status::CANCELLED;
    }
    let head = RESIDENT.head.get();
    let entry = entry_of(irp);
    // Under the queue's lock (the queue routines' contract), so the list is ours; the IRP is
    // live and not on the list (InsertTailList).
    let last = previous_of(head);
    set_links(entry, head, last);
    set_links(last, entry, previous_of(last));
    set_links(head, next_of(head), entry);
    status::SUCCESS
}

/// `IO_CSQ_REMOVE_IRP`: unlinks the IRP. Under the queue's lock.
///
/// `PAGELK`, covered by the IRP being removed: it is on the list, so not completed, so its
/// handle's pair is held (the queue calls this from `IoCsqRemoveNextIrp` for an IRP the peek
/// found, and from its cancel routine for the queued IRP being cancelled).
#[pagelock_macros::locked(LOCKED_CODE)]
unsafe extern "C" fn csq_remove(_csq: *mut IO_CSQ, irp: *mut IRP) {
    let entry = entry_of(irp);
    // Under the queue's lock; the IRP is on the list (RemoveEntryList).
    let (next, previous) = (next_of(entry), previous_of(entry));
    set_links(previous, next, previous_of(previous));
    set_links(next, next_of(next), previous);
}

/// `IO_CSQ_PEEK_NEXT_IRP`: the first IRP after `irp` (or from the head) that the [`Filter`]
/// behind `context` takes; a null context takes any. Under the queue's lock.
///
/// Resident up to the emptiness test: the DPC's `IoCsqRemoveNextIrp` calls it whether or not
/// anything is queued. An empty list answers null at once; a list that is not empty holds a
/// queued IRP, whose handle's pair covers the search ([`first_match`], `PAGELK`) for as long
/// as the queue's lock is held, which is the whole call.
#[pagelock_macros::resident]
unsafe extern "C" fn csq_peek_next(
    _csq: *mut IO_CSQ,
    irp: *mut IRP,
    context: *mut c_void,
) -> *mut IRP {
    let head = RESIDENT.head.get();
    if next_of(head) == head {
        return core::ptr::null_mut();
    }
    first_match(irp, context)
}

/// The search of [`csq_peek_next`] in a list that is not empty, under the queue's lock.
#[pagelock_macros::locked(LOCKED_CODE)]
fn first_match(irp: *mut IRP, context: *mut c_void) -> *mut IRP {
    let head = RESIDENT.head.get();
    // SAFETY: a non-null context is the `Filter` `dequeue` passed, alive for the call.
    let filter = unsafe { context.cast::<Filter>().as_ref() }.copied().unwrap_or(Filter::Any);
    // Under the queue's lock the list is consistent; `irp`, when given, is on it.
    let mut entry = if irp.is_null() { next_of(head) } else { next_of(entry_of(irp)) };
    while entry != head {
        // Every entry but the head belongs to a queued IRP.
        let candidate = irp_of(entry);
        let (file, deadline) = file_and_deadline(candidate);
        if filter.matches(file, deadline) {
            return candidate;
        }
        entry = next_of(entry);
    }
    core::ptr::null_mut()
}

/// `IO_CSQ_ACQUIRE_LOCK`: raises to `DISPATCH_LEVEL` and takes the queue's spin lock.
#[pagelock_macros::resident]
unsafe extern "C" fn csq_acquire_lock(_csq: *mut IO_CSQ, irql: *mut KIRQL) {
    // SAFETY: the lock is resident and initialised (zero); the queue routines call this at
    // IRQL <= DISPATCH_LEVEL and never while holding it.
    let previous = unsafe { super::SpinBackend::acquire(RESIDENT.lock.get()) };
    // SAFETY: `irql` is the queue routines' out-parameter.
    unsafe { irql.write(previous) };
}

/// `IO_CSQ_RELEASE_LOCK`: releases the queue's spin lock and returns to `irql`.
#[pagelock_macros::resident]
unsafe extern "C" fn csq_release_lock(_csq: *mut IO_CSQ, irql: KIRQL) {
    // SAFETY: the queue routines call this on the processor that took the lock, with the IRQL
    // its acquire returned.
    unsafe { super::SpinBackend::release(RESIDENT.lock.get(), irql) };
}

/// `IO_CSQ_COMPLETE_CANCELED_IRP`: a cancelled wait, already off the queue. Any IRQL up to
/// `DISPATCH_LEVEL`.
#[pagelock_macros::resident]
unsafe extern "C" fn csq_complete_canceled(_csq: *mut IO_CSQ, irp: *mut IRP) {
    if let Some(raw) = NonNull::new(irp) {
        // INVARIANT: the queue hands over a cancelled IRP it has removed; it is not completed
        // and still holds its file object.
        crate::pending::on_cancelled(QueuedWait { raw });
    }
}

/// The timer's DPC, at `DISPATCH_LEVEL` on whichever processor the timer expired.
#[pagelock_macros::resident]
unsafe extern "C" fn dpc_routine(
    _dpc: *mut KDPC,
    _context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    crate::pending::on_tick();
}

/// The file object an IRP came on, as a [`FileId`].
#[must_use]
#[pagelock_macros::paged]
pub fn file_of(irp: &Irp) -> FileId {
    FileId(irp.file_object() as usize)
}
