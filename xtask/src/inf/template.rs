//! The one INF template both Windows flows read.
//!
//! `cargo make` (wdk-build 0.6.0's `rust-driver-makefile.toml`, task `copy-inx-to-output`) and
//! `cargo wdk build` (cargo-wdk 0.2.0, `src/actions/build/package_task.rs`, `PackageTask::new`)
//! both copy `<package name>.inx` from the package root to the package's INF before stampinf;
//! neither takes another path. pagelock keeps its template under that name and nowhere else, so
//! the INF the two flows package is one file. [`check`] fails when that could stop being true:
//! the template missing or named after something other than the package, a second `.inx` in the
//! package root (a copy that could drift), or `Makefile.toml` redefining the copy task.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// wdk-build's task that copies the template; a `Makefile.toml` that redefines it may read
/// another file than cargo-wdk does.
const COPY_TASK: &str = "copy-inx-to-output";

/// The template of the package at `root` and the problems that would let the two flows read
/// different INFs (none when the template is the single source).
///
/// # Errors
/// When `Cargo.toml` or `Makefile.toml` cannot be read or is not valid TOML, or the package
/// root cannot be listed.
pub fn check(root: &Path) -> Result<(PathBuf, Vec<String>)> {
    let manifest = root.join("Cargo.toml");
    let manifest_toml = read_toml(&manifest)?;
    let name = package_name(&manifest_toml)
        .with_context(|| format!("{} has no [package] name", manifest.display()))?;
    let template = root.join(format!("{name}.inx"));
    let mut problems = Vec::new();
    if !template.is_file() {
        problems.push(format!(
            "{} is missing: cargo make and cargo wdk build both read the INF template from \
             <package name>.inx in the package root",
            template.display()
        ));
    }
    let listing = std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
    for entry in listing {
        let path = entry?.path();
        let is_inx = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("inx"));
        if is_inx && path != template {
            problems.push(format!(
                "{} is a second INF template, which neither flow reads and which could drift from \
                 {}",
                path.display(),
                template.display()
            ));
        }
    }
    let makefile = root.join("Makefile.toml");
    if makefile.is_file() {
        let tasks = read_toml(&makefile)?;
        if tasks.get("tasks").and_then(|tasks| tasks.get(COPY_TASK)).is_some() {
            problems.push(format!(
                "{} redefines [tasks.{COPY_TASK}]: cargo make could then package another INF \
                 than cargo wdk build, which always reads {}",
                makefile.display(),
                template.display()
            ));
        }
    }
    Ok((template, problems))
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse().with_context(|| format!("{} is not valid TOML", path.display()))
}

fn package_name(manifest: &toml::Table) -> Option<&str> {
    manifest.get("package")?.get("name")?.as_str()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::check;

    /// A scratch package root holding copies of the repository's Cargo.toml, Makefile.toml and
    /// template.
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = crate::cross::root();
        for file in ["Cargo.toml", "Makefile.toml", "pagelock.inx"] {
            std::fs::copy(root.join(file), dir.path().join(file)).expect("copying a root file");
        }
        dir
    }

    /// Rewrites the file at `path` with what `change` makes of its text.
    fn edit(path: &Path, change: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(path).expect("reading");
        std::fs::write(path, change(text)).expect("writing");
    }

    /// The problems `check` finds at `root`, asserting that one of them mentions `needle`.
    #[track_caller]
    fn assert_reported(root: &Path, needle: &str) {
        let (_, problems) = check(root).expect("the check runs");
        assert!(
            problems.iter().any(|problem| problem.contains(needle)),
            "expected a problem mentioning {needle:?}, got {problems:#?}"
        );
    }

    #[test]
    fn the_repository_has_one_template_named_after_the_package() {
        let (template, problems) = check(&crate::cross::root()).expect("the check runs");
        assert_eq!(problems, Vec::<String>::new());
        assert!(template.ends_with("pagelock.inx"));
    }

    #[test]
    fn a_scratch_copy_passes() {
        let dir = scratch();
        assert_eq!(check(dir.path()).expect("the check runs").1, Vec::<String>::new());
    }

    #[test]
    fn a_template_under_another_name_is_reported() {
        let dir = scratch();
        std::fs::rename(dir.path().join("pagelock.inx"), dir.path().join("driver.inx"))
            .expect("renaming");
        assert_reported(dir.path(), "pagelock.inx is missing");
        assert_reported(dir.path(), "driver.inx is a second INF template");
    }

    #[test]
    fn a_second_template_is_reported() {
        let dir = scratch();
        std::fs::copy(dir.path().join("pagelock.inx"), dir.path().join("driver.INX"))
            .expect("copying");
        assert_reported(dir.path(), "driver.INX is a second INF template");
    }

    #[test]
    fn a_renamed_package_is_reported() {
        let dir = scratch();
        edit(&dir.path().join("Cargo.toml"), |text| {
            assert_eq!(text.matches("name = \"pagelock\"").count(), 1);
            text.replace("name = \"pagelock\"", "name = \"pagelock2\"")
        });
        assert_reported(dir.path(), "pagelock2.inx is missing");
    }

    #[test]
    fn a_makefile_that_redefines_the_copy_is_reported() {
        let dir = scratch();
        edit(&dir.path().join("Makefile.toml"), |text| {
            text + "\n[tasks.copy-inx-to-output]\nclear = true\nscript = \"cp driver.inx x\"\n"
        });
        assert_reported(dir.path(), "redefines [tasks.copy-inx-to-output]");
    }

    #[test]
    fn a_broken_makefile_is_an_error() {
        let dir = scratch();
        std::fs::write(dir.path().join("Makefile.toml"), "[tasks\n").expect("writing");
        let error = check(dir.path()).expect_err("invalid TOML");
        assert!(format!("{error:#}").contains("is not valid TOML"), "{error:#}");
    }
}
