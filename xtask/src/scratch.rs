//! Scratch copies of source trees: synced file by file so that cargo's mtimes survive, and
//! patched (GNU `patch`) for the driver's deliberately broken variants and its mutants.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Writes `bytes` to `path` unless it already holds exactly them (keeps cargo's mtimes).
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Every file under `dir`, relative to it; `skip` names directories left out.
pub fn files(dir: &Path, skip: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let entries = fs::read_dir(dir.join(&relative))
            .with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                if !skip.iter().any(|s| entry.file_name() == *s) {
                    pending.push(path);
                }
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Makes `dst` hold exactly `files` (relative path, content): writes what changed, deletes the
/// rest (directories named in `keep` excepted).
pub fn sync(dst: &Path, files_wanted: &[(PathBuf, Vec<u8>)], keep: &[&str]) -> Result<()> {
    for (relative, bytes) in files_wanted {
        write_if_changed(&dst.join(relative), bytes)?;
    }
    if dst.is_dir() {
        for stale in files(dst, keep)? {
            if !files_wanted.iter().any(|(p, _)| *p == stale) {
                fs::remove_file(dst.join(&stale))?;
            }
        }
    }
    Ok(())
}

/// Directories a scratch copy of the workspace leaves out: build output and version control.
const NOT_SOURCE: &[&str] = &["target", ".git", "mutants.out", "mutants.out.old"];

/// A copy of the whole workspace (every file but build output and version control) at `dst`,
/// synced from `source`; a patch applied to it changes nothing in `source`.
pub struct Workspace {
    root: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Workspace {
    /// Syncs `dst` from the workspace at `source`, undoing any patch an earlier run applied.
    ///
    /// # Errors
    /// When a file cannot be read or written.
    pub fn sync(source: &Path, dst: &Path) -> Result<Self> {
        let mut wanted = Vec::new();
        for relative in files(source, NOT_SOURCE)? {
            let bytes = fs::read(source.join(&relative))
                .with_context(|| format!("reading {}", source.join(&relative).display()))?;
            wanted.push((relative, bytes));
        }
        sync(dst, &wanted, NOT_SOURCE)?;
        Ok(Self { root: dst.to_path_buf(), files: wanted })
    }

    /// The copy's root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies the unified diff in `diff` with `patch -p<strip>`; `file` names the one file to
    /// patch when the diff's own header names none that `patch` can use (cargo-mutants' diffs).
    ///
    /// # Errors
    /// When `patch` is missing or the diff does not apply cleanly.
    pub fn apply(&self, diff: &Path, strip: u8, file: Option<&Path>) -> Result<()> {
        let mut command = Command::new("patch");
        command
            .args(["--batch", "--silent", "--forward", "--no-backup-if-mismatch"])
            .args(["--reject-file=-", &format!("-p{strip}"), "--input"])
            .arg(diff)
            .current_dir(&self.root);
        if let Some(file) = file {
            command.arg(file);
        }
        let output = command.output().context("running patch (Debian: apt-get install patch)")?;
        if !output.status.success() {
            bail!(
                "{} does not apply to the source in {}:\n{}{}",
                diff.display(),
                self.root.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Puts `file` (relative to the root) back as the source has it.
    ///
    /// # Errors
    /// When `file` is not in the copy or cannot be written.
    pub fn restore(&self, file: &Path) -> Result<()> {
        let (_, bytes) = self
            .files
            .iter()
            .find(|(relative, _)| relative == file)
            .with_context(|| format!("{} is not in the workspace", file.display()))?;
        write_if_changed(&self.root.join(file), bytes)
    }
}
