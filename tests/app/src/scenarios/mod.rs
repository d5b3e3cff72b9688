//! The scenario suite: what "the driver works" means, written once against [`Device`].
//!
//! Every count is read with `QUERY_STATE`, and the handle that queries holds locks itself: with
//! only that handle open, each section's `lock_count` equals that handle's `held_by_caller`.
//! A scenario records every check it makes (what was expected, what was seen) in a
//! [`Verdict`]; it stops early only when a later check would mean nothing (a handle that did not
//! open), and every handle it opened is closed when it stops.
//!
//! Laid out as kmtests is (reactos/reactos, `modules/rostests/kmtests`): this file is the test
//! list ([`Scenario`], its names and what each runs); `runner` runs a [`Selection`] and renders
//! the verdicts; `recorder` holds the checks and the [`Verdict`] they make; `state` reads and
//! compares the driver's counts; and each scenario is a file of its own (`idle.rs`,
//! `lifecycle.rs`, ...) with the tests that prove it passes against a driver that follows the
//! protocol and fails against each fault it is meant to catch. A new scenario is a file, a
//! variant, and a line in [`Scenario::run`].

use std::fmt::{self, Display};

use crate::device::Device;

mod recorder;
mod runner;
mod state;
mod waits;

mod bad_input;
mod bench;
mod close_with_waits;
mod idle;
mod lifecycle;
mod many_handles;
mod many_waits;
mod nested_locks;
mod run_locked;
mod shared_handle;
mod waits_cancelled;
mod waits_expire;
mod waits_signalled;

pub use bad_input::{BadRequest, bad_input, bad_requests};
pub use bench::bench;
pub use close_with_waits::close_with_waits;
pub use idle::idle;
pub use lifecycle::lifecycle;
pub use many_handles::many_handles;
pub use many_waits::many_waits;
pub use nested_locks::nested_locks;
pub use recorder::{Check, Verdict};
pub use run_locked::run_locked;
pub use runner::{all_passed, render, run};
pub use shared_handle::shared_handle;
pub use state::{CLOSE_SETTLE, settled, state_changes};
pub use waits_cancelled::waits_cancelled;
pub use waits_expire::waits_expire;
pub use waits_signalled::waits_signalled;

/// The scenarios, in the order [`run`] runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// With only the querying handle open, every count equals what that handle holds.
    Idle,
    /// Each open adds one lock per section, each close removes it.
    Lifecycle,
    /// `LOCK` and `UNLOCK` balance, refuse past their limits, and close releases them all.
    NestedLocks,
    /// `RUN_LOCKED` returns the predicted checksum at `DISPATCH_LEVEL`.
    RunLocked,
    /// Handles opened and closed in interleaved orders keep every count exact.
    ManyHandles,
    /// Every malformed request gets its documented status and changes nothing.
    BadInput,
    /// `BENCH` measures both lock paths.
    Bench,
    /// Threads on one overlapped handle, several requests of it in the driver at once, keep
    /// every count exact.
    SharedHandle,
    /// A wait nothing ends expires at its timeout, and only that wait.
    WaitsExpire,
    /// `SIGNAL` ends exactly the waits its scope names.
    WaitsSignalled,
    /// `CancelIoEx` ends the handle's queued waits as cancelled, and only them.
    WaitsCancelled,
    /// Closing a handle with waits queued cancels them, and its locks go.
    CloseWithWaits,
    /// Waits queued from many threads over many handles, up to the driver's limit.
    ManyWaits,
}

impl Scenario {
    /// Every scenario, in the order [`run`] runs them.
    pub const ALL: [Self; 13] = [
        Self::Idle,
        Self::Lifecycle,
        Self::NestedLocks,
        Self::RunLocked,
        Self::ManyHandles,
        Self::SharedHandle,
        Self::BadInput,
        Self::WaitsExpire,
        Self::WaitsSignalled,
        Self::WaitsCancelled,
        Self::CloseWithWaits,
        Self::ManyWaits,
        Self::Bench,
    ];

