//! The runner: the selected scenarios in order, and their verdicts as text (kmtests' loader,
//! which runs the tests of its list and prints their results).

use std::fmt::Write as _;

use crate::device::Device;

use super::{Scenario, Selection, Verdict};

/// Runs the selected scenarios against `device`, in order.
pub fn run<D: Device + ?Sized>(device: &D, which: Selection) -> Vec<Verdict> {
    which.scenarios().into_iter().map(|scenario| scenario.run(device)).collect()
}

/// Whether every verdict passed.
#[must_use]
pub fn all_passed(verdicts: &[Verdict]) -> bool {
    verdicts.iter().all(Verdict::passed)
}

/// The verdicts as text: one line per scenario, each failed check with what was expected and
/// what was seen (every check with `verbose`), notes, and a closing count.
#[must_use]
pub fn render(verdicts: &[Verdict], verbose: bool) -> String {
    let mut text = String::new();
    let width = Scenario::ALL.iter().map(|s| s.name().len()).max().unwrap_or(0);
    for verdict in verdicts {
        let failed = verdict.failures().count();
        let word = if verdict.passed() { "PASS" } else { "FAIL" };
        let mut counts = format!("{} checks", verdict.checks.len());
        if failed > 0 {
            let _ = write!(counts, ", {failed} failed");
        }
        let _ = writeln!(text, "{word}  {:width$}  {counts}", verdict.scenario.name());
        for check in &verdict.checks {
            if verbose || !check.passed {
                let mark = if check.passed { "ok" } else { "FAILED" };
                let _ = writeln!(text, "      {mark}: {}", check.what);
                let _ = writeln!(text, "        expected: {}", check.expected);
                let _ = writeln!(text, "        seen:     {}", check.seen);
            }
        }
        if let Some(error) = &verdict.transport_error {
            let _ = writeln!(text, "      stopped by a transport error: {error}");
        }
        for note in &verdict.notes {
            let _ = writeln!(text, "      note: {note}");
        }
    }
    let passed = verdicts.iter().filter(|v| v.passed()).count();
    let _ = writeln!(text, "scenarios: {passed} passed, {} failed", verdicts.len() - passed);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model, Unopenable};
    use crate::scenarios::idle;

    #[test]
    fn every_scenario_passes_against_a_driver_that_follows_the_protocol() {
        let model = Model::correct();
        let verdicts = run(&model, Selection::All);
        assert_eq!(verdicts.len(), Scenario::ALL.len());
        for verdict in &verdicts {
            assert!(verdict.passed(), "{}", render(std::slice::from_ref(verdict), false));
        }
        assert_eq!(model.lock_count(), 0, "the suite closed every handle it opened");
    }

    #[test]
    fn the_suite_can_run_twice_on_the_same_driver() {
        let model = Model::correct();
        assert!(all_passed(&run(&model, Selection::All)));
        assert!(all_passed(&run(&model, Selection::All)));
    }

    #[test]
    fn render_shows_failed_checks_with_expected_and_seen() {
        let verdicts = vec![idle(&Model::correct()), idle(&Model::with(Fault::StaleLock))];
        let text = render(&verdicts, false);
        assert!(text.starts_with("PASS  idle"), "{text}");
        assert!(text.contains("FAIL  idle"));
        assert!(text.contains("      FAILED: only this handle open: locks on PAGELK equal what it holds\n        expected: 1\n        seen:     2\n"), "{text}");
        assert!(text.ends_with("scenarios: 1 passed, 1 failed\n"));
        assert!(!text.contains(": ok"));
        assert!(render(&verdicts[..1], true).contains("      ok: open handles"));
    }

    #[test]
    fn a_transport_failure_stops_the_scenario_and_fails_it() {
        let verdicts = run(&Unopenable::Gone("the device went away"), Selection::All);
        assert!(verdicts.iter().all(|v| !v.passed() && v.transport_error.is_some()));
        assert!(
            render(&verdicts, false).contains("stopped by a transport error: the device went away")
        );
    }
}
