//! `cargo xtask check-wdk`: the driver's official `wdk` path (wdk, wdk-sys, wdk-alloc,
//! wdk-panic; build.rs through wdk-build) type-checked on this host, without the WDK.
//!
//! As toolchain.md ("Type-checking the official (`wdk`) path on Linux") describes it:
//! - a copy of wdk-build, extracted from the registry's `.crate` after its sha256 is checked
//!   against `Cargo.lock`, patched for the host only (the `windows` dependency and the registry
//!   lookup Windows-only, `set_var`/`remove_var` without their deliberate compile error, the
//!   unix symlink call), each patch a string replacement that fails when its anchor is missing;
//! - a WDK content root laid out from mingw-w64's headers, and clang arguments for bindgen
//!   (with [`MISSING_DECLARATIONS`], what mingw-w64 lacks);
//! - a scratch copy of the driver's workspace (manifest, lock file, build.rs, src/, its path
//!   dependencies, `.cargo/config.toml`) whose manifest wires the patched copy in
//!   (`[patch.crates-io]`, which also covers the `cargo metadata` wdk-build runs), whose manifest
//!   and build.rs have their `cfg(windows)` gates opened so that the build script runs
//!   `wdk_build::configure_wdk_binary_build` here, and which holds its own target directory
//!   (wdk-build finds the top-level manifest by the first `Cargo.lock` above `OUT_DIR`); the
//!   project's own `Cargo.lock` is never touched;
//! - then clippy (the compiler's full check plus lints) of the driver with `--features wdk`,
//!   debug and release, warnings denied.
//!
//! Everything lives under `target/wdk-check/`; files are rewritten only when their content
//! changes, so a second run rebuilds nothing it does not have to.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::{
    scratch::{files, sync, write_if_changed},
    toolchain::{self, TARGET, Toolchain, libclang},
};

/// The wdk-build release the patches below are written for.
const WDK_BUILD: &str = "wdk-build";
const WDK_BUILD_VERSION: &str = "0.6.0";

/// The Windows SDK version the content root pretends to be (wdk-build reads it from `Lib`).
const SDK_VERSION: &str = "10.0.26100.0";

/// Declarations mingw-w64 lacks, force-included into every header wdk-sys binds.
pub const MISSING_DECLARATIONS: &str = include_str!("../wdk-check/mingw-missing.h");

/// One string replacement in a file of wdk-build: `find` must occur exactly `count` times.
struct Replacement {
    file: &'static str,
    find: &'static str,
    replace: &'static str,
    count: usize,
}

/// The host-only patch of wdk-build 0.6.0. Nothing it configures (include paths, bindgen
/// settings, header lists, link arguments) changes.
const PATCH: &[Replacement] = &[
    // The `windows` crate is used for the registry lookup only; part of it does not build here.
    Replacement {
        file: "Cargo.toml",
        find: "\n[dependencies.windows]\n",
        replace: "\n[target.'cfg(windows)'.dependencies.windows]\n",
        count: 1,
    },
    Replacement {
        file: "src/utils.rs",
        find: "\nuse windows::{\n",
        replace: "\n#[cfg(windows)]\nuse windows::{\n",
        count: 1,
    },
    Replacement {
        file: "src/utils.rs",
        find: "    ffi::{CStr, OsStr},\n",
        replace: "    ffi::OsStr,\n",
        count: 1,
    },
    Replacement {
        file: "src/utils.rs",
        find: "\nfn read_registry_key_string_value(\n",
        replace: "\n#[cfg(windows)]\nfn read_registry_key_string_value(\n",
        count: 1,
    },
    Replacement {
        file: "src/utils.rs",
        find: "CStr::from_bytes_with_nul(",
        replace: "std::ffi::CStr::from_bytes_with_nul(",
        count: 1,
    },
    // The two registry lookups of the WDK's location: Windows only (`WDKContentRoot` is set).
    Replacement {
        file: "src/utils.rs",
        find: "    if let Some(path) = read_registry_key_string_value(\n",
        replace: "    #[cfg(windows)]\n    if let Some(path) = read_registry_key_string_value(\n",
        count: 2,
    },
    // `set_var` and `remove_var` carry a deliberate compile error off Windows.
    Replacement {
        file: "src/utils.rs",
        find: r#"#[cfg(not(target_os = "windows"))]
pub fn set_var<K, V>(_key: K, _value: V)
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    compile_error!(
        "windows-drivers-rs is designed to be run on a Windows host machine in a WDK environment. \
         Please build using a Windows target."
    );
}"#,
        replace: r#"#[cfg(not(target_os = "windows"))]
pub fn set_var<K, V>(key: K, value: V)
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    // SAFETY: host-only copy (pagelock's `cargo xtask check-wdk`); build scripts and
    // cargo-make tasks set variables before they start any thread.
    unsafe {
        env::set_var(key, value);
    }
}"#,
        count: 1,
    },
    Replacement {
        file: "src/utils.rs",
        find: r#"#[allow(dead_code)]
#[cfg(not(target_os = "windows"))]
pub fn remove_var<K>(_key: K)
where
    K: AsRef<OsStr>,
{
    compile_error!(
        "windows-drivers-rs is designed to be run on a Windows host machine in a WDK environment. \
         Please build using a Windows target."
    );
}"#,
        replace: r#"#[allow(dead_code)]
#[cfg(not(target_os = "windows"))]
pub fn remove_var<K>(key: K)
where
    K: AsRef<OsStr>,
{
    // SAFETY: as for `set_var` above.
    unsafe {
        env::remove_var(key);
    }
}"#,
        count: 1,
    },
    // The cargo-make step's symlink to the makefile: the unix call.
    Replacement {
        file: "src/cargo_make.rs",
        find: "std::os::windows::fs::symlink_file(",
        replace: "std::os::unix::fs::symlink(",
        count: 2,
    },
];