    /// The name used on the command line and in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Lifecycle => "lifecycle",
            Self::NestedLocks => "nested-locks",
            Self::RunLocked => "run-locked",
            Self::ManyHandles => "many-handles",
            Self::BadInput => "bad-input",
            Self::Bench => "bench",
            Self::SharedHandle => "shared-handle",
            Self::WaitsExpire => "waits-expire",
            Self::WaitsSignalled => "waits-signalled",
            Self::WaitsCancelled => "waits-cancelled",
            Self::CloseWithWaits => "close-with-waits",
            Self::ManyWaits => "many-waits",
        }
    }

    /// One line on what the scenario proves.
    #[must_use]
    pub const fn summary(self) -> &'static str {
        match self {
            Self::Idle => "with only the querying handle open, each count is what it holds",
            Self::Lifecycle => "each open adds one lock per section, each close removes it",
            Self::NestedLocks => {
                "LOCK and UNLOCK balance and stop at their limits; close releases all"
            }
            Self::RunLocked => "RUN_LOCKED returns the predicted checksum at DISPATCH_LEVEL",
            Self::ManyHandles => "interleaved opens and closes keep every count exact",
            Self::BadInput => "malformed requests get their documented status and change nothing",
            Self::Bench => "BENCH times both lock paths (the ratio is printed, not checked)",
            Self::SharedHandle => {
                "threads on one overlapped handle: requests at once, every count exact"
            }
            Self::WaitsExpire => "a wait nothing ends expires at its timeout, and only that one",
            Self::WaitsSignalled => "SIGNAL ends exactly the waits its scope names, as signalled",
            Self::WaitsCancelled => "CancelIoEx ends the handle's queued waits, and only them",
            Self::CloseWithWaits => "closing a handle with waits queued cancels them; locks go",
            Self::ManyWaits => "waits from many threads over many handles, up to MAX_PENDING",
        }
    }

    /// The scenario called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Runs this scenario against `device`.
    pub fn run<D: Device + ?Sized>(self, device: &D) -> Verdict {
        match self {
            Self::Idle => idle(device),
            Self::Lifecycle => lifecycle(device),
            Self::NestedLocks => nested_locks(device),
            Self::RunLocked => run_locked(device),
            Self::ManyHandles => many_handles(device),
            Self::BadInput => bad_input(device),
            Self::Bench => bench(device),
            Self::SharedHandle => shared_handle(device),
            Self::WaitsExpire => waits_expire(device),
            Self::WaitsSignalled => waits_signalled(device),
            Self::WaitsCancelled => waits_cancelled(device),
            Self::CloseWithWaits => close_with_waits(device),
            Self::ManyWaits => many_waits(device),
        }
    }
}

impl Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which scenarios to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// All of them, in order.
    All,
    /// Only this one.
    One(Scenario),
}

impl Selection {
    /// The scenarios selected, in order.
    #[must_use]
    pub fn scenarios(self) -> Vec<Scenario> {
        match self {
            Self::All => Scenario::ALL.to_vec(),
            Self::One(scenario) => vec![scenario],
        }
    }
}

impl std::str::FromStr for Selection {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        if name == "all" {
            return Ok(Self::All);
        }
        Scenario::from_name(name).map(Self::One).ok_or_else(|| {
            let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("no scenario is called `{name}`; use all or one of: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn every_scenario_can_fail() {
        let faults = [
            (Scenario::Idle, Fault::StaleLock),
            (Scenario::Lifecycle, Fault::LeakOnClose),
            (Scenario::NestedLocks, Fault::UnlockWithoutLock),
            (Scenario::RunLocked, Fault::WrongChecksum),
            (Scenario::ManyHandles, Fault::HeldCountsEveryHandle),
            (Scenario::SharedHandle, Fault::SharedHandleUnlocksTwice),
            (Scenario::BadInput, Fault::AcceptsOversizedInput),
            (Scenario::Bench, Fault::ZeroTicks),
            (Scenario::WaitsExpire, Fault::WaitsExpireAtOnce),
            (Scenario::WaitsSignalled, Fault::SignalIgnoresScope),
            (Scenario::WaitsCancelled, Fault::CancelLeavesWaitsQueued),
            (Scenario::CloseWithWaits, Fault::CloseLeavesWaitsQueued),
            (Scenario::ManyWaits, Fault::NoPendingLimit),
        ];
        for scenario in Scenario::ALL {
            let (_, fault) =
                faults.iter().find(|(s, _)| *s == scenario).expect("a fault per scenario");
            let verdict = scenario.run(&Model::with(*fault));
            assert!(!verdict.passed(), "{scenario} passed against {fault:?}");
        }
    }

    #[test]
    fn selection_parses_all_and_each_name() {
        assert_eq!("all".parse(), Ok(Selection::All));
        for scenario in Scenario::ALL {
            assert_eq!(scenario.name().parse(), Ok(Selection::One(scenario)));
        }
        let error = "everything".parse::<Selection>().unwrap_err();
        assert!(error.contains("idle, lifecycle, nested-locks"), "{error}");
    }
}
