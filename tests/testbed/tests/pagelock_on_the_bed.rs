//! The real pagelock.sys on the test bed, through the `pagelock-testbed` command line, as users
//! run it: what these tests state holds of the product; `cargo xtask mutants` uses them as its
//! oracle for the changes the host unit tests miss.
//!
//! The images come from `cargo xtask test`, which builds them once and passes their paths in
//! `PAGELOCK_SYS` and `PAGELOCK_SYS_DEBUG`; run directly, the tests build what is missing with
//! `cargo xtask build-driver`.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;

use common::{
    DEVICE, UNLOAD_MEETS_A_DISPATCH, bed, code, exec, exec_args, hex, image, json,
    lock_unlock_from_two_cpus, lock_unlock_on_a_shared_handle, release, rules,
    service_stopped_under_requests, wait_spec, waits_closed_pending_from_two_cpus,
};
use pagelock_protocol::zerocopy::{FromBytes, IntoBytes};
use pagelock_protocol::{IOCTL_LOCK, IOCTL_QUERY_STATE, IOCTL_RUN_LOCKED, RunRequest};
use serde_json::Value;

#[test]
fn the_debug_image_passes_the_suite_with_its_section_assertions_on() {
    let sys = image("PAGELOCK_SYS_DEBUG", None, true);
    let output = bed(&["run", sys.to_str().unwrap(), "--json"]);
    let report = json(&output);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["scenarios_passed"], Value::Bool(true));
    assert!(report["bugcheck"].is_null());
}

#[test]
fn unlocked_sections_really_page_out_and_fault_back_in() {
    let query = format!("{}::200", code(IOCTL_QUERY_STATE));
    let (output, report) = exec(&release(), &["--ioctl", &query]);
    assert!(output.status.success(), "{report:#}");
    let sections = report["sections"].as_array().unwrap();
    let page = sections.iter().find(|s| s["name"] == "PAGE").expect("a PAGE section");
    assert!(page["page_ins"].as_u64().unwrap() > 0, "PAGE code ran after being paged out: {page}");
    for s in sections {
        assert_eq!(s["lock_count"], 0, "{s}");
    }
    // One handle open: each lockable section held exactly once.
    let steps = report["steps"].as_array().unwrap();
    let created =
        steps.iter().find(|s| s["what"].as_str().unwrap().starts_with("IRP_MJ_CREATE")).unwrap();
    for pair in created["lock_counts"].as_array().unwrap() {
        let (name, count) = (pair[0].as_str().unwrap(), pair[1].as_i64().unwrap());
        assert_eq!(count, i64::from(name != "PAGE"), "{name}");
    }
}

