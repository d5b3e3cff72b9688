//! Finding (or installing) what the builds need.
//!
//! Every prerequisite is checked by the file the step that needs it really opens, not by a
//! neighbour of that file: libclang is found by asking clang-sys (the crate bindgen loads it
//! through) to load it, the kernel target's library source by the `Cargo.lock` that
//! `-Zbuild-std` reads, the linkers by the executables cargo runs. Each one names the Debian
//! package that provides its file, so that what is missing can be installed (as root on Debian or
//! Ubuntu) or the exact command printed.

use std::{
    env, fmt,
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

/// How a missing prerequisite is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Debian packages (space-separated) that provide the file.
    Apt(&'static str),
    /// Components of the active rustup toolchain.
    Rustup(&'static str),
    /// Nothing xtask can install: it comes with the machine.
    Machine(&'static str),
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Apt(packages) => write!(f, "Debian: {packages}"),
            Self::Rustup(components) => write!(f, "rustup component add {components}"),
            Self::Machine(what) => write!(f, "{what}"),
        }
    }
}

/// One thing a build step opens or runs, and where it was found.
#[derive(Debug)]
pub struct Prerequisite {
    /// What it is and which step uses it.
    pub what: &'static str,
    /// What provides it.
    pub provider: Provider,
    /// The file found, or why none was.
    pub found: Result<PathBuf, String>,
}

fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn existing(path: impl Into<PathBuf>) -> Result<PathBuf, String> {
    let path = path.into();
    if path.is_file() { Ok(path) } else { Err(format!("no {}", path.display())) }
}

fn on_path(names: &[&str]) -> Result<PathBuf, String> {
    names.iter().find_map(|n| which(n)).ok_or_else(|| format!("no {} on PATH", names.join(" or ")))
}

fn sysroot_of(rustc: &Path) -> Option<PathBuf> {
    let out = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The file `-Zbuild-std` reads first: the standard library workspace's lock file.
fn library_lock(sysroot: &Path) -> PathBuf {
    sysroot.join("lib/rustlib/src/rust/library/Cargo.lock")
}

/// Debian's compiler with library source (rustc-web and rust-web-src), used when the rustup
/// toolchain has no `rust-src`.
const DEBIAN_SYSROOT: &str = "/usr";

/// The active rustup toolchain's sysroot, if it has `rust-src`.
fn rustup_with_source() -> Option<PathBuf> {
    let sysroot = sysroot_of(&which("rustc")?)?;
    library_lock(&sysroot).is_file().then_some(sysroot)
}

#[path = "../../ddk/libclang.rs"]
pub mod libclang;

pub use libclang::resource_dir;

/// Where Debian's `mingw-w64-x86-64-dev` installs the headers the `ddk` build script reads.
pub const MINGW_DDK: &str = "/usr/share/mingw-w64/include/ddk/ntddk.h";
/// An import library the test app links against (also from `mingw-w64-x86-64-dev`).
const MINGW_KERNEL32: &str = "/usr/x86_64-w64-mingw32/lib/libkernel32.a";

/// Every prerequisite, checked now.
#[must_use]
pub fn survey() -> Vec<Prerequisite> {
    let mut all = Vec::new();
    let mut add = |what, provider, found| all.push(Prerequisite { what, provider, found });

    let host = which("rustc").and_then(|r| sysroot_of(&r));
    let host_tool = |name: &str| {
        host.as_ref()
            .map_or_else(|| Err("no rustc on PATH".into()), |s| existing(s.join("bin").join(name)))
    };
    add("rustfmt (format check)", Provider::Rustup("rustfmt"), host_tool("rustfmt"));
    add("clippy (host lints)", Provider::Rustup("clippy"), host_tool("clippy-driver"));
    add(
        "host C linker (builds xtask itself)",
        Provider::Machine("gcc, libc6-dev"),
        on_path(&["cc"]),
    );

    if let Some(sysroot) = rustup_with_source() {
        add(
            "library source for -Zbuild-std (rustup rust-src)",
            Provider::Rustup("rust-src"),
            Ok(library_lock(&sysroot)),
        );
    } else {
        let usr = Path::new(DEBIAN_SYSROOT);
        add(
            "rustc for the kernel target",
            Provider::Apt("rustc-web"),
            existing(usr.join("bin/rustc")),
        );
        add(
            "cargo for the kernel target",
            Provider::Apt("cargo-web"),
            existing(usr.join("bin/cargo")),
        );
        add(
            "library source for -Zbuild-std",
            Provider::Apt("rust-web-src"),
            existing(library_lock(usr)),
        );
        add(
            "clippy for the kernel target",
            Provider::Apt("rust-web-clippy"),
            existing(usr.join("bin/clippy-driver")),
        );
    }
    add("lld-link (links the driver)", Provider::Apt("lld-14"), find_linker());
    let library = libclang::library();
    let resources = library.as_ref().map_or_else(
        |_| Err("no libclang to look beside".into()),
        |library| resource_dir(library, libclang::llvm_prefix().as_deref()),
    );
    add("libclang (bindgen loads it)", Provider::Apt("libclang1-14"), library);
    add(
        "clang's resource headers (bindgen includes them)",
        Provider::Apt("libclang-common-14-dev"),
        resources,
    );
    add(
        "mingw-w64 DDK headers (bindgen reads them)",
        Provider::Apt("mingw-w64-x86-64-dev"),
        existing(MINGW_DDK),
    );
    add(
        "mingw-w64 import libraries (test app)",
        Provider::Apt("mingw-w64-x86-64-dev"),
        existing(MINGW_KERNEL32),
    );
    add(
        "patch (applies tests/defects and the mutants to a copy of the source)",
        Provider::Apt("patch"),
        on_path(&["patch"]),
    );
    add(
        "x86_64-w64-mingw32-gcc (links the test app)",
        Provider::Apt("gcc-mingw-w64-x86-64"),
        on_path(&["x86_64-w64-mingw32-gcc"]),
    );
    add(
        "wine64 (runs the test app and the driver: cargo xtask wine)",
        Provider::Apt("wine64"),
        existing(crate::wine::WINE64),
    );
    add(
        "wineserver64 (the Wine lane's server)",
        Provider::Apt("wine64"),
        existing(crate::wine::WINESERVER64),
    );
    add(
        "Wine's ntoskrnl.exe (the Wine lane's kernel shim forwards to it)",
        Provider::Apt("libwine"),
        existing(Path::new(crate::wine::WINE_DLLS).join("ntoskrnl.exe")),
    );
    all
}

fn find_linker() -> Result<PathBuf, String> {
    on_path(&["lld-link", "lld-link-14", "lld-link-15", "lld-link-16"])
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

fn unique<'a>(words: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for word in words {
        if !out.contains(&word) {
            out.push(word);
        }
    }
    out
}

/// Makes sure everything is installed (checked once per process): installs what is missing (apt-get when running as root
/// on Debian or Ubuntu, rustup components) and otherwise fails with the exact command to run.
///
/// # Errors
/// When something is missing and cannot be installed here.
pub fn ensure_installed() -> Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    install_missing()?;
    DONE.get_or_init(|| ());
    Ok(())
}

