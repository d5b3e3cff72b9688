//! Deliberately broken variants of pagelock.sys on the test bed: each defect of
//! `tests/defects/*.diff`, applied to a copy of the driver's source, must be caught by the rule
//! or the tool named in its test.
//!
//! The images come from `cargo xtask test`, which builds them once and passes their paths in
//! `PAGELOCK_SYS_DEFECT_*`; run directly, the tests build what is missing with
//! `cargo xtask build-driver --patch`.
#![cfg(target_os = "linux")]

mod common;

use std::process::Output;

use common::{
    DEVICE, UNLOAD_MEETS_A_DISPATCH, bed, code, exec, hex, image, json,
    lock_unlock_on_a_shared_handle, root, rules, service_stopped_under_requests,
    waits_closed_pending_from_two_cpus,
};
use pagelock_protocol::zerocopy::IntoBytes;
use pagelock_protocol::{IOCTL_LOCK, IOCTL_RUN_LOCKED, RunRequest};
use serde_json::Value;

#[test]
fn a_lost_unlock_is_caught_after_the_last_close() {
    let sys = image("PAGELOCK_SYS_DEFECT_LOST_UNLOCK", Some("lost-unlock"), false);
    let lock = code(IOCTL_LOCK);
    let unlock = code(pagelock_protocol::IOCTL_UNLOCK);
    let (lock, unlock) = (format!("{lock}::8"), format!("{unlock}::8"));
    let (output, report) =
        exec(&sys, &["--ioctl", &lock, "--ioctl", &lock, "--ioctl", &unlock, "--ioctl", &unlock]);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert!(rules(&report).contains(&"locked-after-last-close".to_owned()), "{report:#}");
    let violation = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["rule"] == "locked-after-last-close")
        .unwrap();
    assert_eq!(violation["code"], 0xBED0_0004_u32);
    // Unload releases what the handle left, says so for each section, and leaves none locked.
    let leftovers: Vec<u64> = report["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|line| line.as_str()?.strip_prefix("pagelock: BUG: section still locked"))
        .map(|line| {
            let numbers = line.rsplit_once('(').unwrap().1.trim_end_matches(')');
            numbers.split(", ").nth(1).unwrap().parse().unwrap()
        })
        .collect();
    let name = |bytes: &[u8; 4]| u64::from(u32::from_le_bytes(*bytes));
    assert_eq!(leftovers, [name(b"LK\0\0"), name(b"DATA")], "{report:#}");
    assert!(report["sections"].as_array().unwrap().iter().all(|s| s["lock_count"] == 0));
}

/// One `RUN_LOCKED` on the variant whose opens lock nothing.
fn run_locked_on_unlocked_variant(extra: &[&str]) -> (Output, Value) {
    let sys = image("PAGELOCK_SYS_DEFECT_UNLOCKED_RUN", Some("unlocked-run"), false);
    let input = hex(RunRequest::new(10, 1).as_bytes());
    let ioctl = format!("{}:{input}:16", code(IOCTL_RUN_LOCKED));
    let mut args =
        vec!["exec", sys.to_str().unwrap(), "--device", DEVICE, "--json", "--ioctl", &ioctl];
    args.extend_from_slice(extra);
    let output = bed(&args);
    let report = json(&output);
    (output, report)
}

#[test]
fn in_a_debug_image_lockable_code_entered_unlocked_fails_its_assertion_at_passive_level() {
    // The debug build's `#[locked(LOCKED_CODE)]` check fires on entry, at PASSIVE_LEVEL, before
    // the spin lock is taken: the panic handler bugchecks with "RPNC" (Rust panic), as
    // wdk-panic does, its parameters the panic's location: that of `assert_locked`'s assertion.
    let sys = image("PAGELOCK_SYS_DEBUG_DEFECT_UNLOCKED_RUN", Some("unlocked-run"), true);
    let input = hex(RunRequest::new(10, 1).as_bytes());
    let ioctl = format!("{}:{input}:16", code(IOCTL_RUN_LOCKED));
    let output =
        bed(&["exec", sys.to_str().unwrap(), "--device", DEVICE, "--json", "--ioctl", &ioctl]);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["bugcheck"]["code"], u32::from_be_bytes(*b"RPNC"), "{report:#}");
    let (file, line) = assertion_location("src/sections.rs", "lockable code ran while");
    let parameters = &report["bugcheck"]["parameters"];
    assert_eq!(parameters[1], file.len(), "the file name's length: {report:#}");
    assert_eq!(parameters[2], line, "the line of the assertion in {file}: {report:#}");
}

