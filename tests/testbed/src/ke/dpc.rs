//! Deferred procedure calls: `KeInitializeDpc`, `KeInsertQueueDpc`, `KeRemoveQueueDpc` and
//! `KeFlushQueuedDpcs`, and the DPC queue an idle CPU drains.
//!
//! A queued DPC runs on whichever emulated CPU drains the queue, at `DISPATCH_LEVEL` (raising
//! to it runs Force IRQL checking, as on any raise). The kernel drains the queue when a CPU's
//! IRQL drops below `DISPATCH_LEVEL`; the bed drains it where a CPU is idle (see
//! [`crate::ke::idle`]): a CPU waiting for a pended IRP, or the system worker of a scheduled
//! run, as the schedule draws.

use std::{
    collections::VecDeque,
    ffi::c_void,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::{
    ke::irql::{self, DISPATCH_LEVEL, PASSIVE_LEVEL},
    mm, record,
    routine::{self, Routine},
    verifier::{Rule, bed_number},
};

/// `KDPC` on x64, as the kernel lays it out (64 bytes).
#[repr(C)]
struct Kdpc {
    kind: u8,
    importance: u8,
    number: u16,
    _pad: u32,
    list_entry: usize,
    processor_history: usize,
    routine: usize,
    context: usize,
    argument1: usize,
    argument2: usize,
    dpc_data: usize,
}

/// `DpcObject`.
const DPC_OBJECT: u8 = 0x13;
/// `MediumImportance`.
const MEDIUM_IMPORTANCE: u8 = 1;

/// `KDEFERRED_ROUTINE`, called the Win64 way.
type Deferred = unsafe extern "win64" fn(*mut c_void, *mut c_void, *mut c_void, *mut c_void);

/// Queued DPCs, by the address of their `KDPC`, in the order they run.
static QUEUE: Mutex<VecDeque<usize>> = Mutex::new(VecDeque::new());
/// DPCs running now, on any CPU.
static RUNNING: AtomicU32 = AtomicU32::new(0);

/// The driver's `KDPC`.
///
/// # Safety
/// `dpc` must point at a `KDPC` of the driver's that lives while it is used.
const unsafe fn kdpc<'a>(dpc: *mut c_void) -> &'a mut Kdpc {
    // SAFETY: the caller passes a live KDPC, which only the kernel writes.
    unsafe { &mut *dpc.cast::<Kdpc>() }
}

/// `KeInitializeDpc`.
pub(crate) extern "win64" fn initialize(dpc: *mut c_void, routine: usize, context: usize) {
    routine::enter(Routine::KeInitializeDpc);
    mm::check_placement("KDPC", dpc as usize);
    // SAFETY: the driver passes its KDPC to initialise.
    let object = unsafe { kdpc(dpc) };
    *object = Kdpc {
        kind: DPC_OBJECT,
        importance: MEDIUM_IMPORTANCE,
        number: 0,
        _pad: 0,
        list_entry: 0,
        processor_history: 0,
        routine,
        context,
        argument1: 0,
        argument2: 0,
        dpc_data: 0,
    };
}

/// Queues `dpc` with its two arguments; false when it is queued already.
#[must_use]
pub fn queue(dpc: usize, argument1: usize, argument2: usize) -> bool {
    let mut queue = crate::sched::lock(&QUEUE);
    if queue.contains(&dpc) {
        return false;
    }
    // SAFETY: a KDPC the driver initialised and passed to the kernel, alive while queued.
    let object = unsafe { kdpc(dpc as *mut c_void) };
    object.argument1 = argument1;
    object.argument2 = argument2;
    object.dpc_data = (&raw const QUEUE) as usize;
    queue.push_back(dpc);
    true
}

/// `KeInsertQueueDpc`.
pub(crate) extern "win64" fn insert_queue(dpc: *mut c_void, a1: usize, a2: usize) -> u8 {
    routine::enter(Routine::KeInsertQueueDpc);
    u8::from(queue(dpc as usize, a1, a2))
}

/// `KeRemoveQueueDpc`.
pub(crate) extern "win64" fn remove_queue(dpc: *mut c_void) -> u8 {
    routine::enter(Routine::KeRemoveQueueDpc);
    let mut queue = crate::sched::lock(&QUEUE);
    let before = queue.len();
    queue.retain(|d| *d != dpc as usize);
    let removed = queue.len() != before;
    drop(queue);
    if removed {
        // SAFETY: the driver's KDPC, just taken off the queue.
        unsafe { kdpc(dpc) }.dpc_data = 0;
    }
    u8::from(removed)
}

/// DPCs running now, on any CPU.
#[must_use]
pub fn running() -> u32 {
    RUNNING.load(Ordering::Acquire)
}

/// Whether any DPC is queued (asked at every kernel entry of a scheduled run: no allocation).
#[must_use]
pub fn any_queued() -> bool {
    !crate::sched::lock(&QUEUE).is_empty()
}

/// The DPCs queued now.
#[must_use]
pub fn queued() -> Vec<usize> {
    crate::sched::lock(&QUEUE).iter().copied().collect()
}

/// Runs the queued DPCs on this CPU, each at `DISPATCH_LEVEL`.
///
/// Each gets the checks I/O verification makes of a dispatch routine (back at `DISPATCH_LEVEL`, no spin lock held). False when none
/// was queued or this CPU is at `DISPATCH_LEVEL` already (DPCs wait for it to drop).
pub fn run_queued() -> bool {
    let old = irql::current();
    if old >= DISPATCH_LEVEL {
        return false;
    }
    let mut ran = false;
    // One at a time, the queue's lock released before each runs: a DPC may queue itself again.
    while let Some(dpc) = pop() {
        ran = true;
        RUNNING.fetch_add(1, Ordering::AcqRel);
        // SAFETY: a KDPC the driver queued, alive while queued.
        let object = unsafe { kdpc(dpc as *mut c_void) };
        // The kernel clears DpcData before the routine runs, so the routine may queue it again.
        object.dpc_data = 0;
        let (routine, context, a1, a2) =
            (object.routine, object.context, object.argument1, object.argument2);
        // SAFETY: the deferred routine the driver gave KeInitializeDpc: Win64 code of the image.
        let routine = unsafe { std::mem::transmute::<usize, Deferred>(routine) };
        irql::set(DISPATCH_LEVEL);
        crate::trace::record(crate::trace::Kind::Dpc, 0);
        // SAFETY: called as the kernel calls a DPC: at DISPATCH_LEVEL with its KDPC, its context
        // and its two arguments.
        unsafe {
            routine(
                dpc as *mut c_void,
                context as *mut c_void,
                a1 as *mut c_void,
                a2 as *mut c_void,
            );
        }
        let after = irql::current();
        if after != DISPATCH_LEVEL {
            record::violation(
                Rule::DpcChangedIrql,
                [
                    bed_number(0x23),
                    routine as usize as u64,
                    u64::from(DISPATCH_LEVEL),
                    u64::from(after),
                ],
                format!(
                    "the DPC routine at {} returned at IRQL {after}",
                    mm::get().describe(routine as usize)
                ),
            );
        }
        let held = irql::spin_locks_held();
        if held > 0 {
            record::violation(
                Rule::SpinLockNeverReleased,
                [bed_number(0x1E), u64::from(held), 0xFF, 0],
                format!(
                    "the DPC at {} returned holding {held} spin lock(s)",
                    mm::get().describe(dpc)
                ),
            );
            irql::forget_spin_locks();
        }
        RUNNING.fetch_sub(1, Ordering::AcqRel);
        irql::set(old);
    }
    ran
}

/// The next queued DPC, taken off the queue.
fn pop() -> Option<usize> {
    crate::sched::lock(&QUEUE).pop_front()
}

/// `KeFlushQueuedDpcs`: returns once every DPC queued before the call has run. At
/// `PASSIVE_LEVEL` only; the bed runs the queued ones here and waits for those running on
/// other CPUs.
pub(crate) extern "win64" fn flush_queued() {
    routine::enter(Routine::KeFlushQueuedDpcs);
    if !irql::at_most(Routine::KeFlushQueuedDpcs, PASSIVE_LEVEL) {
        return;
    }
    loop {
        if run_queued() {
            continue;
        }
        if RUNNING.load(Ordering::Acquire) == 0 {
            break;
        }
        if !crate::sched::wait_on_other_cpu() {
            record::stop(
                Rule::Deadlock,
                None,
                [0, 0, 0, 0],
                "KeFlushQueuedDpcs waits for a DPC that cannot finish".to_owned(),
            );
        }
    }
}
