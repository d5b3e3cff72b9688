//! The record of a run: the rules that fired, the debug log, the steps the bed took, and the
//! bugcheck that stops a run.
//!
//! Every component reports here: [`violation`] for a rule that lets the run go on, [`stop`]
//! for one that ends it, [`note`] for what the bed wants in the log. Stopping the run is the
//! layer above's business (it builds the report and sends it out of the isolated child), so it
//! installs how with [`on_stop`]; this module depends on nothing that reports.

use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::{
    report::{Bugcheck, Step},
    verifier::{Rule, Violation},
};

/// What the run left on record.
#[derive(Debug, Default)]
pub struct Record {
    /// Rules that fired.
    pub violations: Vec<Violation>,
    /// `DbgPrint` output and the bed's notes.
    pub log: Vec<String>,
    /// What the bed did, with the lock counts after each step (when tracing).
    pub steps: Vec<Step>,
    /// What `DriverEntry` returned.
    pub entry_status: Option<i32>,
    /// How often the run reached each interleaving worth naming (see [`reached`]).
    pub races: std::collections::BTreeMap<&'static str, u64>,
}

static RECORD: Mutex<Record> = Mutex::new(Record {
    violations: Vec::new(),
    log: Vec::new(),
    steps: Vec::new(),
    entry_status: None,
    races: std::collections::BTreeMap::new(),
});

static STOP: OnceLock<fn(Bugcheck) -> !> = OnceLock::new();

/// The record, waiting for its lock.
pub fn get() -> MutexGuard<'static, Record> {
    crate::sched::lock(&RECORD)
}

/// The record if its lock is free (for the bugcheck path, which must not wait).
#[must_use]
pub fn try_get() -> Option<MutexGuard<'static, Record>> {
    crate::sched::guard(&RECORD, false)
}

/// Records a violation of a rule that lets the run go on.
pub fn violation(rule: Rule, parameters: [u64; 4], detail: String) {
    debug_assert!(!rule.entry().fatal, "fatal rules stop the run");
    crate::trace::record(crate::trace::Kind::Violation, rule.row());
    get().violations.push(Violation::new(rule, None, parameters, detail));
}

/// Counts one more time the run reached the interleaving `what` (a race the scheduler is there
/// to explore: a cancel meeting a completion, an unlock during a DPC), for the report.
pub fn reached(what: &'static str) {
    *get().races.entry(what).or_insert(0) += 1;
}

/// Adds a line to the log.
pub fn note(line: String) {
    get().log.push(line);
}

/// Installs what stopping the run does with its bugcheck: the layer above builds the report
/// and ends the process.
pub fn on_stop(hook: fn(Bugcheck) -> !) {
    let _ = STOP.set(hook);
}

/// Stops the run with a bugcheck of `rule`.
///
/// `code` overrides the table's, for the driver's own `KeBugCheckEx`. Records the violation
/// (when the record's lock is free), then hands the bugcheck to the hook installed with
/// [`on_stop`]; without one it prints the bugcheck and ends the process with status 1.
pub fn stop(rule: Rule, code: Option<u32>, parameters: [u64; 4], detail: String) -> ! {
    crate::trace::record(crate::trace::Kind::Violation, rule.row());
    let violation = Violation::new(rule, code, parameters, detail.clone());
    let bugcheck =
        Bugcheck { code: violation.code, parameters, rule: violation.rule.clone(), detail };
    if let Some(mut record) = try_get() {
        record.violations.push(violation);
    }
    if let Some(hook) = STOP.get() {
        hook(bugcheck)
    }
    eprintln!("*** STOP {:#010x} ({}): {}", bugcheck.code, bugcheck.rule, bugcheck.detail);
    // SAFETY: ends the process at once: the driver's state is not to be trusted any more.
    unsafe { libc::_exit(1) }
}