/// Applies the replacements of [`PATCH`] that concern `file` to its `text`.
///
/// # Errors
/// When an anchor does not occur exactly as often as expected: a new wdk-build must never be
/// patched silently wrong.
fn patch_file(file: &str, text: &str, patch: &[Replacement]) -> Result<String> {
    // wdk-build's sources have CRLF line ends (its Cargo.toml, normalised by cargo, LF).
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut text = text.to_owned();
    for r in patch.iter().filter(|r| r.file == file) {
        let (find, replace) = (r.find.replace('\n', eol), r.replace.replace('\n', eol));
        let found = text.matches(&find).count();
        ensure!(
            found == r.count,
            "{WDK_BUILD} {WDK_BUILD_VERSION} patch: {file} holds {found} occurrence(s) of {:?}, \
             {} expected; the patch no longer fits this source",
            r.find.lines().find(|l| !l.trim().is_empty()).unwrap_or(r.find),
            r.count
        );
        text = text.replace(&find, &replace);
    }
    Ok(text)
}

/// The version and checksum `Cargo.lock` records for the registry package `name`.
///
/// # Errors
/// When the lock file has no single registry entry for it.
fn locked(lock: &str, name: &str) -> Result<(String, String)> {
    let field = |block: &str, key: &str| {
        block.lines().find_map(|l| {
            l.strip_prefix(key)?.strip_prefix(" = \"")?.strip_suffix('"').map(str::to_owned)
        })
    };
    let entries: Vec<(String, String)> = lock
        .split("[[package]]")
        .filter(|block| field(block, "name").as_deref() == Some(name))
        .filter_map(|block| Some((field(block, "version")?, field(block, "checksum")?)))
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("Cargo.lock has no registry entry with a checksum for {name}"),
        _ => bail!("Cargo.lock has {} entries for {name}", entries.len()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes).iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The registry's `.crate` file of `name` `version`, if cargo has downloaded it.
fn cached_crate(name: &str, version: &str) -> Result<Option<PathBuf>> {
    let cache = cargo_home()?.join("registry/cache");
    let Ok(registries) = fs::read_dir(&cache) else { return Ok(None) };
    let file = format!("{name}-{version}.crate");
    Ok(registries.flatten().map(|r| r.path().join(&file)).find(|p| p.is_file()))
}

/// Has cargo download `name` `version` from crates.io: a throwaway manifest of its own (the
/// driver's manifest opens it only for Windows hosts, and the scratch workspace patches it).
fn download(tool: &Toolchain, dir: &Path, name: &str, version: &str) -> Result<()> {
    let dir = dir.join("fetch");
    fs::create_dir_all(dir.join("src"))?;
    fs::write(dir.join("src/lib.rs"), "")?;
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\n{name} = \"={version}\"\n\n[workspace]\n"
        ),
    )?;
    toolchain::run(Command::new(&tool.cargo).arg("fetch").current_dir(&dir))
}

