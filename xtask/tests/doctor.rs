//! `xtask doctor` finds libclang the way bindgen will (through clang-sys), so that a library of
//! a neighbouring name never passes for it. Each case is a directory tree handed to clang-sys
//! through `LIBCLANG_PATH`, which it then searches alone.

use std::{path::Path, process::Command};

use serde_json::Value;

const LIBCLANG: &str = "libclang (bindgen loads it)";

/// The doctor's row for libclang, with `LIBCLANG_PATH` set to `dir` (or unset).
fn libclang_row(dir: Option<&Path>) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["doctor", "--json"]);
    match dir {
        Some(dir) => command.env("LIBCLANG_PATH", dir),
        None => command.env_remove("LIBCLANG_PATH"),
    };
    let out = command.output().expect("xtask doctor runs");
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let rows = report["prerequisites"].as_array().expect("a list of prerequisites");
    rows.iter().find(|r| r["what"] == LIBCLANG).expect("a libclang row").clone()
}

fn link(target: &Path, dir: &Path, name: &str) {
    std::os::unix::fs::symlink(target, dir.join(name)).expect("a symlink");
}

/// Some ELF64 shared library of the machine's that is not libclang.
fn other_library() -> &'static Path {
    ["/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("libz or libc on the machine")
}

#[test]
fn a_tree_holding_only_libclang_cpp_counts_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    // The image ships libclang-cpp (the C++ library), which bindgen cannot load.
    link(other_library(), dir.path(), "libclang-cpp.so.14");
    let row = libclang_row(Some(dir.path()));
    assert!(row["found"].is_null(), "{row}");
    assert!(row["provider"].as_str().unwrap().contains("libclang1-14"), "{row}");
}

#[test]
fn a_file_named_libclang_that_is_not_elf_counts_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libclang.so"), b"not a library").unwrap();
    let row = libclang_row(Some(dir.path()));
    assert!(row["found"].is_null(), "{row}");
    assert!(row["missing"].as_str().unwrap().contains("invalid ELF header"), "{row}");
}

#[test]
fn a_shared_library_named_libclang_without_its_entry_points_counts_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    link(other_library(), dir.path(), "libclang.so.1");
    let row = libclang_row(Some(dir.path()));
    assert!(row["found"].is_null(), "{row}");
    assert!(row["missing"].as_str().unwrap().contains("clang_createIndex"), "{row}");
}

#[test]
fn the_real_libclang_is_found_where_clang_sys_finds_it() {
    let system = libclang_row(None);
    let path = system["found"].as_str().unwrap_or_else(|| {
        panic!("libclang is not installed here; `cargo xtask test` installs it first: {system}")
    });
    // Copied into a tree of its own under a name clang-sys accepts, it is found there.
    let dir = tempfile::tempdir().unwrap();
    link(Path::new(path), dir.path(), "libclang-14.so.1");
    let row = libclang_row(Some(dir.path()));
    assert_eq!(row["found"].as_str(), Some(dir.path().join("libclang-14.so.1").to_str().unwrap()));
}
