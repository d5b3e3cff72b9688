//! `xtask check-wdk` fails when the driver's `wdk` path has an error: run on a scratch copy of
//! the driver's workspace with one wrong field path in src/kernel/nt/irp.rs, it must fail and
//! name the compiler's E0609 (no such field) in that file; run on a copy whose build.rs no
//! longer merges `.pdata` into `.rdata`, it must fail and name that link argument. The copy goes
//! through the same scratch workspace and target directory as the real check, so only the
//! driver is checked again (and one check at a time: they share that workspace).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

/// The checks on copies share one scratch workspace: they run one at a time.
static SCRATCH: Mutex<()> = Mutex::new(());

/// The correct path to the current stack location in the IRP (two anonymous unions deep) and
/// the wrong one (one level skipped), the kind of slip the `wdk` bindings' field names invite.
const RIGHT: &str = "__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation";
const WRONG: &str = "__bindgen_anon_1.CurrentStackLocation";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Copies every file git tracks in the workspace to `to` (what a fresh clone would hold).
fn copy_workspace(to: &Path) {
    let listed = Command::new("git")
        .current_dir(root())
        .args(["ls-files", "-z"])
        .output()
        .expect("git runs");
    assert!(listed.status.success(), "git ls-files failed");
    for file in listed.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file).expect("a UTF-8 path"));
        let (from, to) = (root().join(file), to.join(file));
        if from.is_file() {
            fs::create_dir_all(to.parent().expect("a parent")).expect("directories");
            fs::copy(&from, &to).expect("a copy");
        }
    }
}

/// Runs `xtask check-wdk` on `source`: whether it passed, and its stderr.
fn check_wdk(source: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["check-wdk", "--source"])
        .arg(source)
        .output()
        .expect("xtask runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_wrong_field_path_in_the_wdk_path_fails_the_check() {
    let _one_at_a_time = SCRATCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = tempfile::tempdir().expect("a temporary directory");
    copy_workspace(scratch.path());
    let irp = scratch.path().join("src/kernel/nt/irp.rs");
    let text = fs::read_to_string(&irp).expect("irp.rs");
    assert!(text.contains(RIGHT), "irp.rs no longer holds {RIGHT}: pick another field path");
    fs::write(&irp, text.replacen(RIGHT, WRONG, 1)).expect("the broken copy");

    let (passed, stderr) = check_wdk(scratch.path());
    assert!(!passed, "check-wdk passed a broken driver:\n{stderr}");
    assert!(stderr.contains("error[E0609]"), "check-wdk failed, but not on the field:\n{stderr}");
    assert!(stderr.contains("irp.rs"), "the error is not in irp.rs:\n{stderr}");
}

#[test]
fn a_build_script_that_does_not_merge_pdata_into_rdata_fails_the_check() {
    const MERGE: &str = "/MERGE:.pdata=.rdata";
    let _one_at_a_time = SCRATCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = tempfile::tempdir().expect("a temporary directory");
    copy_workspace(scratch.path());
    let build = scratch.path().join("build.rs");
    let text = fs::read_to_string(&build).expect("build.rs");
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains(MERGE)).collect();
    assert_eq!(text.lines().count() - kept.len(), 1, "build.rs passes {MERGE} on one line");
    fs::write(&build, kept.join("\n") + "\n").expect("the broken copy");

    let (passed, stderr) = check_wdk(scratch.path());
    assert!(!passed, "check-wdk passed a build script without {MERGE}:\n{stderr}");
    assert!(
        stderr.contains(&format!("holds no {MERGE} link argument")),
        "check-wdk failed, but not on {MERGE}:\n{stderr}"
    );
}

#[test]
fn a_wdk_build_archive_that_is_not_the_locked_one_is_refused() {
    // A cargo home whose registry cache holds a wdk-build 0.6.0 archive of other bytes: the
    // check must refuse it before extracting or patching anything.
    let home = tempfile::tempdir().expect("a temporary directory");
    let cache = home.path().join("registry/cache/index.crates.io-0000000000000000");
    fs::create_dir_all(&cache).expect("directories");
    fs::write(cache.join("wdk-build-0.6.0.crate"), b"not the published crate").expect("a file");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["check-wdk", "--source"])
        .arg(root())
        .env("CARGO_HOME", home.path())
        .output()
        .expect("xtask runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-wdk accepted a forged archive:\n{stderr}");
    assert!(stderr.contains("Cargo.lock says"), "check-wdk failed, but not on the sum:\n{stderr}");
}
