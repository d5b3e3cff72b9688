//! IRQL, per thread (each emulated CPU is a thread), and the spin locks the thread holds.
//!
//! The IRQL is what `KeGetCurrentIrql` returns and `mov cr8` sets. A raise to `DISPATCH_LEVEL` runs the
//! hook Force IRQL checking installs ([`on_raise_to_dispatch`]): the memory manager pages out
//! every unlocked pageable section, as Driver Verifier does.
//!
//! The values live in `const` thread-locals without destructors, which the fault handler may
//! read and write (no lazy initialisation, no allocation).

use std::cell::Cell;

/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: u8 = 0;
/// `APC_LEVEL`.
pub const APC_LEVEL: u8 = 1;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;

thread_local! {
    static IRQL: Cell<u8> = const { Cell::new(PASSIVE_LEVEL) };
    static SPIN_LOCKS_HELD: Cell<u32> = const { Cell::new(0) };
}

/// This thread's IRQL.
#[must_use]
pub fn current() -> u8 {
    IRQL.with(Cell::get)
}

/// Sets this thread's IRQL. A raise from below `DISPATCH_LEVEL` to it or above runs Force IRQL
/// checking (async-signal-safe: the CR8 emulation calls this from the fault handler).
pub fn set(new: u8) {
    let old = IRQL.with(|irql| irql.replace(new));
    if new >= DISPATCH_LEVEL && old < DISPATCH_LEVEL {
        force_irql_checking();
    }
    // An IRQL change is a switch point of the scheduler (a no-op outside a scheduled run).
    crate::trace::record(crate::trace::Kind::Irql, u16::from(new));
    crate::sched::point();
}

static RAISED_TO_DISPATCH: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Installs what a raise to `DISPATCH_LEVEL` does: with Force IRQL checking on, the layer
/// above pages out every unlocked pageable section (async-signal-safe, as [`set`] is).
pub fn on_raise_to_dispatch(hook: fn()) {
    let _ = RAISED_TO_DISPATCH.set(hook);
}

fn force_irql_checking() {
    if let Some(hook) = RAISED_TO_DISPATCH.get() {
        hook();
    }
}

/// This thread's emulated CPU was just switched in (the scheduler's hook).
///
/// At or above `DISPATCH_LEVEL`, Force IRQL checking pages the unlocked sections out again,
/// since a CPU at `PASSIVE_LEVEL` may have faulted them in meanwhile (async-signal-safe).
pub fn switched_in() {
    if current() >= DISPATCH_LEVEL {
        force_irql_checking();
    }
}

/// Spin locks this thread holds.
#[must_use]
pub fn spin_locks_held() -> u32 {
    SPIN_LOCKS_HELD.with(Cell::get)
}

/// Counts a spin lock acquired (`+1`) or released (`-1`) by this thread.
pub fn count_spin_lock(acquired: bool) {
    SPIN_LOCKS_HELD.with(|held| {
        held.set(if acquired { held.get() + 1 } else { held.get().saturating_sub(1) });
    });
}

/// Forgets this thread's spin locks (after a violation was reported for them).
pub fn forget_spin_locks() {
    SPIN_LOCKS_HELD.with(|held| held.set(0));
}

/// The IRQL rule of a routine documented for `highest` and below (the DDI rules `Irql*`):
/// records a violation and returns false when this CPU is above it.
#[must_use]
pub fn at_most(routine: crate::routine::Routine, highest: u8) -> bool {
    let irql = current();
    if irql <= highest {
        return true;
    }
    crate::record::violation(
        crate::verifier::Rule::IrqlTooHigh,
        [crate::verifier::bed_number(0x25), u64::from(irql), u64::from(highest), 0],
        format!("{} at IRQL {irql} (documented for IRQL <= {highest})", routine.name()),
    );
    false
}
