//! The bed against real kernel images: the fixture driver, correct and with each defect, and
//! pagelock.sys. A bed that cannot fail proves nothing: every defect must be caught by its own
//! rule, and the correct drivers must run clean.
//!
//! The images are built with `cargo xtask build-driver` (and `cargo xtask build`), or taken
//! from `TESTBED_FIXTURES_DIR` (`<feature>.sys`, `correct.sys`) and `PAGELOCK_SYS` when set, so
//! that `cargo xtask test` builds them once. Nothing here depends on timing.
#![cfg(target_os = "linux")]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, OnceLock},
};

use pagelock_testbed::report::Report;

const DEVICE: &str = r"\\.\TestbedFixture";
/// `IOCTL_WORK` of the fixture: any input, a 4-byte counter out.
const WORK: &str = "0x80002400:00000000:4";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cargo xtask <args>` and returns the path it prints last.
fn xtask(args: &[&str]) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root())
        .arg("xtask")
        .args(args)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo xtask {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    PathBuf::from(stdout.lines().last().expect("xtask prints the image's path").trim())
}

/// The fixture image with `feature` (`None`: the correct one), built once per test process.
fn fixture(feature: Option<&str>) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let name = feature.unwrap_or("correct").to_owned();
    if let Some(dir) = std::env::var_os("TESTBED_FIXTURES_DIR") {
        return Path::new(&dir).join(format!("{name}.sys"));
    }
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    built
        .entry(name)
        .or_insert_with(|| {
            let mut args = vec!["build-driver", "--package", "testbed-fixtures"];
            if let Some(feature) = feature {
                args.extend(["--features", feature]);
            }
            // Every variant is built to the same path: keep a copy under the variant's name,
            // made while the lock is held, before another test's build replaces it.
            let built = xtask(&args);
            let kept = built.with_file_name(format!("{}.sys", feature.unwrap_or("correct")));
            std::fs::copy(&built, &kept).expect("a copy of the fixture image");
            kept
        })
        .clone()
}

fn pagelock_sys() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            std::env::var_os("PAGELOCK_SYS").map_or_else(|| xtask(&["build"]), PathBuf::from)
        })
        .clone()
}

fn bed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagelock-testbed")).args(args).output().expect("the bed runs")
}

/// Runs the bed with `--json`; returns its exit status and report.
fn bed_json(args: &[&str]) -> (i32, Report) {
    let output = bed(&[args, &["--json"]].concat());
    let code = output.status.code().expect("exited");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}), exit {code}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code, report)
}

fn exec_fixture(feature: Option<&str>, extra: &[&str]) -> (i32, Report) {
    let driver = fixture(feature);
    let driver = driver.to_str().expect("UTF-8 path");
    bed_json(&[&["exec", driver, "--device", DEVICE, "--ioctl", WORK], extra].concat())
}

/// `IOCTL_WAIT` of the fixture: pended until its timer's DPC completes it.
const WAIT: &str = "0x80002408";

/// Asserts the report of `exec` (with `extra` arguments) shows `rule` with bugcheck `code`, and
/// exit status 1.
fn assert_caught_with(feature: &str, extra: &[&str], rule: &str, code: u32, fatal: bool) {
    let (exit, report) = exec_fixture(Some(feature), extra);
    assert_eq!(exit, 1, "{feature}: exit status\n{}", report.render());
    let violation = report
        .violations
        .iter()
        .find(|v| v.rule == rule)
        .unwrap_or_else(|| panic!("{feature}: rule {rule} did not fire\n{}", report.render()));
    assert_eq!(violation.code, code, "{feature}: bugcheck code of {rule}");
    assert_eq!(violation.fatal, fatal, "{feature}: whether {rule} stops the run");
    if fatal {
        let bugcheck = report.bugcheck.as_ref().expect("a fatal rule is a bugcheck");
        assert_eq!((bugcheck.rule.as_str(), bugcheck.code), (rule, code));
    }
}

macro_rules! caught {
    ($($test:ident: $feature:literal $([$($extra:expr),*])? => $rule:literal, $code:literal, $fatal:literal;)*) => {
        $(
            #[test]
            fn $test() {
                assert_caught_with($feature, &[$($($extra),*)?], $rule, $code, $fatal);
            }
        )*
        /// The defect features the table expects a rule of.
        const CAUGHT: &[&str] = &[$($feature),*];
        /// The rules the table shows firing.
        const CAUGHT_RULES: &[&str] = &[$($rule),*];
    };
}

caught! {
    forgetting_to_unlock_in_close_is_caught: "forget-unlock" => "locked-after-last-close", 0xBED0_0004, false;
    unlocking_more_than_locked_is_caught: "unlock-extra" => "unlock-at-zero", 0xBED0_0001, true;
    touching_unlocked_pageable_data_at_dispatch_is_caught: "unlocked-data-at-dispatch" => "page-fault-at-dispatch", 0xD1, true;
    a_spin_lock_acquired_in_page_code_is_caught: "spinlock-in-page" => "pageable-code-at-dispatch", 0xD1, true;
    pageable_data_passed_to_a_kernel_routine_at_dispatch_is_caught: "pageable-to-kernel" => "pageable-memory-at-dispatch", 0xD3, true;
    completing_an_irp_twice_is_caught: "complete-twice" => "irp-completed-twice", 0x44, true;
    never_completing_an_irp_is_caught: "never-complete" => "irp-never-completed", 0xC9, false;
    returning_a_status_other_than_io_status_is_caught: "status-mismatch" => "status-mismatch", 0xC9, false;
    information_larger_than_the_output_buffer_is_caught: "information-too-large" => "information-too-large", 0xC9, false;
    returning_at_raised_irql_is_caught: "return-raised" => "irql-changed-across-dispatch", 0xC9, false;
    a_spin_lock_never_released_is_caught: "keep-spinlock" => "spin-lock-never-released", 0xC4, false;
    releasing_a_spin_lock_not_held_is_caught: "release-unheld" => "spin-lock-not-held", 0xC4, false;
    an_mm_routine_above_apc_level_is_caught: "mm-at-dispatch" => "mm-above-apc-level", 0xC4, false;
    locking_an_address_outside_pageable_sections_is_caught: "lock-bad-address" => "lock-outside-pageable-section", 0xBED0_0003, false;
    locking_an_address_in_no_section_bugchecks_0x1a: "lock-in-no-section" => "lock-in-no-section", 0x1A, true;
    locking_an_address_in_no_image_is_caught: "lock-outside-image" => "lock-outside-every-image", 0xBED0_0008, true;
    an_unknown_section_handle_is_caught: "unknown-handle" => "unknown-section-handle", 0xBED0_0002, false;
    pool_leaked_at_unload_is_caught: "leak-pool" => "pool-leaked-at-unload", 0xC4, false;
    a_device_left_at_unload_is_caught: "leave-device" => "device-left-at-unload", 0xBED0_0006, false;
    a_link_left_at_unload_is_caught: "leave-link" => "link-left-at-unload", 0xBED0_0007, false;
    touching_init_after_driver_entry_is_caught: "touch-init" => "discarded-section-touched", 0x50, true;
    a_driver_bugcheck_is_reported_with_its_code: "bugcheck" => "driver-bugcheck", 0xE2, true;
    pending_without_marking_the_irp_is_caught: "pend-unmarked" ["--ioctl", WAIT] => "pending-not-marked", 0xC9, false;
    marking_pending_and_returning_another_status_is_caught: "marked-not-pending" ["--ioctl", WAIT] => "marked-not-pending", 0xC9, false;
    completing_with_the_cancel_routine_set_is_caught: "complete-with-cancel-routine" ["--ioctl", WAIT] => "completed-with-cancel-routine", 0xC9, false;
    a_cleanup_that_leaves_its_waits_queued_is_caught: "cleanup-leaves-queued" ["--pend", WAIT] => "queued-after-cleanup", 0xBED0_000B, false;
    a_wait_nothing_completes_is_caught: "pend-forever" ["--ioctl", WAIT] => "pending-never-completed", 0xBED0_000C, true;
    a_timer_still_set_at_unload_is_caught: "timer-at-unload" => "timer-or-dpc-at-unload", 0xCE, false;
    a_timer_in_a_pageable_section_is_caught: "timer-in-pageable" => "object-in-pageable-section", 0xBED0_000E, false;
    a_cancel_routine_keeping_the_cancel_lock_is_caught: "cancel-keeps-lock" ["--pend", WAIT] => "cancel-lock-not-released", 0xBED0_000F, false;
    completion_racing_cancellation_is_caught: "complete-racing-cancel" ["--ioctl", WAIT] => "irp-completed-twice", 0x44, true;
    unlocking_to_zero_with_waits_queued_is_caught: "unlock-while-queued" ["--open", "0", "--pend", WAIT] => "released-with-irps-outstanding", 0xBED0_0010, false;
    a_dpc_returning_at_another_irql_is_caught: "dpc-lowers-irql" ["--ioctl", WAIT] => "dpc-changed-irql", 0xC8, false;
    flushing_dpcs_at_dispatch_level_is_caught: "flush-at-dispatch" => "irql-too-high", 0xC4, false;
    a_name_longer_than_its_maximum_length_is_caught: "malformed-name" => "malformed-unicode-string", 0xBED0_0012, true;
    a_name_in_freed_init_handed_to_the_kernel_is_caught: "link-name-in-init" => "discarded-section-touched", 0x50, true;
    freeing_pool_twice_is_caught: "free-twice" => "bad-pool-free", 0xC4, false;
    freeing_pool_with_another_tag_is_caught: "free-wrong-tag" => "pool-tag-mismatch", 0xC2, false;
    allocating_zero_bytes_is_caught: "allocate-zero" => "zero-size-allocation", 0xC4, false;
    acquiring_a_held_spin_lock_again_is_caught: "acquire-twice" => "spin-lock-acquired-twice", 0xC4, true;
    two_locks_taken_in_either_order_deadlock_on_some_schedule: "lock-order" ["--ioctl", "0x80002400:0000000000:4", "--threads", "2", "--schedules", "40"] => "deadlock", 0xBED0_0009, true;
    touching_memory_no_driver_owns_is_caught: "invalid-access" => "invalid-access", 0x50, true;
    an_illegal_instruction_is_caught: "illegal-instruction" => "unsupported-instruction", 0x1E, true;
}

/// Rules shown firing by tests of their own (outside the table), with the test.
const FIRED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "pended-after-cleanup",
        "a_wait_queued_after_its_handles_cleanup_is_caught_for_every_seed_tried",
    ),
    ("locked-at-unload", "forgetting_to_unlock_also_leaves_the_section_locked_at_unload"),
    ("cpu-stuck", "driver_code_waiting_on_memory_another_cpu_must_change_is_reported_not_hung"),
    (
        "unloaded-image-touched",
        "an_unload_that_does_not_wait_for_the_dispatch_routines_frees_the_image_under_one \
         (defects_on_the_bed.rs)",
    ),
];

#[test]
fn every_rule_of_the_table_is_shown_firing() {
    let silent: Vec<&str> = pagelock_testbed::verifier::TABLE
        .iter()
        .map(|e| e.id)
        .filter(|id| !CAUGHT_RULES.contains(id) && !FIRED_ELSEWHERE.iter().any(|(r, _)| r == id))
        .collect();
    assert!(silent.is_empty(), "rules no test shows firing: {silent:?}");
}

/// The fixture's features that are not defects caught by a rule of the table: the binding
/// source, and the variants with tests of their own below.
const NOT_IN_THE_TABLE: &[&str] = &[
    "delete-device-in-work",
    "pend-after-cleanup",
    "mingw-ddk",
    "racy-hold",
    "touch-init-not-last",
    "unsupported-import",
    "wait-on-memory",
];

/// The features of the fixture crate, where the list of defects lives (`cargo xtask test`
/// builds one image per feature from the same list).
fn fixture_features() -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let fixture = packages.iter().find(|p| p["name"] == "testbed-fixtures").expect("the fixture");
    fixture["features"].as_object().expect("features").keys().cloned().collect()
}

#[test]
fn every_defect_feature_of_the_fixture_has_an_expected_rule() {
    let missing: Vec<String> = fixture_features()
        .into_iter()
        .filter(|f| !CAUGHT.contains(&f.as_str()) && !NOT_IN_THE_TABLE.contains(&f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "features of testbed-fixtures with no row in `caught!`: {missing:?}"
    );
}

#[test]
fn an_init_section_that_does_not_trail_is_kept_as_the_kernel_keeps_it() {
    // The touch of INIT after DriverEntry that `touch-init` makes, but with INIT left ordinary
    // in the objects and so placed before PAGE. The kernel frees only the trailing run of
    // discardable sections and keeps this INIT resident; so does the bed, and the touch is
    // harmless (a bed that freed sections by their name would report it).
    let (exit, report) = exec_fixture(Some("touch-init-not-last"), &[]);
    assert_eq!(exit, 0, "{}", report.render());
}

#[test]
fn a_name_the_kernel_would_copy_from_freed_init_stops_the_run_at_the_call() {
    // The bed checks the name before its copy: the bugcheck names the routine and the
    // parameter, where a fault in the copy would name only an instruction of the bed's.
    let (_, report) = exec_fixture(Some("link-name-in-init"), &[]);
    let bugcheck = report.bugcheck.as_ref().expect("the run was stopped");
    assert!(
        bugcheck.detail.contains("IoDeleteSymbolicLink, copying its SymbolicLinkName"),
        "{}",
        report.render()
    );
}

#[test]
fn forgetting_to_unlock_also_leaves_the_section_locked_at_unload() {
    let (_, report) = exec_fixture(Some("forget-unlock"), &[]);
    assert!(report.fired("locked-at-unload"), "{}", report.render());
}

#[test]
fn the_correct_fixture_runs_clean_and_pages_its_code_back_in() {
    let (exit, report) = exec_fixture(None, &["--open", "2"]);
    assert_eq!(exit, 0, "{}", report.render());
    assert!(report.violations.is_empty() && report.bugcheck.is_none());
    let work = report.steps.iter().find(|s| s.what.contains("DEVICE_CONTROL")).expect("sent");
    assert_eq!((work.status, work.output.as_deref()), (Some(0), Some("01000000")));
    let page = report.sections.iter().find(|s| s.name == "PAGE").expect("a PAGE section");
    assert!(page.page_ins > 0, "PAGE code ran after being paged out at idle");
    assert!(report.sections.iter().all(|s| s.lock_count == 0));
    assert_eq!(report.pool_outstanding, 0);
}

#[test]
fn the_correct_fixtures_waits_end_by_its_timer_or_by_cleanup_and_run_clean() {
    // Synchronous: the wait pends until the idle CPU lets the timer's DPC complete it.
    let (exit, report) = exec_fixture(None, &["--ioctl", WAIT]);
    assert_eq!(exit, 0, "{}", report.render());
    let waits: Vec<_> = report.steps.iter().filter(|s| s.what.contains(WAIT)).collect();
    assert_eq!(waits.len(), 1, "{}", report.render());
    assert_eq!(waits[0].status, Some(0), "expired by the timer");
    let calls = |name: &str| report.calls.iter().find(|(n, _)| n == name).map_or(0, |c| c.1);
    assert!(calls("KeSetTimerEx") >= 1 && calls("IoCsqRemoveNextIrp") >= 1, "{:?}", report.calls);
    // Overlapped and left pending: the handle's cleanup cancels it before close comes.
    let (exit, report) = exec_fixture(None, &["--pend", WAIT, "--pend", WAIT]);
    assert_eq!(exit, 0, "{}", report.render());
    let cancelled = report
        .steps
        .iter()
        .filter(|s| s.what.contains(WAIT) && s.status == Some(0xC000_0120_u32.cast_signed()))
        .count();
    assert_eq!(cancelled, 2, "both cancelled by cleanup\n{}", report.render());
    let cleanup = report.steps.iter().position(|s| s.what.starts_with("IRP_MJ_CLEANUP (handle 2)"));
    let close = report.steps.iter().position(|s| s.what.starts_with("IRP_MJ_CLOSE (handle 2)"));
    assert!(cleanup < close, "{}", report.render());
}

#[test]
fn waits_on_a_shared_handle_from_several_cpus_run_clean_for_every_seed_tried() {
    let driver = fixture(None);
    let driver = driver.to_str().expect("UTF-8 path");
    let (exit, report) = bed_json(&[
        "exec",
        driver,
        "--device",
        DEVICE,
        "--threads",
        "3",
        "--shared",
        "--repeat",
        "2",
        "--seed",
        "1",
        "--schedules",
        "8",
        "--ioctl",
        WAIT,
        "--ioctl",
        WORK,
    ]);
    assert_eq!(exit, 0, "{}", report.render());
    assert!(report.violations.is_empty(), "{}", report.render());
}

#[test]
fn a_failed_create_from_an_injected_pool_failure_gets_no_close_and_runs_clean() {
    let (exit, report) = exec_fixture(None, &["--fail-call", "ExAllocatePool2:1"]);
    assert_eq!(exit, 0, "{}", report.render());
    let create = report.steps.iter().find(|s| s.what.starts_with("IRP_MJ_CREATE")).expect("sent");
    assert_eq!(create.status, Some(pagelock_protocol::status::INSUFFICIENT_RESOURCES));
    assert!(!report.steps.iter().any(|s| s.what.starts_with("IRP_MJ_CLOSE")));
    assert_eq!(report.injected_failures.len(), 1);
}

#[test]
fn a_driver_entry_failing_from_an_injected_fault_is_checked_and_never_unloaded() {
    let (exit, report) = exec_fixture(None, &["--fail-call", "IoCreateSymbolicLink:1"]);
    assert_eq!(exit, 0, "the fixture deletes its device on that path\n{}", report.render());
    assert!(report.entry_status.is_some_and(|s| s < 0));
    assert!(!report.steps.iter().any(|s| s.what == "DriverUnload"));
}

#[test]
fn a_missing_import_fails_the_load_naming_it() {
    let driver = fixture(Some("unsupported-import"));
    let output = bed(&["exec", driver.to_str().expect("UTF-8"), "--device", DEVICE]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ntoskrnl.exe!KeStallExecutionProcessor"), "{stderr}");
}

#[test]
fn pagelock_runs_its_scenario_suite_clean() {
    let sys = pagelock_sys();
    let (exit, report) = bed_json(&["run", sys.to_str().expect("UTF-8")]);
    assert_eq!(exit, 0, "{}", report.render());
    assert_eq!(report.scenarios_passed, Some(true));
    assert!(report.scenario_locks.iter().all(|s| s.after.iter().all(|(_, c)| *c == 0)));
}

/// `exec` of pagelock.sys on `device` with `args`: its exit status and report.
fn pagelock_exec(device: &str, args: &[&str]) -> (i32, Report) {
    let sys = pagelock_sys();
    bed_json(&[&["exec", sys.to_str().expect("UTF-8"), "--device", device], args].concat())
}

#[test]
fn pagelock_exec_runs_clean_and_locks_only_while_open() {
    let query = format!("{:#x}::192", pagelock_protocol::IOCTL_QUERY_STATE);
    let (exit, report) = pagelock_exec(pagelock_protocol::DEVICE_NAME, &["--ioctl", &query]);
    assert_eq!(exit, 0, "{}", report.render());
    let open = report.steps.iter().find(|s| s.what.starts_with("IRP_MJ_CREATE")).expect("opened");
    assert!(open.lock_counts.iter().any(|(_, c)| *c == 1));
    let last = report.steps.last().expect("steps");
    assert!(last.lock_counts.iter().all(|(_, c)| *c == 0));
}

#[test]
fn a_standard_user_is_denied_at_create_by_pagelocks_dacl() {
    let (exit, report) = pagelock_exec(pagelock_protocol::DOS_DEVICE_NAME, &["--caller", "user"]);
    assert_eq!(exit, 0, "a refused open is not a driver bug\n{}", report.render());
    let create = report.steps.iter().find(|s| s.what.starts_with("IRP_MJ_CREATE")).expect("tried");
    assert_eq!(create.status, Some(pagelock_protocol::status::ACCESS_DENIED));
    assert!(create.what.contains("DACL"), "refused before the driver: {}", create.what);
    assert!(!report.steps.iter().any(|s| s.what.starts_with("IRP_MJ_CLOSE")));
}

#[test]
fn a_read_only_handle_is_refused_a_write_access_ioctl() {
    let lock = format!("{:#x}::64", pagelock_protocol::IOCTL_LOCK);
    let args = ["--access", "read", "--ioctl", &lock];
    let (exit, report) = pagelock_exec(pagelock_protocol::DEVICE_NAME, &args);
    assert_eq!(exit, 0, "{}", report.render());
    let lock = report.steps.iter().find(|s| s.what.contains("DEVICE_CONTROL")).expect("tried");
    assert_eq!(lock.status, Some(pagelock_protocol::status::ACCESS_DENIED));
}

#[test]
fn usage_and_load_errors_exit_with_2_and_say_why() {
    let sys = pagelock_sys();
    let sys = sys.to_str().expect("UTF-8");
    let cases: [(&[&str], &str); 5] = [
        (&["exec", sys, "--device", "x", "--ioctl", "0xZZ"], "CODE"),
        (&["exec", sys, "--device", "x", "--fail-call", "NoSuchRoutine:1"], "NoSuchRoutine"),
        (&["exec", sys, "--device", "x", "--fail-call", "memcpy:1"], "cannot fail"),
        (&["exec", sys, "--device", "x", "--caller", "root"], "root"),
        (&["exec", "/nonexistent/driver.sys", "--device", "x"], "/nonexistent/driver.sys"),
    ];
    for (args, says) in cases {
        let output = bed(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should mention {says}: {stderr}");
    }
}

// ---- Several requests in flight on one handle, under the scheduler ----

/// `IOCTL_HOLD` of the fixture: one more lock for the handle, no buffers.
const HOLD: &str = "0x80002404";

/// Two CPUs send HOLD ten times each on one overlapped handle, with the schedule of `seed`.
fn holds_on_a_shared_handle(feature: Option<&str>, seed: u64, schedules: u64) -> (i32, Report) {
    holds_with(feature, seed, schedules, &[])
}

/// As [`holds_on_a_shared_handle`], with `extra` arguments for the bed.
fn holds_with(feature: Option<&str>, seed: u64, schedules: u64, extra: &[&str]) -> (i32, Report) {
    let driver = fixture(feature);
    let driver = driver.to_str().expect("UTF-8 path");
    let (seed, schedules) = (seed.to_string(), schedules.to_string());
    let args = [
        "exec",
        driver,
        "--device",
        DEVICE,
        "--ioctl",
        HOLD,
        "--threads",
        "2",
        "--shared",
        "--repeat",
        "10",
        "--seed",
        &seed,
        "--schedules",
        &schedules,
    ];
    bed_json(&[&args[..], extra].concat())
}

#[test]
fn a_lost_update_on_a_shared_handle_is_caught_for_every_seed_tried() {
    for seed in 1..=10 {
        let (exit, report) = holds_on_a_shared_handle(Some("racy-hold"), seed, 1);
        assert_eq!(exit, 1, "seed {seed}:\n{}", report.render());
        assert!(
            report.violations.iter().any(|v| v.rule == "locked-after-last-close"),
            "seed {seed}:\n{}",
            report.render()
        );
        let schedule = report.schedule.expect("a scheduled run reports its schedule");
        // Two CPUs for the threads and one for the system worker that sends their closes.
        assert_eq!((schedule.seed, schedule.cpus), (seed, 3));
        assert!(schedule.switches > 0);
    }
}

#[test]
fn its_interlocked_twin_is_clean_for_the_same_seeds() {
    let (exit, report) = holds_on_a_shared_handle(None, 1, 10);
    assert_eq!(exit, 0, "{}", report.render());
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let (_, first) = holds_on_a_shared_handle(Some("racy-hold"), 5, 1);
    let (_, second) = holds_on_a_shared_handle(Some("racy-hold"), 5, 1);
    let (first, second) = (first.schedule.expect("first"), second.schedule.expect("second"));
    assert_eq!(first, second);
    let (_, other) = holds_on_a_shared_handle(Some("racy-hold"), 6, 1);
    assert_ne!(other.schedule.expect("other").digest, first.digest);
}

#[test]
fn on_one_cpu_the_same_requests_lose_nothing() {
    // Without the scheduler the bed serialises the requests, and the defect stays hidden: what
    // the emulated processors are for.
    let driver = fixture(Some("racy-hold"));
    let driver = driver.to_str().expect("UTF-8 path");
    let (exit, report) =
        bed_json(&["exec", driver, "--device", DEVICE, "--ioctl", HOLD, "--ioctl", HOLD]);
    assert_eq!(exit, 0, "{}", report.render());
}

#[test]
fn a_failing_schedule_can_be_seen_one_lane_per_cpu() {
    let picture = tempfile_path("racy-hold.svg");
    let svg_arg = picture.to_str().expect("UTF-8 path");
    let (exit, report) = holds_with(Some("racy-hold"), 1, 1, &["--trace-svg", svg_arg]);
    assert_eq!(exit, 1, "{}", report.render());
    let text = std::fs::read_to_string(&picture).expect("the picture was written");
    let svg = roxmltree::Document::parse(&text).expect("well-formed SVG");
    assert_eq!(svg.root_element().tag_name().name(), "svg");
    let with_class = |class: &str| {
        svg.descendants().filter(|n| n.attribute("class") == Some(class)).collect::<Vec<_>>()
    };
    // The two CPUs of the threads, the system worker's, and the main thread's lane.
    let lanes: Vec<&str> =
        with_class("lane").iter().filter_map(|l| l.attribute("data-cpu")).collect();
    assert_eq!(lanes, ["CPU 0", "CPU 1", "CPU 2", "main"]);
    let violations = with_class("violation");
    assert!(!violations.is_empty(), "the violation is marked");
    assert!(
        violations.iter().any(|v| v
            .descendants()
            .any(|t| t.text().is_some_and(|t| t.contains("locked-after-last-close")))),
        "the violation names its rule"
    );
    assert!(!with_class("call").is_empty() && !with_class("irp").is_empty());
    assert!(
        with_class("lock-count").iter().any(|g| g.attribute("data-section") == Some("PAGEDATA"))
    );
}

/// A path in the system's temporary directory, unique to this test process.
fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pagelock-testbed-{}-{name}", std::process::id()))
}

#[test]
fn a_device_deleted_while_a_handle_is_open_is_freed_at_the_last_close() {
    // WORK deletes the device with the handle still open; the close must still reach the
    // driver through it, and only then is it freed, as IoDeleteDevice defers it in the kernel.
    let (exit, report) = exec_fixture(Some("delete-device-in-work"), &[]);
    assert_eq!(exit, 0, "{}", report.render());
    let log = report.log.join("\n");
    let deferred = log.find("deletion deferred to the last close").expect("deferred");
    let freed = log.find("freed at its last close").expect("freed");
    assert!(deferred < freed, "{log}");
    let close = report.steps.iter().position(|s| s.what.starts_with("IRP_MJ_CLOSE"));
    assert!(close.is_some(), "the close reached the driver");
}

#[test]
fn driver_code_waiting_on_memory_another_cpu_must_change_is_reported_not_hung() {
    // The first HOLD spins, with no kernel call, until a second HOLD arrives; the scheduler
    // switches only at kernel calls, so the second never runs, and the watchdog says so.
    let (exit, report) = holds_with(Some("wait-on-memory"), 1, 1, &[]);
    assert_eq!(exit, 1, "{}", report.render());
    let bugcheck = report.bugcheck.as_ref().expect("the run was stopped");
    assert_eq!((bugcheck.rule.as_str(), bugcheck.code), ("cpu-stuck", 0xBED0_000A));
}

/// Schedules from each seed within which a `WAIT` racing its handle's cleanup must be caught.
const CLEANUP_RACE_SCHEDULES: u64 = 60;

/// `exec` of the fixture (`feature`, or the correct one) on four CPUs sharing one overlapped
/// handle, the fourth closing it while the others send `WAIT`, over `schedules` schedules from
/// `seed`.
fn waits_racing_a_close(feature: Option<&str>, seed: u64, schedules: u64) -> (i32, Report) {
    let (driver, seed, schedules) = (fixture(feature), seed.to_string(), schedules.to_string());
    let driver = driver.to_str().expect("UTF-8 path");
    bed_json(&[
        &["exec", driver, "--device", DEVICE, "--ioctl", WAIT, "--threads", "4", "--shared"][..],
        &["--close-shared", "--seed", &seed, "--schedules", &schedules],
    ]
    .concat())
}

#[test]
fn a_wait_queued_after_its_handles_cleanup_is_caught_for_every_seed_tried() {
    for seed in 1..=10 {
        let (exit, report) =
            waits_racing_a_close(Some("pend-after-cleanup"), seed, CLEANUP_RACE_SCHEDULES);
        assert_eq!(exit, 1, "seed {seed}: exit status\n{}", report.render());
        let violation = report.violations.iter().find(|v| v.rule == "pended-after-cleanup");
        let violation = violation.unwrap_or_else(|| panic!("seed {seed}:\n{}", report.render()));
        assert_eq!((violation.code, violation.fatal), (0xBED0_0011, false), "seed {seed}");
    }
}

#[test]
fn a_wait_refused_once_its_handle_is_cleaned_up_stays_clean_over_the_same_schedules() {
    // Every schedule the test above may run: seeds 1 to 10, each with the ones after it.
    let (exit, report) = waits_racing_a_close(None, 1, 9 + CLEANUP_RACE_SCHEDULES);
    assert_eq!(exit, 0, "{}", report.render());
}