/// Every failable call the driver makes on the load, open, IOCTL and close paths, made to fail
/// one at a time: each run must stay free of violations and leaks.
#[test]
fn every_failable_call_on_every_path_fails_cleanly() {
    let sys = release();
    let run = RunRequest::new(10, 1);
    let input = hex(run.as_bytes());
    let base = [
        "exec",
        sys.to_str().unwrap(),
        "--device",
        DEVICE,
        "--open",
        "2",
        "--json",
        "--ioctl",
        &format!("{}:{input}:16", code(IOCTL_RUN_LOCKED)),
        "--ioctl",
        &format!("{}::8", code(IOCTL_LOCK)),
        "--ioctl",
        &format!("{}::200", code(IOCTL_QUERY_STATE)),
    ]
    .map(str::to_owned);
    let clean = json(&bed(&base.iter().map(String::as_str).collect::<Vec<_>>()));
    let calls: Vec<String> = clean["failable_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert!(!calls.is_empty());
    let mut seen = std::collections::HashMap::<String, u64>::new();
    let mut injected = 0;
    for call in &calls {
        let n = seen.entry(call.clone()).or_default();
        *n += 1;
        let mut args: Vec<String> = base.to_vec();
        args.extend(["--fail-call".to_owned(), format!("{call}:{n}")]);
        let output = bed(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let report = json(&output);
        assert_eq!(report["injected"], 1, "{call}:{n} was not injected");
        assert!(report["violations"].as_array().unwrap().is_empty(), "{call}:{n}: {report:#}");
        assert!(report["bugcheck"].is_null(), "{call}:{n}: {report:#}");
        injected += 1;
    }
    // Every failable routine the driver calls was made to fail at least once.
    for routine in [
        "ExAllocatePool2",
        "IoCreateDevice",
        "IoCreateSymbolicLink",
        "ObOpenObjectByPointer",
        "ZwSetSecurityObject",
    ] {
        assert!(seen.contains_key(routine), "{routine} never called: {calls:?}");
    }
    assert_eq!(injected, calls.len());
}

#[test]
fn a_short_fuzz_run_finds_nothing_in_the_real_driver() {
    let sys = release();
    let output = bed(&["fuzz", sys.to_str().unwrap(), "--seconds", "2", "--seed", "7", "--json"]);
    let stats = json(&output);
    assert!(output.status.success(), "{stats:#}");
    assert_eq!(stats["failures"], 0);
    assert!(stats["sequences"].as_u64().unwrap() > 0 && stats["irps"].as_u64().unwrap() > 0);
}

#[test]
fn threads_opening_locking_running_and_closing_at_once_lose_no_update() {
    let sys = release();
    let output =
        bed(&["stress", sys.to_str().unwrap(), "--threads", "4", "--iterations", "200", "--json"]);
    let stats = json(&output);
    assert!(output.status.success(), "{stats:#}");
    assert_eq!(stats["runs_counted"], 800);
    assert_eq!(stats["operations"], 4 * 200 * 5);
    assert!(stats["problems"].as_array().unwrap().is_empty());
}

#[test]
fn the_real_per_open_state_stays_exact_on_a_shared_handle() {
    let (output, report) = lock_unlock_on_a_shared_handle(&release(), 1, 10);
    assert!(output.status.success(), "{report:#}");
    assert!(report["schedule"]["switches"].as_u64().unwrap_or(0) > 0, "{report:#}");
}

#[test]
fn the_fuzzer_on_two_cpus_finds_nothing_in_the_real_driver() {
    let sys = release();
    // A number of sequences, not of seconds: the figures are the same on any machine.
    let args = ["fuzz", sys.to_str().unwrap(), "--seconds", "600", "--sequences", "300"];
    let output = bed(&[&args[..], &["--seed", "5", "--threads", "2", "--json"]].concat());
    let stats = json(&output);
    assert!(output.status.success(), "{stats:#}");
    assert_eq!(stats["sequences"], 300, "{stats:#}");
    // Some sequences end with a service stop under a batch, some unloading while a request is
    // still on its way back through the driver.
    assert!(stats["unloads_under_a_dispatch"].as_u64().unwrap() > 0, "{stats:#}");
}

#[test]
fn a_create_completes_with_file_opened() {
    let (output, report) = exec(&release(), &[]);
    assert!(output.status.success(), "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    let create = steps
        .iter()
        .find(|s| s["what"].as_str().unwrap_or_default().starts_with("IRP_MJ_CREATE"))
        .expect("a create step");
    // IoStatus.Information of a create: FILE_OPENED (1), not FILE_SUPERSEDED (0).
    assert_eq!(create["information"], 1, "{create:#}");
}

#[test]
fn closes_come_from_the_system_worker_at_passive_or_apc_level_and_the_driver_is_ready() {
    // Each of two threads opens its own handle, locks and unlocks, and closes it; the close
    // reaches the driver later, on the worker's CPU (CPU 2), at the IRQL the schedule draws,
    // as Windows may deliver it (a deferred delete in a worker thread, or at APC_LEVEL).
    let mut irqls = std::collections::BTreeSet::new();
    for seed in 1..=10 {
        let (output, report) = lock_unlock_from_two_cpus(&release(), false, 3, seed, 1);
        assert!(output.status.success(), "seed {seed}: {report:#}");
        for step in report["steps"].as_array().unwrap() {
            let what = step["what"].as_str().unwrap_or_default();
            if let Some(irql) =
                what.strip_prefix("IRP_MJ_CLOSE").and_then(|w| w.split("on CPU 2 at IRQL ").nth(1))
            {
                irqls.insert(irql.to_owned());
            }
        }
    }
    assert_eq!(irqls.into_iter().collect::<Vec<_>>(), ["0", "1"]);
}

#[test]
fn the_real_driver_drains_its_waits_before_the_last_lock_goes_for_every_seed_tried() {
    for seed in 1..=10 {
        let (output, report) = waits_closed_pending_from_two_cpus(&release(), seed);
        assert!(output.status.success(), "seed {seed}: {report:#}");
        let cancelled = report["steps"].as_array().map_or(0, |steps| {
            steps
                .iter()
                .filter(|s| {
                    s["status"].as_i64() == Some(i64::from(pagelock_protocol::status::CANCELLED))
                })
                .count()
        });
        assert_eq!(cancelled, 2, "seed {seed}: both waits cancelled by their handle's cleanup");
    }
}

/// The race of a handle's cleanup with its own requests, as the bed names it.
const CLEANUP_MEETS_A_REQUEST: &str =
    "IRP_MJ_CLEANUP sent while a request of the file object is in its dispatch routine";
/// The window in which a `WAIT` queued too late shows.
const RETURNED_AFTER_CLEANUP: &str =
    "a request returned from its dispatch after its file object's cleanup";

/// `exec` arguments for three CPUs on one overlapped handle of `sys`, the third closing it while
/// the other two send `WAIT` (1 ms), `SIGNAL` (the caller's), `LOCK` and `UNLOCK`, over
/// `schedules` seeds from `seed`.
fn closing_the_shared_handle_under_requests(sys: &Path, seed: u64, schedules: u64) -> Vec<String> {
    let signal = pagelock_protocol::SignalRequest::new(pagelock_protocol::SignalScope::Caller);
    let signal = format!(
        "{}:{}:{}",
        code(pagelock_protocol::IOCTL_SIGNAL),
        hex(signal.as_bytes()),
        size_of::<pagelock_protocol::SignalReply>()
    );
    let (lock, unlock) = (
        format!("{}::8", code(IOCTL_LOCK)),
        format!("{}::8", code(pagelock_protocol::IOCTL_UNLOCK)),
    );
    let mut args: Vec<String> = ["exec", sys.to_str().unwrap(), "--device", DEVICE]
        .into_iter()
        .chain(["--threads", "3", "--shared", "--close-shared"])
        .map(str::to_owned)
        .collect();
    args.extend(["--seed".into(), seed.to_string(), "--schedules".into(), schedules.to_string()]);
    for ioctl in [wait_spec(1, 0xC105E), signal, lock, unlock] {
        args.extend(["--ioctl".to_owned(), ioctl]);
    }
    args
}

#[test]
fn the_real_driver_refuses_waits_racing_cleanup_over_the_fixtures_schedules() {
    // The schedules under which the fixture's defect `pend-after-cleanup` is caught for every
    // seed 1 to 10 (tests/fixtures.rs): four CPUs, the fourth closing the shared handle.
    let wait = wait_spec(1, 0xC105E);
    let sys = release();
    let concurrency = ["--threads", "4", "--shared", "--close-shared", "--seed", "1"];
    let args = [&["--ioctl", &wait][..], &concurrency, &["--schedules", "69"]].concat();
    let reached = races_reached(&exec_args(sys.to_str().unwrap(), &args));
    assert!(reached.iter().any(|(r, n)| r == CLEANUP_MEETS_A_REQUEST && *n > 0), "{reached:?}");
}

#[test]
fn the_real_driver_stays_clean_when_a_handle_closes_under_its_own_requests() {
    let args = closing_the_shared_handle_under_requests(&release(), 1, 300);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reached = races_reached(&args);
    for race in [CLEANUP_MEETS_A_REQUEST, RETURNED_AFTER_CLEANUP] {
        assert!(
            reached.iter().any(|(r, n)| r == race && *n > 0),
            "no schedule reached {race:?}: {reached:?}"
        );
    }
}

#[test]
fn the_debug_image_stays_clean_when_its_timers_dpc_spins_while_the_handle_closes() {
    // Seed 238 with the debug image: the cleanup's drain completes a WAIT it took off the
    // queue, the clock interrupts it at the entry of IofCompleteRequest, and the timer's DPC
    // there spins on the timer's lock, which a DPC on another CPU holds; that one finds
    // nothing pending, cancels the timer and lets go. The two CPUs left waiting drew each other
    // until their waits added up, and the bed called it "nothing left can complete it" while
    // the spinning CPU could go on. A schedule of this image's code only: the bed's own test of
    // the verdict is in `sched`.
    let sys = image("PAGELOCK_SYS_DEBUG", None, true);
    let mut args = closing_the_shared_handle_under_requests(&sys, 238, 1);
    args.push("--json".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = bed(&args);
    let report = json(&output);
    assert!(output.status.success() && rules(&report).is_empty(), "{report:#}");
    assert!(report["bugcheck"].is_null(), "{report:#}");
    let races = report["races"].to_string();
    assert!(races.contains(CLEANUP_MEETS_A_REQUEST), "seed 238 no longer closes under a request");
}

#[test]
fn a_service_stop_under_requests_lets_every_dispatch_routine_leave_before_the_image_goes() {
    // DriverUnload comes as the last close returns, on the system worker, while a request
    // completed before that close may still be on its way back through the driver on another
    // CPU; the image is freed once DriverUnload returns, and a CPU still in it would fault.
    let args = service_stopped_under_requests(&release(), 40);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reached = races_reached(&args);
    assert!(
        reached.iter().any(|(r, n)| r == UNLOAD_MEETS_A_DISPATCH && *n > 0),
        "no schedule unloaded under a dispatch routine: {reached:?}"
    );
}

#[test]
fn a_service_stop_refuses_new_opens_and_unloads_as_the_open_handle_closes() {
    // One handle open when the service stops: the threads' opens after it are refused, and
    // DriverUnload comes only once that handle is closed, last.
    let lock = format!("{}::8", code(IOCTL_LOCK));
    let stop = ["--open", "1", "--threads", "2", "--stop"];
    let (output, report) = exec(&release(), &[&stop[..], &["--ioctl", &lock]].concat());
    assert!(output.status.success() && rules(&report).is_empty(), "{report:#}");
    let steps: Vec<(&str, Option<i64>)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["what"].as_str().unwrap_or_default(), s["status"].as_i64()))
        .collect();
    let at = |what: &str| steps.iter().position(|(w, _)| w.starts_with(what));
    let stopped = at("service stopped").expect("the service stopped");
    let creates: Vec<Option<i64>> =
        steps.iter().filter(|(w, _)| w.starts_with("IRP_MJ_CREATE")).map(|(_, s)| *s).collect();
    let refused = i64::from(0xC000_000E_u32.cast_signed());
    assert_eq!(creates, [Some(0), Some(refused), Some(refused)], "{steps:?}");
    assert!(at("IRP_MJ_CREATE").unwrap() < stopped, "{steps:?}");
    assert_eq!(at("DriverUnload"), Some(steps.len() - 1), "{steps:?}");
    assert!(at("IRP_MJ_CLOSE").unwrap() > stopped, "{steps:?}");
}

/// Runs `exec` over `schedules` seeds and returns, per race the bed names, the schedules that
/// reached it (from the summary `--schedules` prints).
fn races_reached(args: &[&str]) -> Vec<(String, u64)> {
    let output = bed(args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("reached in ")?;
            let (schedules, race) = rest.split_once(" of the schedules run ")?;
            let race = race.split_once("): ").map_or(race, |(_, r)| r);
            Some((race.to_owned(), schedules.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_schedules_reach_the_races_of_pending_requests_and_the_driver_stays_clean() {
    let sys = release();
    let (short, long) = (wait_spec(1, 1), wait_spec(30_000, 2));
    let sys = sys.to_str().unwrap();
    // The last unlock meets a running DPC in a few schedules of a thousand.
    let two = ["--open", "0", "--threads", "2", "--seed", "1", "--schedules", "1000"];
    let mut reached = races_reached(&exec_args(sys, &[&two[..], &["--pend", &short]].concat()));
    let three = ["--open", "0", "--threads", "3", "--seed", "1", "--schedules", "100"];
    let waits = ["--pend", &short, "--pend", &long, "--cancel"];
    reached.extend(races_reached(&exec_args(sys, &[&three[..], &waits].concat())));
    // On one shared handle, each CPU's CancelIoEx meets the others' waits, some still in their
    // dispatch (cancelled before the queue takes them).
    let shared = ["--threads", "3", "--shared", "--seed", "1", "--schedules", "100"];
    let waits = ["--pend", &long, "--pend", &short, "--cancel"];
    reached.extend(races_reached(&exec_args(sys, &[&shared[..], &waits].concat())));
    for race in [
        "IoCsqInsertIrp inserted an IRP cancelled meanwhile",
        "a DPC completed an IRP",
        "IRP_MJ_CLEANUP sent while a DPC runs on another CPU",
        "a section unlocked to zero while a DPC runs on another CPU",
        "IoCsqRemoveNextIrp skipped an IRP being cancelled",
        "IoCancelIrp found no cancel routine on an outstanding IRP (not yet queued, or being completed)",
    ] {
        assert!(
            reached.iter().any(|(r, n)| r == race && *n > 0),
            "no schedule reached {race:?}: {reached:?}"
        );
    }
}

/// The bed's interrupt time counts 100 ns units: this many to a millisecond.
const UNITS_PER_MS: u64 = 10_000;

/// Every `WAIT` of `report` that expired: its timeout (its cookie, by [`timed_waits`]'s
/// convention) and the interrupt times of its request (sent, dispatched, completed).
fn expired_waits(report: &Value) -> Vec<(u64, [u64; 3])> {
    use pagelock_protocol::{WaitOutcome, WaitReply, zerocopy::FromBytes};
    let steps = report["steps"].as_array().expect("steps");
    steps
        .iter()
        .filter_map(|step| {
            let output = step["output"].as_str()?;
            let bytes: Vec<u8> = (0..output.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&output[i..i + 2], 16).expect("hex"))
                .collect();
            let reply = WaitReply::read_from_bytes(&bytes).ok()?;
            (WaitOutcome::from_u32(reply.outcome) == Some(WaitOutcome::Expired)).then(|| {
                let times = &step["times"];
                let at = |field: &str| times[field].as_u64().expect("the request's times");
                (reply.cookie, [at("sent"), at("dispatched"), at("completed")])
            })
        })
        .collect()
}

/// `WAIT`s of each of `timeouts` (ms), sent in order and each waited for; the cookie of each is
/// its timeout.
fn timed_waits(timeouts: &[u32]) -> Vec<String> {
    timeouts
        .iter()
        .flat_map(|&timeout| ["--ioctl".to_owned(), wait_spec(timeout, u64::from(timeout))])
        .collect()
}

/// Timeouts on, just before and just after whole numbers of the timer's period, and the
/// shortest.
fn timeouts_around_the_tick() -> Vec<u32> {
    let tick = pagelock_protocol::WAIT_TICK_MS;
    vec![1, tick - 1, tick, tick + 1, 2 * tick - 1, 2 * tick, 2 * tick + 1, 5 * tick + 3]
}

#[test]
fn a_wait_expires_never_before_its_timeout_and_at_most_one_tick_after_it() {
    // On one CPU, where the timer's DPC runs the moment it is due, two WAITs of each timeout,
    // each waited for, on a freshly loaded driver: the first arms the timer, so its period
    // starts with it; the second comes at the tick that completed the first, just after that
    // tick read the clock.
    let sys = release();
    let tick = u64::from(pagelock_protocol::WAIT_TICK_MS) * UNITS_PER_MS;
    for timeout_ms in timeouts_around_the_tick() {
        let mut args = vec!["exec".to_owned(), sys.to_str().unwrap().to_owned()];
        args.extend(["--device".to_owned(), DEVICE.to_owned(), "--json".to_owned()]);
        args.extend(timed_waits(&[timeout_ms, timeout_ms]));
        let output = bed(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let report = json(&output);
        assert!(output.status.success(), "{report:#}");
        let expired = expired_waits(&report);
        assert_eq!(expired.len(), 2, "{timeout_ms} ms: both waits expired: {report:#}");
        let timeout = u64::from(timeout_ms) * UNITS_PER_MS;
        for (which, (_, [sent, dispatched, completed])) in expired.into_iter().enumerate() {
            let waited = completed - sent;
            assert!(waited >= timeout, "{timeout_ms} ms, wait {which}: expired after {waited}");
            assert!(
                completed - dispatched <= timeout + tick,
                "{timeout_ms} ms, wait {which}: expired {} units after its timeout, more than \
                 one tick",
                completed - dispatched - timeout
            );
        }
    }
}

#[test]
fn no_wait_expires_before_its_timeout_whatever_the_schedule() {
    // Three CPUs send WAITs on handles of their own; a CPU with nothing to do lets the timer
    // fire, and the tick's DPC meets the other CPUs' WAITs anywhere in their dispatch, before
    // or after its own reading of the clock. Few schedules send a WAIT in the instant between a
    // tick and its DPC's reading; these 200 seeds include some that do. (How late a wait ends
    // here also depends on when the schedule lets the DPC run, so only this bound is exact.)
    let sys = release();
    let timeouts = timeouts_around_the_tick();
    for seed in 1..=200 {
        let seed = seed.to_string();
        let mut args = vec!["exec".to_owned(), sys.to_str().unwrap().to_owned()];
        args.extend(
            ["--device", DEVICE, "--threads", "3", "--seed", &seed, "--json"].map(str::to_owned),
        );
        args.extend(timed_waits(&timeouts));
        let output = bed(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let report = json(&output);
        assert!(output.status.success(), "seed {seed}: {report:#}");
        let expired = expired_waits(&report);
        assert_eq!(expired.len(), 3 * timeouts.len(), "seed {seed}: every wait expired");
        for (timeout_ms, [sent, _, completed]) in expired {
            assert!(
                completed - sent >= timeout_ms * UNITS_PER_MS,
                "seed {seed}: a wait of {timeout_ms} ms expired {} units after it was sent",
                completed - sent
            );
        }
    }
}

#[test]
fn opens_of_a_name_below_the_device_or_of_a_directory_are_refused_and_change_nothing() {
    use pagelock_protocol::status;
    let sys = release();
    for (name, directory, expected) in [
        (r"\\.\PageLock\anything", false, status::OBJECT_NAME_NOT_FOUND),
        (r"\\.\PageLock\", false, status::OBJECT_NAME_NOT_FOUND),
        (r"\Device\PageLock\a\b", false, status::OBJECT_NAME_NOT_FOUND),
        (r"\\.\PageLock", true, status::NOT_A_DIRECTORY),
        (r"\\.\PageLock\anything", true, status::OBJECT_NAME_NOT_FOUND),
    ] {
        let case = format!("{name}{}", if directory { " as a directory" } else { "" });
        let mut args = vec!["exec", sys.to_str().unwrap(), "--device", name, "--open", "2"];
        if directory {
            args.push("--as-directory");
        }
        args.push("--json");
        let output = bed(&args);
        let report = json(&output);
        assert!(output.status.success(), "{case}: {report:#}");
        let creates: Vec<&Value> = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["what"].as_str().unwrap_or_default().starts_with("IRP_MJ_CREATE"))
            .collect();
        assert_eq!(creates.len(), 2, "{case}: {report:#}");
        for create in creates {
            // The driver's answer, not the bed's: the name reached the device.
            assert!(!create["what"].as_str().unwrap().contains("no such object"), "{create:#}");
            assert_eq!(create["status"], expected, "{case}: {create:#}");
            for pair in create["lock_counts"].as_array().unwrap() {
                assert_eq!(pair[1], 0, "{case}: a refused open locked {pair}");
            }
        }
        // Refused before anything was allocated or locked, not undone afterwards.
        let calls = report["calls"].as_array().unwrap();
        for routine in ["ExAllocatePool2", "MmLockPagableSectionByHandle"] {
            assert!(
                !calls.iter().any(|c| c[0] == routine),
                "{case}: {routine} was called: {calls:?}"
            );
        }
        assert_eq!(report["pool_outstanding"], 0, "{case}");
    }
}

/// The driver's package version from its manifest, as `QUERY_STATE` encodes it.
fn package_version() -> u32 {
    let manifest = std::fs::read_to_string(common::root().join("Cargo.toml")).unwrap();
    let line = manifest.lines().find(|l| l.starts_with("version = ")).expect("a version");
    let parts: Vec<u8> = line
        .trim_start_matches("version = ")
        .trim_matches('"')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    pagelock_protocol::encode_version(parts[0], parts[1], parts[2])
}

/// The virtual size of each section of the image at `sys`, by name.
fn section_sizes(sys: &Path) -> std::collections::HashMap<String, u32> {
    use object::{LittleEndian as LE, read::pe::PeFile64};
    let data = std::fs::read(sys).unwrap();
    let image = PeFile64::parse(&*data).expect("a PE32+ image");
    image
        .section_table()
        .iter()
        .map(|s| {
            let name = String::from_utf8_lossy(s.raw_name()).trim_end_matches('\0').to_owned();
            (name, s.virtual_size.get(LE))
        })
        .collect()
}

#[test]
fn query_state_reports_every_field_as_the_caller_and_the_image_know_it() {
    // Two handles; on the first: LOCK, LOCK, UNLOCK, RUN_LOCKED, then QUERY_STATE.
    let sys = release();
    let run = format!("{}:{}:16", code(IOCTL_RUN_LOCKED), hex(RunRequest::new(7, 3).as_bytes()));
    let (lock, unlock) = (
        format!("{}::8", code(IOCTL_LOCK)),
        format!("{}::8", code(pagelock_protocol::IOCTL_UNLOCK)),
    );
    let query = format!("{}::200", code(IOCTL_QUERY_STATE));
    let mut args = vec!["exec", sys.to_str().unwrap(), "--device", DEVICE, "--open", "2", "--json"];
    for ioctl in [&lock, &lock, &unlock, &run, &query] {
        args.extend(["--ioctl", ioctl]);
    }
    let output = bed(&args);
    let report = json(&output);
    assert!(output.status.success(), "{report:#}");
    let (bytes, _) = reply_of(&report, IOCTL_QUERY_STATE);
    let state = pagelock_protocol::StateReply::read_from_bytes(&bytes).expect("a whole reply");
    assert_eq!(state.version, pagelock_protocol::PROTOCOL_VERSION);
    assert_eq!(state.driver_version, package_version(), "the package's version");
    assert_eq!(state.open_handles, 2);
    // Two LOCKs, one UNLOCK: one extra pair; with the pairs the two creates took, every section
    // is locked 3 times over all handles, twice by the caller's.
    assert_eq!(state.caller_extra_locks, 1);
    let sizes = section_sizes(&sys);
    for (section, name) in state.sections.iter().zip(["PAGELK", "PAGEDATA"]) {
        assert_eq!(section.name(), name);
        assert_eq!(Some(&section.size), sizes.get(name), "{name}'s size in the section table");
        assert_eq!((section.lock_count, section.held_by_caller, section.reserved), (3, 2, 0));
    }
    // DriverEntry locks each section by address once, to take its handle, and unlocks it.
    assert_eq!(state.lock_by_address_calls, 2);
    // Each create locks both sections by handle, each LOCK both again; the UNLOCK releases both.
    assert_eq!(state.lock_by_handle_calls, 2 * 2 + 2 * 2);
    assert_eq!(state.unlock_calls, 2 + 2);
    assert_eq!(state.runs, 1);
}

/// The reply of the first request with control code `ioctl` in `report`, as bytes.
fn reply_of(report: &Value, ioctl: u32) -> (Vec<u8>, &Value) {
    let step = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["what"].as_str().unwrap().contains(&code(ioctl)))
        .expect("the request's step");
    let text = step["output"].as_str().expect("a reply");
    let bytes =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap());
    (bytes.collect(), step)
}

#[test]
fn bench_times_its_two_loops_within_the_time_the_request_spent_in_the_driver() {
    use pagelock_protocol::{BenchReply, BenchRequest, IOCTL_BENCH};
    let sys = release();
    let bench = format!("{}:{}:32", code(IOCTL_BENCH), hex(BenchRequest::new(100).as_bytes()));
    let (output, report) = exec(&sys, &["--ioctl", &bench]);
    assert!(output.status.success(), "{report:#}");
    let (bytes, step) = reply_of(&report, IOCTL_BENCH);
    let reply = BenchReply::read_from_bytes(&bytes).expect("a whole reply");
    assert_eq!((reply.version, reply.iterations), (pagelock_protocol::PROTOCOL_VERSION, 100));
    // The bed's counter is its interrupt time (100 ns units) at `frequency` counts a second.
    let times = &step["times"];
    let in_driver = times["completed"].as_u64().unwrap() - times["dispatched"].as_u64().unwrap();
    let counts_per_unit = reply.frequency / 10_000_000;
    let bound = (in_driver + 1) * counts_per_unit;
    // Each loop is timed by two readings in a row, so each took at least one count, and both
    // together no longer than the request was in the driver.
    assert!(reply.by_address_ticks >= 1 && reply.by_handle_ticks >= 1, "{reply:?}");
    assert!(reply.by_address_ticks + reply.by_handle_ticks <= bound, "{reply:?}, bound {bound}");
}

#[test]
fn the_debugger_log_says_when_the_driver_loads_and_when_it_unloads_and_nothing_else() {
    let (output, report) = exec(&release(), &[]);
    assert!(output.status.success(), "{report:#}");
    // DbgPrint's lines, prefixed with the driver's name so that a kernel debugger's filter finds
    // them; a correct run logs no error.
    assert_eq!(
        report["log"],
        serde_json::json!([
            "pagelock: loaded; sections pageable until a handle opens",
            "pagelock: unloaded"
        ])
    );
}

#[test]
fn cleanup_and_close_complete_with_success_and_no_information() {
    // Microsoft's IRP_MJ_CLEANUP and IRP_MJ_CLOSE pages: the driver completes both with
    // STATUS_SUCCESS; neither carries data back.
    let (lock, wait) = (format!("{}::8", code(IOCTL_LOCK)), wait_spec(30_000, 1));
    let (output, report) = exec(&release(), &["--open", "2", "--ioctl", &lock, "--pend", &wait]);
    assert!(output.status.success(), "{report:#}");
    let ends: Vec<&Value> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let what = s["what"].as_str().unwrap_or_default();
            what.starts_with("IRP_MJ_CLEANUP") || what.starts_with("IRP_MJ_CLOSE")
        })
        .collect();
    assert_eq!(
        ends.len(),
        2 * 3,
        "a cleanup and a close for each of the three handles: {report:#}"
    );
    for step in ends {
        assert_eq!(step["status"], 0, "{step}");
        assert!(matches!(step["information"].as_u64(), None | Some(0)), "{step}");
    }
}