/// The patched copy of wdk-build under `dir`: the `.crate` is checked against `Cargo.lock`
/// (`lock`), extracted beside it, patched, and synced into `dir/wdk-build-<version>`.
fn patched_wdk_build(tool: &Toolchain, lock: &str, dir: &Path) -> Result<PathBuf> {
    let (version, checksum) = locked(lock, WDK_BUILD)?;
    ensure!(
        version == WDK_BUILD_VERSION,
        "Cargo.lock has {WDK_BUILD} {version}; check-wdk's patch is for {WDK_BUILD_VERSION} \
         (xtask/src/check_wdk.rs): review it against the new source"
    );
    let archive = if let Some(path) = cached_crate(WDK_BUILD, &version)? {
        path
    } else {
        download(tool, dir, WDK_BUILD, &version)?;
        cached_crate(WDK_BUILD, &version)?
            .with_context(|| format!("cargo fetched no {WDK_BUILD}-{version}.crate"))?
    };
    let bytes = fs::read(&archive).with_context(|| format!("reading {}", archive.display()))?;
    let actual = sha256_hex(&bytes);
    ensure!(
        actual == checksum,
        "{} has sha256 {actual}, Cargo.lock says {checksum}: not the published {WDK_BUILD} \
         {version}",
        archive.display()
    );
    // Extracted from the bytes just checked, not from cargo's unpacked copy (which nothing
    // checks once unpacked).
    let pristine = dir.join("pristine");
    if pristine.exists() {
        fs::remove_dir_all(&pristine)?;
    }
    fs::create_dir_all(&pristine)?;
    toolchain::run(Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(&pristine))?;
    let name = format!("{WDK_BUILD}-{version}");
    let source = pristine.join(&name);
    let mut wanted = Vec::new();
    for relative in files(&source, &[])? {
        let bytes = fs::read(source.join(&relative))?;
        let key = relative.to_string_lossy().replace('\\', "/");
        let bytes = if PATCH.iter().any(|r| r.file == key) {
            let text = String::from_utf8(bytes).with_context(|| format!("{key} is not UTF-8"))?;
            patch_file(&key, &text, PATCH)?.into_bytes()
        } else {
            bytes
        };
        wanted.push((relative, bytes));
    }
    for file in unique_files() {
        ensure!(
            wanted.iter().any(|(p, _)| p.to_string_lossy().replace('\\', "/") == file),
            "{WDK_BUILD} {version} has no {file} to patch"
        );
    }
    let copy = dir.join(&name);
    sync(&copy, &wanted, &["target"])?;
    Ok(copy)
}

fn unique_files() -> Vec<&'static str> {
    let mut out: Vec<&str> = PATCH.iter().map(|r| r.file).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The files of the driver's workspace the check reads: the root manifest and lock file, the
/// driver (build.rs, src/), its path dependencies, and the project's cargo configuration.
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    ".cargo/config.toml",
    "src",
    "protocol",
    "ddk",
    "macros",
    "runtime",
];

/// Replaces each of `pairs` in `text`, each at least once.
fn replace_all(what: &str, text: &str, pairs: &[(&str, &str)]) -> Result<String> {
    let mut text = text.to_owned();
    for (find, replace) in pairs {
        ensure!(text.contains(find), "{what}: no {find:?} to replace");
        text = text.replace(find, replace);
    }
    Ok(text)
}

/// The scratch copy's manifest: its workspace reduced to the driver and its path dependencies,
/// wdk-build a build dependency on this host too, and patched (`[patch.crates-io]`) with the
/// copy at `wdk_build`. The patch is in the manifest rather than in `.cargo/config.toml`: it
/// covers the `cargo metadata` wdk-build runs all the same, and `-Zbuild-std`'s own resolve of
/// the standard library, which reads the configuration too, does not warn that it went unused.
fn scratch_manifest(text: &str, wdk_build: &Path) -> Result<String> {
    let members = text
        .lines()
        .find(|l| l.trim_start().starts_with("members = ["))
        .context("Cargo.toml: no `members = [...]` line")?;
    ensure!(!text.contains("[patch.crates-io]"), "Cargo.toml: a [patch.crates-io] of its own");
    let path = wdk_build.to_str().context("a UTF-8 path to the patched wdk-build")?;
    let text = replace_all(
        "Cargo.toml",
        text,
        &[
            (members, "members = [\"ddk\", \"macros\", \"protocol\", \"runtime\"]"),
            ("[target.'cfg(windows)'.build-dependencies]", "[build-dependencies]"),
        ],
    )?;
    Ok(format!(
        "{text}\n# Added by `cargo xtask check-wdk`: wdk-build patched for this host.\n\
         [patch.crates-io]\nwdk-build = {{ path = {} }}\n",
        toml_string(path)
    ))
}

