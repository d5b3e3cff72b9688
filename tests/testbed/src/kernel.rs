//! The emulated kernel of this process.
//!
//! It holds the memory manager, the objects and records the host
//! routines share, per-routine call counts, and fault injection. One driver per process (each
//! run is its own child process, see [`crate::isolate`]).

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use crate::{
    exports::Routine,
    mm::Mm,
    pool::Block,
    report::Step,
    security::Ace,
    verifier::{Rule, Violation},
};

/// How the kernel behaves.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// The driver image's path, for reports.
    pub driver: String,
    /// Force IRQL checking: page out unlocked sections on every raise to `DISPATCH_LEVEL`.
    pub force_irql: bool,
    /// Record every IRP and the lock counts after it (off for benchmarks).
    pub trace: bool,
    /// Fault injection: the Nth call (from 1) of this routine fails.
    pub fail_call: Option<(Routine, u64)>,
}

/// A device object the driver created.
#[derive(Debug)]
pub struct DeviceRecord {
    /// The object (0x150 bytes plus the extension, as the kernel allocates it).
    pub object: usize,
    /// Its name.
    pub name: String,
    /// The DACL the driver set, if any.
    pub dacl: Option<Vec<Ace>>,
    /// File objects open on it: each holds a reference, as in the kernel.
    pub references: u32,
    /// `IoDeleteDevice` was called while it was referenced: no longer opened by name, freed
    /// when the last reference goes (the kernel's `DOE_DELETE_PENDING`).
    pub delete_pending: bool,
}

/// What the host routines share, behind one lock that is never held while driver code runs.
#[derive(Debug, Default)]
pub struct State {
    /// Pool blocks by address.
    pub pool: HashMap<usize, Block>,
    /// Device objects.
    pub devices: Vec<DeviceRecord>,
    /// Symbolic links: name to target.
    pub links: HashMap<String, String>,
    /// Kernel handles (from `ObOpenObjectByPointer`) to their objects.
    pub object_handles: HashMap<usize, usize>,
    /// The last kernel handle given out.
    pub last_handle: usize,
    /// Rules that fired.
    pub violations: Vec<Violation>,
    /// `DbgPrint` output.
    pub log: Vec<String>,
    /// What the bed did, with the lock counts after each step (when tracing).
    pub steps: Vec<Step>,
    /// Calls that fault injection made fail.
    pub injected: Vec<String>,
    /// What `DriverEntry` returned.
    pub entry_status: Option<i32>,
    /// Every call of a routine that can fail, in order (to choose `--fail-call` targets).
    pub failable_calls: Vec<&'static str>,
}

/// The emulated kernel.
#[derive(Debug)]
pub struct Kernel {
    /// The driver image's memory manager.
    pub mm: Mm,
    /// How it behaves.
    pub options: KernelOptions,
    /// Calls per routine, indexed by [`Routine`].
    calls: Vec<AtomicU64>,
    /// Everything else.
    state: Mutex<State>,
    /// The performance counter's zero.
    pub started: Instant,
}

static KERNEL: OnceLock<Kernel> = OnceLock::new();

/// The kernel of this process, if installed (the fault handler's view: an atomic load).
#[must_use]
pub fn try_kernel() -> Option<&'static Kernel> {
    KERNEL.get()
}

/// The kernel of this process.
///
/// # Panics
/// Before [`install`]: host routines only run once a driver is loaded.
#[must_use]
pub fn kernel() -> &'static Kernel {
    KERNEL.get().expect("the emulated kernel is installed before the driver runs")
}

/// Installs the kernel of this process.
///
/// # Errors
/// When one is already installed: one driver per process.
pub fn install(mm: Mm, options: KernelOptions) -> anyhow::Result<&'static Kernel> {
    let new = Kernel {
        mm,
        options,
        calls: Routine::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        state: Mutex::new(State::default()),
        started: Instant::now(),
    };
    KERNEL
        .set(new)
        .map_err(|_| anyhow::anyhow!("one driver per process: a kernel is already installed"))?;
    Ok(kernel())
}

impl Kernel {
    /// The shared state, even if a panicking thread poisoned its lock.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The shared state if its lock is free (for the bugcheck path, which must not block).
    pub fn try_state(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Counts a call of `routine`; true when fault injection makes this call fail.
    pub fn enter(&self, routine: Routine) -> bool {
        // Every kernel call is a switch point of the scheduler (before any lock is taken).
        crate::trace::record(crate::trace::Kind::Call, routine as u16);
        crate::sched::point();
        let nth = self.calls[routine as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let fail = self.options.fail_call == Some((routine, nth));
        if routine.failure().is_some() {
            let mut state = self.state();
            state.failable_calls.push(routine.name());
            if fail {
                state.injected.push(format!("{}: call {nth} failed", routine.name()));
            }
            drop(state);
        }
        fail
    }

    /// Calls per routine so far, the routines called at least once.
    #[must_use]
    pub fn calls(&self) -> Vec<(String, u64)> {
        Routine::ALL
            .iter()
            .map(|r| (r.name().to_owned(), self.calls[*r as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Records a violation of a rule that lets the run go on.
    pub fn violation(&self, rule: Rule, parameters: [u64; 4], detail: String) {
        debug_assert!(!rule.entry().fatal, "fatal rules stop the run");
        crate::trace::record(crate::trace::Kind::Violation, rule.row());
        self.state().violations.push(Violation::new(rule, None, parameters, detail));
    }

    /// Stops the run when `routine` is handed unlocked pageable memory at `DISPATCH_LEVEL` or
    /// above: Windows may have paged it out, whatever the bed's pages look like right now.
    pub fn check_resident(&self, routine: Routine, address: usize, write: bool) {
        let irql = crate::irql::current();
        if irql < crate::irql::DISPATCH_LEVEL {
            return;
        }
        if let Some(section) = self.mm.unlocked_pageable(address) {
            crate::isolate::stop(
                Rule::PageableMemoryAtDispatch,
                None,
                [address as u64, u64::from(irql), u64::from(write), routine.address() as u64],
                format!(
                    "{} was handed {} (section {} unlocked) at IRQL {irql}",
                    routine.name(),
                    self.mm.describe(address),
                    section.name
                ),
            );
        }
    }

    /// Records a step of the run with the lock counts after it (when tracing).
    pub fn step(&self, step: impl FnOnce() -> Step) {
        if self.options.trace {
            let mut step = step();
            step.lock_counts = self.mm.counts();
            self.state().steps.push(step);
        }
    }
}
