//! The checks a scenario makes and the verdict they add up to, as kmtests' `ok` macros and
//! result buffer are to its tests: a scenario records each check (what was expected, what was
//! seen) with a [`Recorder`], which turns them into a [`Verdict`] when the scenario ends.

use std::fmt::Display;

use pagelock_protocol::StateReply;

use crate::client::Failure;
use crate::device::{Device, TransportError};
use crate::errors::status_text;

use super::Scenario;

/// One thing a scenario checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// What the protocol says.
    pub expected: String,
    /// What the driver did.
    pub seen: String,
    /// Whether they agree.
    pub passed: bool,
}

/// The outcome of one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Which scenario.
    pub scenario: Scenario,
    /// Every check made, in order.
    pub checks: Vec<Check>,
    /// Things measured but not judged (the bench ratio), and why a scenario stopped early.
    pub notes: Vec<String>,
    /// A transport failure that ended the scenario.
    pub transport_error: Option<String>,
}

impl Verdict {
    /// Whether every check passed (and there was at least one, and no transport failure).
    #[must_use]
    pub fn passed(&self) -> bool {
        self.transport_error.is_none()
            && !self.checks.is_empty()
            && self.checks.iter().all(|check| check.passed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|check| !check.passed)
    }
}

/// Why a scenario stopped before its end.
pub(super) enum Stop {
    /// A failed check that later checks depend on (already recorded).
    Failed,
    /// The transport failed.
    Transport(String),
}

impl From<TransportError> for Stop {
    fn from(error: TransportError) -> Self {
        Self::Transport(error.0)
    }
}

/// Collects the checks of one scenario.
pub(super) struct Recorder {
    checks: Vec<Check>,
    /// Things measured but not judged, and why the scenario stopped early.
    pub(super) notes: Vec<String>,
}

impl Recorder {
    const fn new() -> Self {
        Self { checks: Vec::new(), notes: Vec::new() }
    }

    pub(super) fn check(
        &mut self,
        what: impl Into<String>,
        expected: impl Display,
        seen: impl Display,
        passed: bool,
    ) -> bool {
        self.checks.push(Check {
            what: what.into(),
            expected: expected.to_string(),
            seen: seen.to_string(),
            passed,
        });
        passed
    }

    pub(super) fn eq<T: PartialEq + Display>(
        &mut self,
        what: impl Into<String>,
        expected: T,
        seen: T,
    ) -> bool {
        let passed = expected == seen;
        self.check(what, expected, seen, passed)
    }

    /// Records a request that must succeed; stops the scenario when it did not.
    pub(super) fn require<T>(
        &mut self,
        what: impl Into<String>,
        result: Result<T, Failure>,
    ) -> Result<T, Stop> {
        match result {
            Ok(value) => Ok(value),
            Err(Failure::Transport(error)) => Err(Stop::Transport(error.0)),
            Err(failure) => {
                let what = what.into();
                self.check(what.clone(), "success", &failure, false);
                self.notes.push(format!(
                    "stopped after `{what}` failed: the checks after it depend on it"
                ));
                Err(Stop::Failed)
            }
        }
    }

    /// Checks each section's `lock_count` against `expected`.
    pub(super) fn lock_counts(&mut self, context: &str, state: &StateReply, expected: u32) {
        for section in &state.sections {
            self.eq(
                format!("{context}: locks on {}", section.name()),
                expected,
                section.lock_count,
            );
        }
    }

    /// Checks what the querying handle holds on each section.
    pub(super) fn held(&mut self, context: &str, state: &StateReply, expected: u32) {
        for section in &state.sections {
            self.eq(
                format!("{context}: locks on {} held by this handle", section.name()),
                expected,
                section.held_by_caller,
            );
        }
    }

    fn finish(self, scenario: Scenario, result: Result<(), Stop>) -> Verdict {
        let transport_error = match result {
            Err(Stop::Transport(error)) => Some(error),
            Ok(()) | Err(Stop::Failed) => None,
        };
        Verdict { scenario, checks: self.checks, notes: self.notes, transport_error }
    }
}

/// Runs `body` with a fresh recorder: its checks, its notes and how it stopped are the verdict.
pub(super) fn scenario<D: Device + ?Sized>(
    scenario: Scenario,
    device: &D,
    body: impl FnOnce(&mut Recorder, &D) -> Result<(), Stop>,
) -> Verdict {
    let mut recorder = Recorder::new();
    let result = body(&mut recorder, device);
    recorder.finish(scenario, result)
}

/// A reply as a check shows it: its status, and its length when it has one.
pub(super) fn reply_text(status: i32, len: usize) -> String {
    if len == 0 { status_text(status) } else { format!("{}, {len} bytes", status_text(status)) }
}

/// A sequence of counts as a check shows it, the middle left out when it is longer than three.
pub(super) fn summarize(values: &[u32]) -> String {
    match values {
        [] => "none".to_owned(),
        [one] => one.to_string(),
        [first, second, .., last] if values.len() > 3 => format!("{first}, {second}, ... {last}"),
        _ => values.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
    }
}

#[cfg(test)]
mod tests {
    use pagelock_protocol::status;

    use crate::fake::Unopenable;
    use crate::scenarios::idle;

    #[test]
    fn a_refused_open_fails_the_scenario_with_its_status() {
        let verdict = idle(&Unopenable::Refused(status::ACCESS_DENIED));
        assert!(!verdict.passed());
        assert_eq!(verdict.checks[0].seen, "STATUS_ACCESS_DENIED (0xC0000022)");
    }
}