/// The scratch copy's build.rs: its `cfg(windows)` gates opened for this (unix) host, so that
/// it runs wdk-build here.
fn scratch_build_script(text: &str) -> Result<String> {
    let text = replace_all(
        "build.rs",
        text,
        &[("#[cfg(windows)]", "#[cfg(unix)]"), ("#[cfg(not(windows))]", "#[cfg(not(unix))]")],
    )?;
    ensure!(
        text.contains("wdk_build::configure_wdk_binary_build"),
        "build.rs no longer calls wdk_build::configure_wdk_binary_build"
    );
    Ok(text)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Syncs the scratch workspace at `dst` from the driver's workspace at `source`.
fn scratch_workspace(source: &Path, dst: &Path, wdk_build: &Path) -> Result<String> {
    let mut wanted = Vec::new();
    for item in SOURCES {
        let path = source.join(item);
        if path.is_dir() {
            for relative in files(&path, &["target"])? {
                wanted.push((Path::new(item).join(&relative), fs::read(path.join(&relative))?));
            }
        } else {
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            wanted.push((PathBuf::from(item), bytes));
        }
    }
    let mut lock = String::new();
    for (relative, bytes) in &mut wanted {
        let text = || String::from_utf8(bytes.clone()).context("a UTF-8 file");
        match relative.to_str() {
            Some("Cargo.toml") => *bytes = scratch_manifest(&text()?, wdk_build)?.into_bytes(),
            Some("build.rs") => *bytes = scratch_build_script(&text()?)?.into_bytes(),
            Some("Cargo.lock") => lock = text()?,
            _ => {}
        }
    }
    sync(dst, &wanted, &["target"])?;
    Ok(lock)
}

/// The WDK content root wdk-build and wdk-sys read, laid out from mingw-w64's headers.
fn content_root(dir: &Path) -> Result<PathBuf> {
    let ddk = Path::new(toolchain::MINGW_DDK).parent().context("mingw's ddk directory")?;
    let include = ddk.parent().context("mingw's include directory")?;
    let root = dir.join("wdk");
    let km = root.join("Include").join(SDK_VERSION).join("km");
    fs::create_dir_all(&km)?;
    fs::create_dir_all(root.join("Include").join(SDK_VERSION).join("shared"))?;
    fs::create_dir_all(root.join("Lib").join(SDK_VERSION).join("km/x64"))?;
    let mut links: Vec<(PathBuf, PathBuf)> = vec![(include.to_path_buf(), km.join("crt"))];
    for entry in fs::read_dir(ddk).with_context(|| format!("reading {}", ddk.display()))? {
        let entry = entry?;
        links.push((entry.path(), km.join(entry.file_name())));
    }
    for (target, link) in links {
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link)?;
        }
        symlink(&target, &link)?;
    }
    Ok(root)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> Result<()> {
    bail!("check-wdk lays out its WDK content root with unix symlinks")
}

/// The extra clang arguments of wdk-sys's bindgen run.
fn clang_args(resource_dir: &Path, header: &Path) -> Result<String> {
    let path = |p: &Path| {
        let s = p.to_str().context("a UTF-8 path")?;
        ensure!(!s.contains(char::is_whitespace), "a path without spaces: {s}");
        Ok(s.to_owned())
    };
    Ok([
        // wdk-build's -fms-compatibility drops __GNUC__, which mingw-w64's headers need.
        "-fgnuc-version=4.2.1".to_owned(),
        // Debian's libclang computes a resource directory that does not exist.
        format!("-resource-dir={}", path(resource_dir)?),
        // The WDK defaults to the newest Windows, mingw-w64 to an old one.
        "-D_WIN32_WINNT=0x0A00".to_owned(),
        "-DNTDDI_VERSION=0x0A000008".to_owned(),
        "-include".to_owned(),
        path(header)?,
    ]
    .join(" "))
}

