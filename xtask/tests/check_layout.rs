//! `cargo xtask check-layout` on a tree with an import cycle, and on the test bed with one
//! upward import added (the bed as it is passes the same check as a step of `cargo xtask
//! test`).

use std::{path::Path, process::Command};

fn check_layout(source: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["check-layout", "--source"])
        .arg(source)
        .output()
        .expect("xtask runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root")
}

#[test]
fn a_tree_with_a_cycle_fails_and_names_it() {
    let (clean, report) = check_layout(&root().join("xtask/tests/fixtures/layout-cycle"));
    assert!(!clean, "{report}");
    assert!(report.contains("1 import cycle(s)"), "{report}");
    assert!(report.contains("ke::irql <-> mm"), "{report}");
    assert!(report.contains("ke::irql imports mm"), "{report}");
    assert!(!report.contains("record <->"), "the record imports nothing: {report}");
}

#[test]
fn one_upward_import_in_the_test_bed_is_a_cycle() {
    // The IRQL module reaching into the memory manager for Force IRQL paging, as it once did,
    // instead of through the hook the bed installs.
    let copy = tempfile::tempdir().expect("a temporary directory");
    copy_tree(&root().join("tests/testbed/src"), copy.path());
    let irql = copy.path().join("ke/irql.rs");
    let text = std::fs::read_to_string(&irql).expect("ke/irql.rs");
    let broken =
        format!("{text}\npub fn page_out() {{\n    crate::mm::get().page_out_unlocked();\n}}\n");
    std::fs::write(&irql, broken).expect("writing the copy");
    let (clean, report) = check_layout(copy.path());
    assert!(!clean, "{report}");
    assert!(report.contains("ke::irql imports") && report.contains("mm"), "{report}");
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("reading the tree") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("a directory");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("a file");
        }
    }
}