/// The file (as rustc names it in panic locations) and the line of the one assertion in `file`
/// whose message starts with `message`.
fn assertion_location(file: &'static str, message: &str) -> (&'static str, usize) {
    let text = std::fs::read_to_string(root().join(file)).expect("the driver's source");
    let lines: Vec<usize> = (1..)
        .zip(text.lines())
        .filter(|(_, text)| text.contains("assert!") && text.contains(message))
        .map(|(number, _)| number)
        .collect();
    assert_eq!(lines.len(), 1, "one assertion of {message:?} in {file}");
    (file, lines[0])
}

#[test]
fn locked_work_run_from_unlocked_sections_bugchecks_at_dispatch_level() {
    let (output, report) = run_locked_on_unlocked_variant(&[]);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    let bugcheck = &report["bugcheck"];
    assert_eq!(bugcheck["code"], 0xD1, "{report:#}");
    assert!(bugcheck["detail"].as_str().unwrap().contains("PAGELK+"), "{bugcheck}");
    assert!(rules(&report).contains(&"pageable-code-at-dispatch".to_owned()));
}

#[test]
fn without_force_irql_checking_the_idle_paged_out_data_still_gives_the_bug_away() {
    // With Force IRQL checking off, raising the IRQL pages nothing out; the code was paged in
    // at PASSIVE_LEVEL on entry, but the table was paged out while the driver was idle, so the
    // read under the spin lock faults: DRIVER_IRQL_NOT_LESS_OR_EQUAL on PAGEDATA.
    let (_, report) = run_locked_on_unlocked_variant(&["--no-force-irql"]);
    assert_eq!(report["bugcheck"]["code"], 0xD1, "{report:#}");
    assert!(
        report["bugcheck"]["detail"].as_str().unwrap().contains("read of PAGEDATA+"),
        "{report:#}"
    );
    assert!(rules(&report).contains(&"page-fault-at-dispatch".to_owned()));
}

#[test]
fn the_fuzzer_catches_a_lost_unlock_and_shrinks_it() {
    let sys = image("PAGELOCK_SYS_DEFECT_LOST_UNLOCK", Some("lost-unlock"), false);
    let output = bed(&["fuzz", sys.to_str().unwrap(), "--seconds", "30", "--seed", "7", "--json"]);
    let stats = json(&output);
    assert_eq!(output.status.code(), Some(1), "{stats:#}");
    assert_eq!(stats["failures"], 1);
    let (ops, failure) = (&stats["minimal_failure"][0], &stats["minimal_failure"][1]);
    // The defect needs an open and two LOCKs (nesting depth 2 then released): nothing shorter
    // fails, and the shrinker gets there.
    assert!(ops.as_array().unwrap().len() <= 4, "{ops:#}");
    // A lock count that disagrees, or the handle's locked code run after its locks went.
    let reason = failure["reason"].as_str().unwrap();
    assert!(reason.contains("lock") || reason.contains("PAGELK"), "{failure:#}");
}

#[test]
fn an_unsynchronized_per_open_state_is_caught_on_a_shared_handle_for_every_seed_tried() {
    let sys = image("PAGELOCK_SYS_DEFECT_UNSYNCHRONIZED_OPEN", Some("unsynchronized-open"), false);
    for seed in 1..=10 {
        let (output, report) = lock_unlock_on_a_shared_handle(&sys, seed, 1);
        assert_eq!(output.status.code(), Some(1), "seed {seed}: {report:#}");
        let fired = rules(&report);
        assert!(
            fired.iter().any(|r| r == "locked-after-last-close" || r == "unlock-at-zero"),
            "seed {seed}: {fired:?}"
        );
    }
}

#[test]
fn the_fuzzer_on_two_cpus_catches_the_unsynchronized_per_open_state_and_shrinks_it() {
    let sys = image("PAGELOCK_SYS_DEFECT_UNSYNCHRONIZED_OPEN", Some("unsynchronized-open"), false);
    let args = ["fuzz", sys.to_str().unwrap(), "--seconds", "60", "--seed", "1", "--threads", "2"];
    let output = bed(&[&args[..], &["--json"]].concat());
    let stats = json(&output);
    assert_eq!(output.status.code(), Some(1), "{stats:#}");
    let (ops, failure) = (&stats["minimal_failure"][0], &stats["minimal_failure"][1]);
    let ops = ops.as_array().unwrap();
    assert!(ops.len() <= 12, "{ops:#?}");
    // What remains needs requests in flight at once: the last step is a parallel one.
    assert!(ops.last().is_some_and(|op| op.get("Parallel").is_some()), "{ops:#?}");
    // A lock count that disagrees, or the handle's locked code run after its locks went.
    let reason = failure["reason"].as_str().unwrap();
    assert!(reason.contains("lock") || reason.contains("PAGELK"), "{failure:#}");
    // The same seed finds the same failure: the schedules are part of the sequence.
    let again = json(&bed(&[&args[..], &["--json"]].concat()));
    assert_eq!(again["minimal_failure"], stats["minimal_failure"]);
}