/// Debug or release.
#[derive(Clone, Copy, Debug)]
enum Profile {
    Debug,
    Release,
}

/// Clippy of the driver's `wdk` path in the scratch workspace `dir`, warnings denied.
fn clippy(tool: &Toolchain, dir: &Path, env: &[(&str, String)], profile: Profile) -> Result<()> {
    let mut command = Command::new(&tool.clippy);
    command
        .current_dir(dir)
        .args(["clippy", "--package", "pagelock", "--target", TARGET])
        .args(["-Zbuild-std=core,alloc,compiler_builtins", "--no-default-features"])
        .args(["--features", "wdk"]);
    if matches!(profile, Profile::Release) {
        command.arg("--release");
    }
    command
        .args(["--", "-D", "warnings"])
        // The cargo that cargo-clippy runs, and that wdk-build's `cargo metadata` runs.
        .env("CARGO", &tool.cargo)
        .env("RUSTC", &tool.rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    for (key, value) in env {
        command.env(key, value);
    }
    eprintln!("check-wdk: clippy, {profile:?}, --features wdk");
    toolchain::run(&mut command)
}

/// The link.exe arguments the WDK build must get besides `/DRIVER`, as the cross build gives
/// lld-link the same (xtask/src/cross.rs).
const LINK_EXE_ARGUMENTS: [&str; 4] =
    ["/INTEGRITYCHECK", "/MERGE:INITX=INIT", "/SECTION:INIT,ERD", "/MERGE:.pdata=.rdata"];

/// That the driver's build script really ran wdk-build's `configure_wdk_binary_build`: its
/// newest output holds the WDM driver's `/DRIVER` link argument, and the driver's own
/// arguments for link.exe ([`LINK_EXE_ARGUMENTS`]).
fn build_script_configured(dir: &Path, profile: Profile) -> Result<()> {
    let name = match profile {
        Profile::Debug => "debug",
        Profile::Release => "release",
    };
    let target = dir.join("target");
    let mut outputs = Vec::new();
    for build in [target.join(TARGET).join(name).join("build"), target.join(name).join("build")] {
        let Ok(entries) = fs::read_dir(&build) else { continue };
        for entry in entries.flatten() {
            let output = entry.path().join("output");
            if entry.file_name().to_string_lossy().starts_with("pagelock-") && output.is_file() {
                let modified = output.metadata()?.modified()?;
                outputs.push((modified, output));
            }
        }
    }
    outputs.sort();
    let (_, newest) = outputs.last().context("no output of the driver's build script")?;
    let text = fs::read_to_string(newest)?;
    ensure!(
        text.lines().any(|l| l.ends_with("link-arg=/DRIVER")),
        "{} holds no /DRIVER link argument: build.rs did not run configure_wdk_binary_build",
        newest.display()
    );
    // wdk-build's FORCE_INTEGRITY, which the cross build passes too, and the driver's own
    // arguments for link.exe: INIT discardable and trailing, the exception table in `.rdata`.
    for argument in LINK_EXE_ARGUMENTS {
        ensure!(
            text.lines().any(|l| l.ends_with(&format!("link-arg={argument}"))),
            "{} holds no {argument} link argument for link.exe",
            newest.display()
        );
    }
    Ok(())
}

/// Type-checks and lints the `wdk` path of the driver whose workspace is `source` (the
/// project's own, or a scratch copy of it).
///
/// # Errors
/// When a prerequisite is missing, the patch no longer fits wdk-build, its checksum does not
/// match `Cargo.lock`, or the driver's `wdk` path has an error or a warning.
pub fn run(source: &Path) -> Result<()> {
    toolchain::ensure_installed()?;
    let tool = toolchain::find()?;
    let library = libclang::library().map_err(anyhow::Error::msg).context("libclang")?;
    let resources = toolchain::resource_dir(&library, libclang::llvm_prefix().as_deref())
        .map_err(anyhow::Error::msg)
        .context("clang's resource directory")?;

    let dir = crate::cross::root().join("target/wdk-check");
    fs::create_dir_all(&dir)?;
    let lock = fs::read_to_string(source.join("Cargo.lock"))
        .with_context(|| format!("reading {}", source.join("Cargo.lock").display()))?;
    let wdk_build = patched_wdk_build(&tool, &lock, &dir)?;
    let workspace = dir.join("workspace");
    scratch_workspace(source, &workspace, &wdk_build)?;
    let header = dir.join("mingw-missing.h");
    write_if_changed(&header, MISSING_DECLARATIONS.as_bytes())?;
    let root = content_root(&dir)?;

    let env = [
        ("WDKContentRoot", root.to_str().context("a UTF-8 path")?.to_owned()),
        ("LIBCLANG_PATH", library.to_str().context("a UTF-8 path")?.to_owned()),
        ("BINDGEN_EXTRA_CLANG_ARGS", clang_args(&resources, &header)?),
    ];
    for profile in [Profile::Debug, Profile::Release] {
        clippy(&tool, &workspace, &env, profile)?;
        build_script_configured(&workspace, profile)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
[[package]]
name = "wdk"
version = "0.5.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"

[[package]]
name = "wdk-build"
version = "0.6.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "16f5"
dependencies = [
 "anyhow",
]
"#;

    #[test]
    fn the_lock_file_entry_is_found_by_exact_name() {
        assert_eq!(locked(LOCK, "wdk-build").unwrap(), ("0.6.0".into(), "16f5".into()));
        assert_eq!(locked(LOCK, "wdk").unwrap(), ("0.5.0".into(), "aa".into()));
        assert!(locked(LOCK, "wdk-sys").is_err());
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_missing_anchor_fails_the_patch() {
        let patch = [Replacement { file: "a.rs", find: "old()", replace: "new()", count: 1 }];
        assert_eq!(patch_file("a.rs", "x(); old();", &patch).unwrap(), "x(); new();");
        assert_eq!(patch_file("b.rs", "x();", &patch).unwrap(), "x();");
        let crlf = [Replacement { file: "a.rs", find: "a\nb", replace: "a\nc", count: 1 }];
        assert_eq!(patch_file("a.rs", "a\r\nb\r\n", &crlf).unwrap(), "a\r\nc\r\n");
        let error = patch_file("a.rs", "x();", &patch).unwrap_err().to_string();
        assert!(error.contains("0 occurrence(s)"), "{error}");
        let error = patch_file("a.rs", "old(); old();", &patch).unwrap_err().to_string();
        assert!(error.contains("2 occurrence(s)"), "{error}");
    }

    #[test]
    fn the_build_script_gates_are_opened() {
        let text = "#[cfg(windows)]\nfn main() { wdk_build::configure_wdk_binary_build() }\n\
                    #[cfg(not(windows))]\nfn main() {}\n";
        let opened = scratch_build_script(text).unwrap();
        assert!(opened.starts_with("#[cfg(unix)]\n"), "{opened}");
        assert!(opened.contains("#[cfg(not(unix))]\nfn main() {}"), "{opened}");
        assert!(scratch_build_script("fn main() {}").is_err());
    }

    #[test]
    fn the_project_manifest_still_fits() {
        let text = fs::read_to_string(crate::cross::root().join("Cargo.toml")).unwrap();
        let scratch = scratch_manifest(&text, Path::new("/x/wdk-build")).unwrap();
        assert!(scratch.ends_with("[patch.crates-io]\nwdk-build = { path = \"/x/wdk-build\" }\n"));
        assert!(scratch.contains("members = [\"ddk\", \"macros\", \"protocol\", \"runtime\"]"));
        assert!(scratch.contains("\n[build-dependencies]\nwdk-build"), "{scratch}");
        let build = fs::read_to_string(crate::cross::root().join("build.rs")).unwrap();
        scratch_build_script(&build).unwrap();
    }

    #[test]
    fn the_patch_fits_the_registry_copy_when_there_is_one() {
        // The unpacked registry copy, when cargo has one; the check itself reads the .crate.
        let Ok(registries) = fs::read_dir(cargo_home().unwrap().join("registry/src")) else {
            return;
        };
        let name = format!("{WDK_BUILD}-{WDK_BUILD_VERSION}");
        let Some(source) = registries.flatten().map(|r| r.path().join(&name)).find(|p| p.is_dir())
        else {
            return;
        };
        for file in unique_files() {
            let text = fs::read_to_string(source.join(file)).unwrap();
            let patched = patch_file(file, &text, PATCH).unwrap();
            assert!(!patched.contains("compile_error!("), "{file}");
        }
    }
}
