//! What a run did, for people (text) and for programs (JSON).

use std::fmt::Write as _;

use pagelock_protocol::status;
use serde::{Deserialize, Serialize};

use crate::verifier::Violation;

/// One thing the bed did (load, an IRP, unload), with the lock counts right after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What it was, e.g. `IRP_MJ_DEVICE_CONTROL 0x83374000 (in 0, out 64) on handle 1`.
    pub what: String,
    /// The status it ended with.
    pub status: Option<i32>,
    /// `IoStatus.Information`.
    pub information: Option<u64>,
    /// The output bytes returned to the caller, in hex.
    pub output: Option<String>,
    /// Lock count of every pageable section after the step.
    pub lock_counts: Vec<(String, i64)>,
    /// When a request was sent, had returned from its dispatch routine and was completed, on
    /// the bed's virtual interrupt time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<RequestTimes>,
}

/// When a request was sent, left its dispatch routine and was completed: the bed's virtual
/// interrupt time, in 100 ns units (see [`crate::ke::timer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTimes {
    /// The I/O manager called the dispatch routine.
    pub sent: u64,
    /// The dispatch routine returned (with `STATUS_PENDING` for a request it queued).
    pub dispatched: u64,
    /// The driver completed the request (`IofCompleteRequest`).
    pub completed: u64,
}

/// A bugcheck that stopped the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bugcheck {
    /// The code.
    pub code: u32,
    /// Its four parameters.
    pub parameters: [u64; 4],
    /// The rule that raised it.
    pub rule: String,
    /// What happened.
    pub detail: String,
}

/// A pageable section at the end of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionReport {
    /// Name.
    pub name: String,
    /// Lock count.
    pub lock_count: i64,
    /// Times it was paged out.
    pub page_outs: u64,
    /// Faults that paged it back in.
    pub page_ins: u64,
}

/// One scenario of pagelock's suite, with the lock counts around it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioLocks {
    /// The scenario.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Lock counts before it ran.
    pub before: Vec<(String, i64)>,
    /// The highest lock counts while it ran.
    pub during: Vec<(String, i64)>,
    /// Lock counts after it.
    pub after: Vec<(String, i64)>,
}

/// A benchmark's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchFigures {
    /// IRPs sent.
    pub irps: u64,
    /// Threads.
    pub threads: usize,
    /// Seconds taken.
    pub seconds: f64,
    /// IRPs per second.
    pub irps_per_second: f64,
    /// Mean nanoseconds per IRP (wall time divided by IRPs, across all threads).
    pub nanoseconds_per_irp: f64,
    /// IRPs that did not complete with success.
    pub failed: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The driver image.
    pub driver: String,
    /// What `DriverEntry` returned.
    pub entry_status: Option<i32>,
    /// Every step, with lock counts after it.
    pub steps: Vec<Step>,
    /// The pageable sections at the end.
    pub sections: Vec<SectionReport>,
    /// `DbgPrint` output.
    pub log: Vec<String>,
    /// Calls per kernel routine.
    pub calls: Vec<(String, u64)>,
    /// Calls that fault injection made fail.
    pub injected_failures: Vec<String>,
    /// How many failures were injected.
    pub injected: u64,
    /// Every call of a routine that can fail, in order (`--fail-call` targets).
    pub failable_calls: Vec<String>,
    /// Pool blocks still allocated at the end.
    pub pool_outstanding: usize,
    /// Rules that fired.
    pub violations: Vec<Violation>,
    /// The bugcheck that stopped the run.
    pub bugcheck: Option<Bugcheck>,
    /// pagelock's scenario suite, rendered, when it ran.
    pub scenarios: Option<String>,
    /// Whether every scenario passed, when the suite ran.
    pub scenarios_passed: Option<bool>,
    /// Lock counts around each scenario, when the suite ran.
    pub scenario_locks: Vec<ScenarioLocks>,
    /// Benchmark figures, when one ran.
    pub bench: Option<BenchFigures>,
    /// Remarks of the bed (limits met, IRPs pended).
    pub notes: Vec<String>,
    /// The schedule, when the run had several emulated CPUs.
    #[serde(default)]
    pub schedule: Option<crate::sched::Summary>,
    /// Interleavings worth naming the run reached, with how often.
    #[serde(default)]
    pub races: Vec<(String, u64)>,
}

