//! What the test bed's tests of pagelock.sys share: the images, the bed's command line and its
//! JSON reports.
#![allow(dead_code, reason = "each test crate uses a part of it")]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use pagelock_protocol::IOCTL_LOCK;
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image in `variable`, or a fresh build of the driver, with the deliberate defect of
/// `tests/defects/<defect>.diff` applied to a copy of its source if one is named.
pub fn image(variable: &str, defect: Option<&str>, debug: bool) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(root()).args(["xtask", "build-driver", "--package", "pagelock"]);
    if let Some(defect) = defect {
        command.arg("--patch").arg(root().join("tests/defects").join(format!("{defect}.diff")));
    }
    if debug {
        command.arg("--debug");
    }
    let output = command.output().expect("cargo xtask runs");
    assert!(
        output.status.success(),
        "building the driver failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    PathBuf::from(stdout.lines().last().expect("xtask prints the path").trim())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn release() -> PathBuf {
    image("PAGELOCK_SYS", None, false)
}

pub fn bed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagelock-testbed")).args(args).output().expect("the bed runs")
}

pub fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

pub fn rules(report: &Value) -> Vec<String> {
    report["violations"].as_array().map_or_else(Vec::new, |v| {
        v.iter().map(|v| v["rule"].as_str().unwrap_or_default().to_owned()).collect()
    })
}

pub const DEVICE: &str = r"\Device\PageLock";

/// The arguments of `exec` of `sys` on pagelock's device, then `args`.
pub fn exec_args<'a>(sys: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    ["exec", sys, "--device", DEVICE].into_iter().chain(args.iter().copied()).collect()
}

/// Runs `exec` of `sys` on pagelock's device with `args` and `--json`; returns the output and
/// the report.
pub fn exec(sys: &Path, args: &[&str]) -> (Output, Value) {
    let mut all = exec_args(sys.to_str().unwrap(), args);
    all.push("--json");
    let output = bed(&all);
    let report = json(&output);
    (output, report)
}

pub fn code(ioctl: u32) -> String {
    format!("{ioctl:#x}")
}

/// Two CPUs send LOCK, UNLOCK `repeat` times each, on one overlapped handle of `sys` or (not
/// `shared`) each on its own, under the schedules from `seed`.
pub fn lock_unlock_from_two_cpus(
    sys: &Path,
    shared: bool,
    repeat: u32,
    seed: u64,
    schedules: u64,
) -> (Output, Value) {
    let (seed, schedules, repeat) = (seed.to_string(), schedules.to_string(), repeat.to_string());
    let (lock, unlock) = (
        format!("{}::8", code(IOCTL_LOCK)),
        format!("{}::8", code(pagelock_protocol::IOCTL_UNLOCK)),
    );
    let mut args = vec!["--threads", "2", "--repeat", &repeat];
    if shared {
        args.push("--shared");
    }
    args.extend(["--seed", &seed, "--schedules", &schedules]);
    args.extend(["--ioctl", &lock, "--ioctl", &unlock]);
    exec(sys, &args)
}

pub fn lock_unlock_on_a_shared_handle(sys: &Path, seed: u64, schedules: u64) -> (Output, Value) {
    lock_unlock_from_two_cpus(sys, true, 60, seed, schedules)
}

/// A `WAIT` of `timeout_ms` with `cookie`, as `exec` takes it (`CODE:INHEX:OUTLEN`).
pub fn wait_spec(timeout_ms: u32, cookie: u64) -> String {
    let request = pagelock_protocol::WaitRequest::new(timeout_ms, cookie);
    format!(
        "{}:{}:{}",
        code(pagelock_protocol::IOCTL_WAIT),
        hex(pagelock_protocol::zerocopy::IntoBytes::as_bytes(&request)),
        size_of::<pagelock_protocol::WaitReply>()
    )
}

/// Two CPUs each send a long `WAIT` on an overlapped handle of their own and close that handle
/// with the wait still queued, under the schedule of `seed`.
pub fn waits_closed_pending_from_two_cpus(sys: &Path, seed: u64) -> (Output, Value) {
    let (wait, seed) = (wait_spec(30_000, 0x5EED), seed.to_string());
    exec(sys, &["--open", "0", "--threads", "2", "--seed", &seed, "--pend", &wait])
}

pub use pagelock_testbed::bed::UNLOAD_MEETS_A_DISPATCH;

/// `exec` arguments that stop the service of `sys` under requests: three CPUs on one overlapped
/// handle, two sending `LOCK`, `QUERY_STATE` and `UNLOCK` three times, the third closing the
/// handle, so that `DriverUnload` runs on the system worker as that close returns, while a
/// request may still be returning from the driver; over `schedules` PCT schedules (depth 2,
/// change points within the run's 40 first switch points) from seed 1.
pub fn service_stopped_under_requests(sys: &Path, schedules: u64) -> Vec<String> {
    let mut args: Vec<String> = exec_args(sys.to_str().unwrap(), &["--open", "0"])
        .into_iter()
        .chain(["--threads", "3", "--repeat", "3", "--shared", "--close-shared", "--stop"])
        .chain(["--policy", "pct:2:40", "--seed", "1"])
        .map(str::to_owned)
        .collect();
    args.extend(["--schedules".to_owned(), schedules.to_string()]);
    for (ioctl, output) in [
        (IOCTL_LOCK, 8),
        (pagelock_protocol::IOCTL_QUERY_STATE, 200),
        (pagelock_protocol::IOCTL_UNLOCK, 8),
    ] {
        args.extend(["--ioctl".to_owned(), format!("{}::{output}", code(ioctl))]);
    }
    args
}
