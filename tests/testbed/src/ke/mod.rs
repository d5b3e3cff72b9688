//! The kernel core (`Ke`): IRQL, spin locks, the performance counter, the driver's own
//! bugcheck, and the traps a driver's instructions take.
//!
//! - [`irql`]: each CPU's IRQL and the spin locks it holds (async-signal-safe);
//! - [`spinlock`]: the `KeAcquireSpinLock*` / `KeReleaseSpinLock*` routines;
//! - [`trap`]: the fault handler (page-ins, `mov cr8`, every other fault a bugcheck);
//! - [`timer`] and [`dpc`]: timers on virtual time, and the DPCs they queue;
//! - here: the IRQL routines, `KeQueryPerformanceCounter`, `KeBugCheckEx`, and what an idle
//!   CPU does ([`idle`]).

pub mod dpc;
pub mod irql;
pub mod spinlock;
pub mod timer;
pub mod trap;

use std::sync::Mutex;

use crate::{
    ke::irql::DISPATCH_LEVEL,
    record,
    routine::{self, Routine},
    verifier::Rule,
};

/// What an idle CPU does.
///
/// It runs the queued DPCs; with none queued, it lets the interrupt time run to the next timer,
/// which queues its DPC, and runs that. False when there was nothing to do (or this CPU is at
/// `DISPATCH_LEVEL`, where DPCs wait).
#[must_use]
pub fn idle() -> bool {
    if irql::current() >= DISPATCH_LEVEL {
        return false;
    }
    if dpc::run_queued() {
        return true;
    }
    if timer::expire_next() {
        dpc::run_queued();
        return true;
    }
    false
}

/// Whether a clock interrupt would have work: a DPC queued or a timer set.
#[must_use]
pub fn interrupt_pending() -> bool {
    dpc::any_queued() || timer::any_set()
}

/// `KeGetCurrentIrql`.
pub(crate) extern "win64" fn get_current_irql() -> u8 {
    irql::current()
}

/// `KfRaiseIrql`.
pub(crate) extern "win64" fn kf_raise_irql(new: u8) -> u8 {
    let old = irql::current();
    irql::set(new);
    old
}

/// `KeRaiseIrqlToDpcLevel`.
pub(crate) extern "win64" fn raise_irql_to_dpc_level() -> u8 {
    kf_raise_irql(DISPATCH_LEVEL)
}

/// `KeLowerIrql` and `KfLowerIrql`.
pub(crate) extern "win64" fn lower_irql(new: u8) {
    irql::set(new);
}

/// Performance-counter counts to one unit of the interrupt time (100 ns).
const COUNTS_PER_UNIT: u64 = 1024;
/// The performance counter's frequency: the interrupt time's 10 MHz, times
/// [`COUNTS_PER_UNIT`].
const PERFORMANCE_FREQUENCY: u64 = 10_000_000 * COUNTS_PER_UNIT;

/// The last reading: the interrupt time it was taken at, and the counts read past it.
static LAST_READING: Mutex<(u64, u64)> = Mutex::new((0, 0));

/// `KeQueryPerformanceCounter`: the bed's virtual interrupt time ([`timer::now`]), the clock
/// its timers run on, so that a driver timing its waits with the counter sees the time its
/// timer's ticks see, and a run stays a function of its seed.
///
/// That time stands still while the driver runs, so each read within one instant of it counts
/// one more (up to [`COUNTS_PER_UNIT`] − 1): two reads in a row differ, as on a machine (`BENCH`
/// times its loops with them), and no reading runs ahead of the interrupt time.
pub(crate) extern "win64" fn query_performance_counter(frequency: *mut i64) -> i64 {
    routine::enter(Routine::KeQueryPerformanceCounter);
    if !frequency.is_null() {
        // SAFETY: the driver passes a LARGE_INTEGER to fill.
        unsafe { frequency.write(PERFORMANCE_FREQUENCY.cast_signed()) };
    }
    let now = timer::now();
    let counts = {
        let mut last = crate::sched::lock(&LAST_READING);
        let counts = if last.0 == now { (last.1 + 1).min(COUNTS_PER_UNIT - 1) } else { 0 };
        *last = (now, counts);
        counts
    };
    i64::try_from(now * COUNTS_PER_UNIT + counts).unwrap_or(i64::MAX)
}

/// `KeBugCheckEx`: the driver stops the machine itself.
pub(crate) extern "win64" fn bug_check_ex(code: u32, p1: u64, p2: u64, p3: u64, p4: u64) -> ! {
    routine::enter(Routine::KeBugCheckEx);
    record::stop(
        Rule::DriverBugcheck,
        Some(code),
        [p1, p2, p3, p4],
        format!("KeBugCheckEx({code:#x}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})"),
    )
}