fn install_missing() -> Result<()> {
    let absent: Vec<Prerequisite> = survey().into_iter().filter(|p| p.found.is_err()).collect();
    if absent.is_empty() {
        return Ok(());
    }
    let of = |pick: fn(&Provider) -> Option<&'static str>| {
        unique(absent.iter().filter_map(|p| pick(&p.provider)).flat_map(str::split_whitespace))
    };
    let packages = of(|p| if let Provider::Apt(s) = p { Some(s) } else { None });
    let components = of(|p| if let Provider::Rustup(s) = p { Some(s) } else { None });
    let machine = of(|p| if let Provider::Machine(s) = p { Some(s) } else { None });
    let what: Vec<&str> = absent.iter().map(|p| p.what).collect();
    if !machine.is_empty() {
        bail!(
            "missing: {}; install {} with the system's package manager",
            what.join(", "),
            machine.join(" ")
        );
    }
    let apt = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    if !(packages.is_empty() || is_root() && is_debian_like()) {
        bail!("missing: {}\ninstall with: sudo apt-get update && sudo {apt}", what.join(", "));
    }
    eprintln!("installing: {}", what.join(", "));
    if !components.is_empty() {
        run(Command::new("rustup").args(["component", "add"]).args(&components))?;
    }
    if !packages.is_empty() {
        eprintln!("  {apt}");
        run(Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let still: Vec<String> = survey()
        .into_iter()
        .filter_map(|p| p.found.err().map(|why| format!("{} ({why})", p.what)))
        .collect();
    if !still.is_empty() {
        bail!("still missing after installing: {}", still.join("; "));
    }
    Ok(())
}

/// Finds the cross toolchain: the active rustup toolchain if it has `rust-src`, else Debian's
/// `rustc-web` with `rust-web-src`.
///
/// # Errors
/// When neither is usable (run [`ensure_installed`] first).
pub fn find() -> Result<Toolchain> {
    let linker =
        find_linker().map_err(anyhow::Error::msg).context("lld-link (apt-get install lld-14)")?;
    if let Some(sysroot) = rustup_with_source() {
        return Ok(Toolchain {
            cargo: which("cargo").context("cargo not on PATH")?,
            rustc: which("rustc").context("rustc not on PATH")?,
            clippy: which("cargo-clippy").context("cargo-clippy not on PATH")?,
            description: format!("rustup toolchain at {} (rust-src)", sysroot.display()),
            linker,
        });
    }
    let usr = Path::new(DEBIAN_SYSROOT);
    if library_lock(usr).is_file() {
        return Ok(Toolchain {
            cargo: usr.join("bin/cargo"),
            rustc: usr.join("bin/rustc"),
            clippy: usr.join("bin/cargo-clippy"),
            description: "Debian rustc-web with rust-web-src (/usr/bin/rustc)".into(),
            linker,
        });
    }
    bail!(
        "no Rust compiler with library source; install rust-src or Debian's rustc-web + rust-web-src"
    )
}

/// One line per prerequisite (where it was found, or what provides it) and one for the cross
/// toolchain: what `run` and `test` print before they start.
#[must_use]
pub fn summary() -> Vec<String> {
    let mut lines: Vec<String> = survey()
        .iter()
        .map(|p| match &p.found {
            Ok(path) => format!("{}: {}", p.what, path.display()),
            Err(why) => format!("{}: MISSING ({why}; {})", p.what, p.provider),
        })
        .collect();
    lines.push(match find() {
        Ok(tool) => {
            format!("cross toolchain: {}, linker {}", tool.description, tool.linker.display())
        }
        Err(e) => format!("cross toolchain: none yet ({e:#})"),
    });
    lines
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("directories");
            std::fs::write(&path, b"").expect("a file");
        }
        dir
    }

    #[test]
    fn resource_headers_beside_the_library_are_found() {
        let dir = tree(&["lib/libclang.so.1", "lib/clang/14.0.6/include/mm_malloc.h"]);
        let found = resource_dir(&dir.path().join("lib/libclang.so.1"), None);
        assert_eq!(found, Ok(dir.path().join("lib/clang/14.0.6")));
    }

    #[test]
    fn resource_headers_under_the_llvm_prefix_are_found() {
        let dir =
            tree(&["multiarch/libclang-14.so.1", "llvm-14/lib/clang/14.0.6/include/mm_malloc.h"]);
        let library = dir.path().join("multiarch/libclang-14.so.1");
        let found = resource_dir(&library, Some(&dir.path().join("llvm-14")));
        assert_eq!(found, Ok(dir.path().join("llvm-14/lib/clang/14.0.6")));
    }

    #[test]
    fn a_resource_directory_without_its_headers_is_missing() {
        // The directory Debian's libclang-cpp leaves behind holds no headers.
        let dir = tree(&["lib/libclang.so.1", "lib/clang/14.0.6/lib/linux/empty"]);
        let found = resource_dir(&dir.path().join("lib/libclang.so.1"), None);
        assert!(found.is_err_and(|why| why.contains("include/mm_malloc.h")));
    }
}
