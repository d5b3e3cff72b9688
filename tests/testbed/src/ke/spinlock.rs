//! Spin locks: `KeAcquireSpinLockRaiseToDpc`, `KeReleaseSpinLock` and their `AtDpcLevel` /
//! `FromDpcLevel` forms, with the checks Driver Verifier makes of them.
//!
//! A `KSPIN_LOCK` is the atomic word it is in the kernel: 0 when free, the owner's token while
//! held. A CPU that finds it held by another CPU lets the scheduler run another CPU (the holder
//! among them); when none can make progress, that is a deadlock and the run stops.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    ke::irql::{self, DISPATCH_LEVEL},
    mm, record,
    routine::{self, Routine},
    verifier::{Rule, bed_number},
};

thread_local! {
    /// This thread's spin-lock owner token (`tid << 1 | 1`), 0 until first used.
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

fn owner_token() -> u64 {
    TOKEN.with(|token| {
        if token.get() == 0 {
            // SAFETY: gettid has no preconditions.
            let tid = u64::try_from(unsafe { libc::gettid() }).unwrap_or(0);
            token.set((tid << 1) | 1);
        }
        token.get()
    })
}

/// The driver's `KSPIN_LOCK`, as the atomic word it is.
const fn spin_word<'a>(lock: *mut u64) -> &'a AtomicU64 {
    // SAFETY: the driver passes a valid, aligned KSPIN_LOCK that lives while it is used; the
    // kernel only ever touches it atomically.
    unsafe { AtomicU64::from_ptr(lock) }
}

/// Acquires one of the kernel's own spin locks (the cancel spin lock), raising to
/// `DISPATCH_LEVEL`; returns the IRQL to lower back to.
pub fn acquire_raising(routine: Routine, lock: *mut u64) -> u8 {
    let old = irql::current();
    irql::set(DISPATCH_LEVEL);
    acquire(routine, lock);
    old
}

/// Releases a lock taken with [`acquire_raising`], lowering to `old`.
pub fn release_lowering(routine: Routine, lock: *mut u64, old: u8) {
    release(routine, lock);
    irql::set(old);
}

fn acquire(routine: Routine, lock: *mut u64) {
    mm::check_placement("spin lock", lock as usize);
    mm::check_resident(routine, lock as usize, true);
    let token = owner_token();
    let word = spin_word(lock);
    let at = || mm::get().describe(lock as usize);
    loop {
        match word.compare_exchange_weak(0, token, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(owner) if owner == token => record::stop(
                Rule::SpinLockAcquiredTwice,
                None,
                [bed_number(0x1F), lock as u64, 0, 0],
                format!("{} of the lock at {} already held by this thread", routine.name(), at()),
            ),
            Err(owner) => {
                crate::trace::record(crate::trace::Kind::Spin, 0);
                // Held by another CPU: let a CPU that is not waiting run (the holder among them).
                if !crate::sched::wait_on_other_cpu() {
                    record::stop(
                        Rule::Deadlock,
                        None,
                        [lock as u64, owner >> 1, 0, 0],
                        format!(
                            "{} of the lock at {}, held by thread {}, which cannot run again",
                            routine.name(),
                            at(),
                            owner >> 1
                        ),
                    );
                }
            }
        }
    }
    irql::count_spin_lock(true);
}

fn release(routine: Routine, lock: *mut u64) {
    mm::check_resident(routine, lock as usize, true);
    let token = owner_token();
    match spin_word(lock).compare_exchange(token, 0, Ordering::Release, Ordering::Relaxed) {
        Ok(_) => irql::count_spin_lock(false),
        Err(owner) => record::violation(
            Rule::SpinLockNotHeld,
            [bed_number(0x1D), lock as u64, owner >> 1, 0],
            format!(
                "{} of the lock at {}, {}",
                routine.name(),
                mm::get().describe(lock as usize),
                if owner == 0 {
                    "which nobody holds".to_owned()
                } else {
                    format!("held by thread {}", owner >> 1)
                }
            ),
        ),
    }
}

/// `KeAcquireSpinLockRaiseToDpc`.
pub(crate) extern "win64" fn acquire_raise_to_dpc(lock: *mut u64) -> u8 {
    routine::enter(Routine::KeAcquireSpinLockRaiseToDpc);
    let old = irql::current();
    irql::set(DISPATCH_LEVEL);
    acquire(Routine::KeAcquireSpinLockRaiseToDpc, lock);
    old
}

/// `KeReleaseSpinLock`.
pub(crate) extern "win64" fn release_lower(lock: *mut u64, new_irql: u8) {
    routine::enter(Routine::KeReleaseSpinLock);
    release(Routine::KeReleaseSpinLock, lock);
    irql::set(new_irql);
}

/// `KeAcquireSpinLockAtDpcLevel`.
pub(crate) extern "win64" fn acquire_at_dpc_level(lock: *mut u64) {
    routine::enter(Routine::KeAcquireSpinLockAtDpcLevel);
    acquire(Routine::KeAcquireSpinLockAtDpcLevel, lock);
}

/// `KeReleaseSpinLockFromDpcLevel`.
pub(crate) extern "win64" fn release_from_dpc_level(lock: *mut u64) {
    routine::enter(Routine::KeReleaseSpinLockFromDpcLevel);
    release(Routine::KeReleaseSpinLockFromDpcLevel, lock);
}
