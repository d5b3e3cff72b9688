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

use std::{sync::OnceLock, time::Instant};

use crate::{
    ke::irql::DISPATCH_LEVEL,
    record,
    routine::{self, Routine},
    verifier::Rule,
};

/// What an idle CPU does.
///
/// It runs the queued DPCs; with none queued, it lets the interrupt time run to the next timer, which queues its DPC, and runs that. False when there was
/// nothing to do (or this CPU is at `DISPATCH_LEVEL`, where DPCs wait).
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

/// The performance counter runs at 10 MHz, as on most Windows machines.
const PERFORMANCE_FREQUENCY: i64 = 10_000_000;

/// The performance counter's zero: the first time it is read.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// `KeQueryPerformanceCounter`.
pub(crate) extern "win64" fn query_performance_counter(frequency: *mut i64) -> i64 {
    routine::enter(Routine::KeQueryPerformanceCounter);
    if !frequency.is_null() {
        // SAFETY: the driver passes a LARGE_INTEGER to fill.
        unsafe { frequency.write(PERFORMANCE_FREQUENCY) };
    }
    let started = STARTED.get_or_init(Instant::now);
    i64::try_from(started.elapsed().as_nanos() / 100).unwrap_or(i64::MAX)
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
