//! Timers on virtual time: `KeInitializeTimer(Ex)`, `KeSetTimer(Ex)`, `KeCancelTimer` and
//! `KeReadStateTimer`.
//!
//! The bed's interrupt time is virtual: it stands still until a CPU with nothing else to do
//! lets it run to the next timer's due time ([`expire_next`], called from
//! [`crate::ke::idle`]). A run is then a function of its seed whatever the host's speed, and
//! every order of "the timer fires" against the other CPUs' steps is one the schedule can draw.
//! An expired timer is signalled and queues its DPC, as the kernel's timer expiration does; a
//! periodic one is set again.

use std::{
    collections::BTreeMap,
    ffi::c_void,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    ke::{
        dpc,
        irql::{self, DISPATCH_LEVEL},
    },
    mm,
    routine::{self, Routine},
};

/// `KTIMER` on x64, as the kernel lays it out (64 bytes): its dispatcher header (type and
/// signal state) and the fields `KeSetTimer` fills.
#[repr(C)]
struct Ktimer {
    kind: u8,
    _header: [u8; 3],
    signal_state: i32,
    _wait_list: [usize; 2],
    due_time: u64,
    _timer_list: [usize; 2],
    dpc: usize,
    processor: u32,
    period: u32,
}

/// `TimerNotificationObject`; `TimerSynchronizationObject` is one more.
const TIMER_NOTIFICATION_OBJECT: u8 = 8;

/// One set timer.
#[derive(Clone, Copy, Debug)]
struct Set {
    due: u64,
    period: u64,
    dpc: usize,
}

/// The interrupt time, in 100 ns units. It starts where a machine that booted a minute ago
/// would be.
static NOW: AtomicU64 = AtomicU64::new(600_000_000);
/// Set timers by the address of their `KTIMER`.
static TIMERS: Mutex<BTreeMap<usize, Set>> = Mutex::new(BTreeMap::new());

/// The driver's `KTIMER`.
///
/// # Safety
/// `timer` must point at a `KTIMER` of the driver's that lives while it is used.
const unsafe fn ktimer<'a>(timer: *mut c_void) -> &'a mut Ktimer {
    // SAFETY: the caller passes a live KTIMER, which only the kernel writes.
    unsafe { &mut *timer.cast::<Ktimer>() }
}

/// The interrupt time now.
#[must_use]
pub fn now() -> u64 {
    NOW.load(Ordering::Acquire)
}

/// `KeInitializeTimerEx`.
pub(crate) extern "win64" fn initialize_ex(timer: *mut c_void, kind: u32) {
    routine::enter(Routine::KeInitializeTimerEx);
    initialize_as(timer, kind);
}

/// `KeInitializeTimer`: a notification timer.
pub(crate) extern "win64" fn initialize(timer: *mut c_void) {
    routine::enter(Routine::KeInitializeTimer);
    initialize_as(timer, 0);
}

fn initialize_as(timer: *mut c_void, kind: u32) {
    mm::check_placement("KTIMER", timer as usize);
    crate::sched::lock(&TIMERS).remove(&(timer as usize));
    // SAFETY: the driver passes its KTIMER to initialise.
    let object = unsafe { ktimer(timer) };
    *object = Ktimer {
        kind: TIMER_NOTIFICATION_OBJECT + u8::from(kind != 0),
        _header: [0; 3],
        signal_state: 0,
        _wait_list: [0; 2],
        due_time: 0,
        _timer_list: [0; 2],
        dpc: 0,
        processor: 0,
        period: 0,
    };
}

/// `KeSetTimerEx`: a negative due time is relative (100 ns units), a positive one absolute;
/// `period` is in milliseconds. True when the timer was set already (it is set anew).
pub(crate) extern "win64" fn set_ex(timer: *mut c_void, due: i64, period: i32, dpc: usize) -> u8 {
    routine::enter(Routine::KeSetTimerEx);
    set(Routine::KeSetTimerEx, timer, due, period, dpc)
}

/// `KeSetTimer`: `KeSetTimerEx` without a period.
pub(crate) extern "win64" fn set_once(timer: *mut c_void, due: i64, dpc: usize) -> u8 {
    routine::enter(Routine::KeSetTimer);
    set(Routine::KeSetTimer, timer, due, 0, dpc)
}

fn set(routine: Routine, timer: *mut c_void, due: i64, period: i32, dpc: usize) -> u8 {
    if !irql::at_most(routine, DISPATCH_LEVEL) {
        return 0;
    }
    mm::check_resident(routine, timer as usize, true);
    let now = now();
    let due =
        if due < 0 { now.saturating_add(due.unsigned_abs()) } else { due.cast_unsigned().max(now) };
    let period = u64::from(period.max(0).cast_unsigned()) * 10_000;
    // SAFETY: the driver passes its initialised KTIMER.
    let object = unsafe { ktimer(timer) };
    object.signal_state = 0;
    object.due_time = due;
    object.dpc = dpc;
    object.period = u32::try_from(period / 10_000).unwrap_or(u32::MAX);
    let was = crate::sched::lock(&TIMERS).insert(timer as usize, Set { due, period, dpc });
    u8::from(was.is_some())
}

/// `KeCancelTimer`: true when the timer was set (a DPC it queued already is not dequeued).
pub(crate) extern "win64" fn cancel(timer: *mut c_void) -> u8 {
    routine::enter(Routine::KeCancelTimer);
    if !irql::at_most(Routine::KeCancelTimer, DISPATCH_LEVEL) {
        return 0;
    }
    u8::from(crate::sched::lock(&TIMERS).remove(&(timer as usize)).is_some())
}

/// `KeReadStateTimer`: whether the timer has expired since it was last set.
pub(crate) extern "win64" fn read_state(timer: *mut c_void) -> u8 {
    routine::enter(Routine::KeReadStateTimer);
    // SAFETY: the driver passes its initialised KTIMER.
    u8::from(unsafe { ktimer(timer) }.signal_state != 0)
}

/// Lets the interrupt time run to the earliest due time and expires that timer.
///
/// It is signalled, its DPC queued (with the interrupt time as its two arguments, low and high part), set again
/// when periodic. False when no timer is set.
pub fn expire_next() -> bool {
    let mut timers = crate::sched::lock(&TIMERS);
    let Some((&timer, &set)) = timers.iter().min_by_key(|(address, s)| (s.due, **address)) else {
        return false;
    };
    let now = NOW.fetch_max(set.due, Ordering::AcqRel).max(set.due);
    if set.period > 0 {
        timers.insert(timer, Set { due: now + set.period, ..set });
    } else {
        timers.remove(&timer);
    }
    drop(timers);
    // SAFETY: a KTIMER the driver set, alive while set (unload checks none is left).
    unsafe { ktimer(timer as *mut c_void) }.signal_state = 1;
    if set.dpc != 0 {
        // Queued already (by an earlier expiry it has not run for): it runs once, as in the
        // kernel.
        let _ = dpc::queue(
            set.dpc,
            usize::try_from(now & 0xFFFF_FFFF).unwrap_or(0),
            usize::try_from(now >> 32).unwrap_or(0),
        );
    }
    true
}

/// Whether any timer is set (asked at every kernel entry of a scheduled run: no allocation).
#[must_use]
pub fn any_set() -> bool {
    !crate::sched::lock(&TIMERS).is_empty()
}

/// The timers set now, with the DPC each would queue.
#[must_use]
pub fn set_timers() -> Vec<(usize, usize)> {
    crate::sched::lock(&TIMERS).iter().map(|(t, s)| (*t, s.dpc)).collect()
}
