//! Finding (or installing) what the cross build needs: a compiler with its library source,
//! lld-link, libclang for bindgen, and mingw-w64's DDK headers.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The Windows target the driver is cross-built for.
pub const TARGET: &str = "x86_64-pc-windows-msvc";

/// A compiler that can build `core` and `alloc` for the Windows target (`-Zbuild-std`).
pub struct Toolchain {
    /// The `cargo` to run.
    pub cargo: PathBuf,
    /// The `rustc` it must use (`RUSTC`).
    pub rustc: PathBuf,
    /// Its `cargo-clippy`, run as `cargo-clippy clippy`.
    pub clippy: PathBuf,
    /// The linker for the Windows target.
    pub linker: PathBuf,
    /// Which one this is, for the log.
    pub description: String,
}

fn library_source(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").exists()
}

fn sysroot_of(rustc: &Path) -> Option<PathBuf> {
    let out = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn which(name: &str) -> Option<PathBuf> {
    env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn find_linker() -> Option<PathBuf> {
    ["lld-link", "lld-link-14", "lld-link-15", "lld-link-16"].iter().find_map(|name| which(name))
}

fn has_libclang() -> bool {
    if env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    std::fs::read_dir("/usr/lib").is_ok_and(|dirs| {
        dirs.flatten().any(|d| {
            d.file_name().to_string_lossy().starts_with("llvm-")
                && std::fs::read_dir(d.path().join("lib")).is_ok_and(|libs| {
                    libs.flatten().any(|l| l.file_name().to_string_lossy().starts_with("libclang"))
                })
        })
    })
}

const MINGW_DDK: &str = "/usr/share/mingw-w64/include/ddk/ntddk.h";

/// What is missing, as (what, Debian package).
fn missing() -> Vec<(&'static str, &'static str)> {
    let mut missing = Vec::new();
    let rustup_ok = which("rustc").and_then(|r| sysroot_of(&r)).is_some_and(|s| library_source(&s));
    if !rustup_ok && !Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml").exists() {
        missing.push((
            "a Rust compiler with library source (rust-src)",
            "rustc-web cargo-web rust-web-src",
        ));
    }
    if !rustup_ok && !Path::new("/usr/bin/cargo-clippy").exists() {
        missing.push(("clippy for that compiler", "rust-web-clippy"));
    }
    if find_linker().is_none() {
        missing.push(("lld-link", "lld-14"));
    }
    if !has_libclang() {
        missing.push(("libclang (for bindgen)", "libclang-14-dev"));
    }
    if !Path::new(MINGW_DDK).exists() {
        missing.push(("mingw-w64's DDK headers", "mingw-w64-x86-64-dev"));
    }
    if which("x86_64-w64-mingw32-gcc").is_none() {
        missing.push(("the mingw-w64 linker (for the test app)", "gcc-mingw-w64-x86-64"));
    }
    missing
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn is_debian_like() -> bool {
    Path::new("/etc/debian_version").exists()
}

/// Makes sure everything is installed: installs what is missing with apt-get when running as
/// root on Debian or Ubuntu, and otherwise fails with the exact command to run.
///
/// # Errors
/// When something is missing and cannot be installed here.
pub fn ensure_installed() -> Result<()> {
    let absent = missing();
    if absent.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = absent.iter().flat_map(|(_, p)| p.split(' ')).collect();
    let command = format!("apt-get install -y {}", packages.join(" "));
    let what: Vec<&str> = absent.iter().map(|(w, _)| *w).collect();
    if !(is_root() && is_debian_like()) {
        bail!("missing: {}\ninstall with: sudo apt-get update && sudo {command}", what.join(", "));
    }
    eprintln!("installing {} ({})", what.join(", "), packages.join(" "));
    run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still = missing();
    if !still.is_empty() {
        bail!(
            "still missing after apt-get: {:?}",
            still.iter().map(|(w, _)| *w).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Finds the cross toolchain: the active rustup toolchain if it has `rust-src`, else Debian's
/// `rustc-web` with `rust-web-src`.
///
/// # Errors
/// When neither is usable (run [`ensure_installed`] first).
pub fn find() -> Result<Toolchain> {
    let linker = find_linker().context("lld-link not found (apt-get install lld-14)")?;
    if let Some(rustc) = which("rustc")
        && let Some(sysroot) = sysroot_of(&rustc)
        && library_source(&sysroot)
    {
        return Ok(Toolchain {
            cargo: which("cargo").context("cargo not on PATH")?,
            clippy: which("cargo-clippy").context("cargo-clippy not on PATH")?,
            description: format!("rustup toolchain at {} (rust-src)", sysroot.display()),
            rustc,
            linker,
        });
    }
    let rustc = PathBuf::from("/usr/bin/rustc");
    if sysroot_of(&rustc).is_some_and(|s| library_source(&s)) {
        return Ok(Toolchain {
            cargo: PathBuf::from("/usr/bin/cargo"),
            clippy: PathBuf::from("/usr/bin/cargo-clippy"),
            description: "Debian rustc-web with rust-web-src (/usr/bin/rustc)".into(),
            rustc,
            linker,
        });
    }
    bail!(
        "no Rust compiler with library source; install rust-src or Debian's rustc-web + rust-web-src"
    )
}

/// Runs a command, failing with its name when it fails.
///
/// # Errors
/// When the command cannot start or exits unsuccessfully.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
