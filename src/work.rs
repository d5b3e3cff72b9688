//! The work that runs at `DISPATCH_LEVEL` under the driver's spin lock: code in the lockable
//! section `PAGELK`, data in `PAGEDATA`. It may only run while a handle holds both locked.

use core::ffi::c_void;

use pagelock_macros::{locked, paged};
use pagelock_protocol::{TABLE_LEN, checksum_round};

use crate::{
    kernel::{self, Irql, LockedBy, SpinLock},
    sections::LOCKED_CODE,
};

/// The driver's spin lock. Resident: it is touched at `DISPATCH_LEVEL` before and after the
/// locked work, and by the acquire and release routines themselves.
static DRIVER_LOCK: SpinLock = SpinLock::new();

/// Everything the locked work touches, in one static in the pageable data section.
///
/// One static, and a writable one: LLVM gives a COFF section the flags of the first global it
/// emits into it, so a read-only static emitted first would make all of `PAGEDATA` read-only
/// and the write to `runs` at `DISPATCH_LEVEL` a bugcheck (0xBE). With `PAGEDATA` holding only
/// this interior-mutable value, the section is read/write whatever the symbol order, and
/// `cargo xtask check-pe` checks that it is.
// SAFETY: `PAGEDATA` is pageable, so the value may be touched only where a page fault is
// served, or while the section is locked: it is reached only through `LockedBy::access`, under
// `DRIVER_LOCK`, by the `#[locked]` work, which runs only while a handle holds `PAGELK` and
// `PAGEDATA` locked (a pair per handle, `Open`). Nothing else is placed in the section.
#[unsafe(link_section = "PAGEDATA")]
static PAGED: LockedBy<Paged> = LockedBy::new(
    &DRIVER_LOCK,
    Paged { table: pagelock_protocol::TABLE, runs: 0, completed_waits: 0 },
);

/// What the locked work reads and keeps between runs.
pub struct Paged {
    /// The lookup table the checksum rounds read.
    table: [u32; TABLE_LEN],
    /// Runs completed since load.
    runs: u64,
    /// `WAIT`s completed since load, however they ended.
    completed_waits: u64,
}

/// `RUN_LOCKED`: takes the spin lock, runs `iterations` rounds of the protocol's checksum
/// over the pageable table, counts the run, releases the lock. Returns the checksum and
/// the IRQL the rounds ran at.
#[locked(LOCKED_CODE)]
pub fn run_locked(seed: u64, iterations: u32) -> (u64, Irql) {
    // Raises to DISPATCH_LEVEL: from here to the guard's drop nothing may page, which is
    // why this function and the table live in sections the open handle holds locked.
    let mut guard = DRIVER_LOCK.acquire();
    let irql = kernel::current_irql();
    let paged = PAGED.access(&mut guard);
    let mut state = seed;
    for round in 0..iterations {
        state = checksum_round(state, round, &paged.table);
    }
    paged.runs += 1;
    drop(guard);
    (state, irql)
}

/// Runs completed since load, read under the spin lock.
#[locked(LOCKED_CODE)]
pub fn runs() -> u64 {
    let mut guard = DRIVER_LOCK.acquire();
    PAGED.access(&mut guard).runs
}

/// Counts one completed `WAIT` in the pageable data, under the spin lock; returns the count.
///
/// Called just before the wait is completed, from the timer's DPC at `DISPATCH_LEVEL`,
/// from the queue's cancel path at any IRQL up to `DISPATCH_LEVEL`, and from `SIGNAL` and
/// cleanup at `PASSIVE_LEVEL`.
///
/// Its callers hold a queued IRP that is not yet completed, so that IRP's file object is still
/// referenced and its `IRP_MJ_CLOSE`, which releases the handle's pair of locks, cannot have
/// come: that pair covers this code and this data for the whole call (`crate::pending`).
#[locked(LOCKED_CODE)]
pub fn record_wait_completion() -> u64 {
    let mut guard = DRIVER_LOCK.acquire();
    let paged = PAGED.access(&mut guard);
    paged.completed_waits += 1;
    paged.completed_waits
}

/// An address inside `PAGELK`, for `MmLockPagableCodeSection`.
#[must_use]
#[paged]
pub fn code_anchor() -> *const c_void {
    run_locked as *const c_void
}

/// An address inside `PAGEDATA`, for `MmLockPagableDataSection`.
#[must_use]
#[paged]
pub fn data_anchor() -> *const c_void {
    PAGED.address()
}