impl Report {
    /// A clean run: no violation, no bugcheck, and every scenario passed if any ran.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
            && self.bugcheck.is_none()
            && self.scenarios_passed != Some(false)
    }

    /// Whether `rule` (an id of [`crate::verifier::TABLE`]) fired.
    #[must_use]
    pub fn fired(&self, rule: &str) -> bool {
        self.violations.iter().any(|v| v.rule == rule)
    }

    /// The report as text a person reads at a glance.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "driver: {}", self.driver);
        if !self.scenario_locks.is_empty() {
            let _ = writeln!(out, "{} steps (each listed with --json)", self.steps.len());
        } else if !self.steps.is_empty() {
            let _ = writeln!(out, "steps (lock counts after each):");
            for step in &self.steps {
                let _ = write!(out, "  {:<58}", step.what);
                if let Some(s) = step.status {
                    let _ = write!(out, " -> {s:#010x} {}", status_name(s));
                }
                if let Some(output) = step.output.as_deref().filter(|o| !o.is_empty()) {
                    let _ = write!(out, " [{output}]");
                }
                let _ = writeln!(out, "  {}", counts(&step.lock_counts));
            }
        }
        if !self.scenario_locks.is_empty() {
            let _ = writeln!(out, "scenarios (lock counts before / highest during / after):");
            for s in &self.scenario_locks {
                let _ = writeln!(
                    out,
                    "  {:<4} {:<14} {} / {} / {}",
                    if s.passed { "PASS" } else { "FAIL" },
                    s.name,
                    counts(&s.before),
                    counts(&s.during),
                    counts(&s.after)
                );
            }
        }
        if let Some(scenarios) = &self.scenarios {
            out.push_str(scenarios.trim_end());
            out.push('\n');
        }
        for s in &self.sections {
            let _ = writeln!(
                out,
                "section {:<9} lock count {}, paged out {} times, paged back in by a fault {} times",
                s.name, s.lock_count, s.page_outs, s.page_ins
            );
        }
        if !self.log.is_empty() {
            let _ = writeln!(out, "DbgPrint:");
            for line in &self.log {
                let _ = writeln!(out, "  {line}");
            }
        }
        for line in self.injected_failures.iter().chain(&self.notes) {
            let _ = writeln!(out, "note: {line}");
        }
        if let Some(b) = &self.bench {
            let _ = writeln!(
                out,
                "bench: {} IRPs on {} thread(s) in {:.3} s: {:.0} IRPs/s, {:.0} ns per IRP ({} failed)",
                b.irps, b.threads, b.seconds, b.irps_per_second, b.nanoseconds_per_irp, b.failed
            );
        }
        for v in &self.violations {
            let p = v.parameters;
            let _ = writeln!(
                out,
                "VIOLATION {} (bugcheck {:#x}: {:#x}, {:#x}, {:#x}, {:#x}){}: {}",
                v.rule,
                v.code,
                p[0],
                p[1],
                p[2],
                p[3],
                if v.fatal { ", fatal" } else { "" },
                v.detail
            );
        }
        if let Some(b) = &self.bugcheck {
            let p = b.parameters;
            let _ = writeln!(
                out,
                "BUGCHECK {:#x} ({:#x}, {:#x}, {:#x}, {:#x}) by rule {}: {}",
                b.code, p[0], p[1], p[2], p[3], b.rule, b.detail
            );
        }
        if let Some(s) = &self.schedule {
            let _ = writeln!(
                out,
                "schedule: {} CPUs, seed {}, {:?}: {} switch points, {} switches, trace digest {:016x}",
                s.cpus, s.seed, s.policy, s.points, s.switches, s.digest
            );
        }
        for (race, times) in &self.races {
            let _ = writeln!(out, "reached: {race} ({times}x)");
        }
        out.push_str(if self.clean() { "verdict: clean\n" } else { "verdict: FAILED\n" });
        out
    }
}

/// A status with its name when the protocol knows it.
#[must_use]
pub const fn status_name(s: i32) -> &'static str {
    match s.cast_unsigned() {
        0x103 => "STATUS_PENDING",
        0xC000_000E => "STATUS_NO_SUCH_DEVICE",
        0xC000_0034 => "STATUS_OBJECT_NAME_NOT_FOUND",
        0xC000_0035 => "STATUS_OBJECT_NAME_COLLISION",
        0xC000_00BB => "STATUS_NOT_SUPPORTED",
        _ => status::name(s),
    }
}

fn counts(counts: &[(String, i64)]) -> String {
    counts.iter().map(|(n, c)| format!("{n}={c}")).collect::<Vec<_>>().join(" ")
}

/// Bytes as hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A progress bar on standard error for a long run, `len` units long: drawn only when standard
/// error is a terminal, so that logs and pipes get nothing extra.
#[must_use]
pub fn progress(len: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