#[test]
fn the_fuzzer_on_two_cpus_stops_the_service_under_a_batch_and_catches_an_unload_without_wait() {
    let sys = image(
        "PAGELOCK_SYS_DEFECT_UNLOAD_WITHOUT_RUNDOWN_WAIT",
        Some("unload-without-rundown-wait"),
        false,
    );
    let args = ["fuzz", sys.to_str().unwrap(), "--seconds", "60", "--seed", "1", "--threads", "2"];
    let stats = json(&bed(&[&args[..], &["--json"]].concat()));
    let (ops, failure) = (&stats["minimal_failure"][0], &stats["minimal_failure"][1]);
    // What remains: the open, and the batch that stops the service as it closes the handle.
    let last = ops.as_array().unwrap().last().unwrap();
    assert_eq!(last["Parallel"]["stop"], true, "{stats:#}");
    assert!(failure["reason"].as_str().unwrap().starts_with("bugcheck 0xce"), "{stats:#}");
}

#[test]
fn the_stress_run_keeps_force_irql_checking_on_and_catches_an_unlocked_run() {
    let sys = image("PAGELOCK_SYS_DEFECT_UNLOCKED_RUN", Some("unlocked-run"), false);
    let output =
        bed(&["stress", sys.to_str().unwrap(), "--threads", "4", "--iterations", "50", "--json"]);
    let stats = json(&output);
    assert_eq!(output.status.code(), Some(1), "{stats:#}");
    let problems = stats["problems"].as_array().unwrap();
    assert!(
        // The bugcheck is always in the report; the rule's own line only when the kernel's
        // records were free when the run stopped.
        problems.iter().any(|p| {
            let p = p.as_str().unwrap_or_default();
            p.starts_with("bugcheck 0xd1") && p.contains("PAGELK")
        }),
        "{stats:#}"
    );
}

#[test]
fn releasing_the_locks_in_cleanup_before_draining_the_waits_is_caught_for_every_seed_tried() {
    let sys = image("PAGELOCK_SYS_DEFECT_UNLOCK_BEFORE_DRAIN", Some("unlock-before-drain"), false);
    for seed in 1..=10 {
        let (output, report) = waits_closed_pending_from_two_cpus(&sys, seed);
        assert_eq!(output.status.code(), Some(1), "seed {seed}: {report:#}");
        let fired = rules(&report);
        assert!(
            fired.iter().any(|r| r == "released-with-irps-outstanding"),
            "seed {seed}: {fired:?}"
        );
    }
}

/// Asserts that a service stop under requests, over the schedules under which the real driver
/// stays clean (`pagelock_on_the_bed.rs`), makes `sys` touch its freed image: 0xCE.
fn assert_the_image_is_freed_under_a_dispatch_routine(sys: &std::path::Path) {
    let mut args = service_stopped_under_requests(sys, 40);
    args.push("--json".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = bed(&args);
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    let bugcheck = &report["bugcheck"];
    assert_eq!(bugcheck["rule"], "unloaded-image-touched", "{report:#}");
    assert_eq!(bugcheck["code"], 0xCE, "{report:#}");
    assert!(report["races"].to_string().contains(UNLOAD_MEETS_A_DISPATCH), "{report:#}");
}

#[test]
fn an_unload_that_does_not_wait_for_the_dispatch_routines_frees_the_image_under_one() {
    assert_the_image_is_freed_under_a_dispatch_routine(&image(
        "PAGELOCK_SYS_DEFECT_UNLOAD_WITHOUT_RUNDOWN_WAIT",
        Some("unload-without-rundown-wait"),
        false,
    ));
}

#[test]
fn a_way_back_through_pageable_code_after_the_rundown_release_faults_in_the_freed_image() {
    // The bed trims every unlocked page as a reference is released while unload waits: the
    // return into PAGE faults, unload goes on meanwhile, and the page never comes back.
    assert_the_image_is_freed_under_a_dispatch_routine(&image(
        "PAGELOCK_SYS_DEFECT_PAGED_RUNDOWN_RELEASE",
        Some("paged-rundown-release"),
        false,
    ));
}
