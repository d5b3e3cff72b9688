//! The cross build: a Windows kernel image from this Linux host, against mingw-w64's headers.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    pe, scratch,
    toolchain::{self, TARGET, Toolchain},
};

/// Debug or release.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Profile {
    /// Unoptimised, with the debug assertions of the section placement macros.
    Debug,
    /// LTO, size-optimised: the image users install.
    Release,
}

impl Profile {
    const fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// The workspace root.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Linker arguments of a WDM driver (what wdk-build passes to link.exe).
const DRIVER_LINK_ARGS: &[&str] = &[
    "/DRIVER",
    "/SUBSYSTEM:NATIVE",
    "/ENTRY:DriverEntry",
    "/NODEFAULTLIB",
    "/NXCOMPAT",
    "/DYNAMICBASE",
    "/OPT:REF",
    // As wdk-build passes to link.exe: the kernel loads the image only with a valid signature
    // (FORCE_INTEGRITY), so the image tested here carries the flag the users' image carries.
    "/INTEGRITYCHECK",
    // INIT code is emitted into INITX and merged into the INIT that lib.rs declares
    // discardable, so that INIT trails every other section. (Never /SECTION:INIT,D here:
    // lld-link would drop INIT's execute and read bits and move nothing.)
    "/MERGE:INITX=INIT",
    // The exception table shares the resident read-only page of `.rdata` (both are read-only
    // data, not paged): one page less. The kernel finds the table through the exception
    // directory of the optional header, never by a section name (the WRK's
    // MiCaptureImageExceptionValues records that directory at load, RtlLookupFunctionTable
    // hands it to RtlLookupFunctionEntry, which binary-searches it for exception dispatch and
    // stack walks alike, at its caller's IRQL, DISPATCH_LEVEL included), and lld-link points
    // the directory at the merged table and sorts it. `.rdata` is resident, so the table stays
    // readable at any IRQL. check-pe checks the image for all of this.
    "/MERGE:.pdata=.rdata",
];

/// A `cargo` command for the Windows kernel target with the cross toolchain.
pub fn kernel_cargo(tool: &Toolchain, program: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(program);
    let rustflags: Vec<String> =
        DRIVER_LINK_ARGS.iter().map(|a| format!("-Clink-arg={a}")).collect();
    command
        .current_dir(root())
        .arg(subcommand)
        .args([
            "--target",
            TARGET,
            "-Zbuild-std=core,alloc,compiler_builtins",
            "--no-default-features",
            "--features",
            "mingw-ddk",
        ])
        .env("RUSTC", &tool.rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_MSVC_LINKER", &tool.linker)
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_MSVC_RUSTFLAGS", rustflags.join(" "))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    command
}

/// Cross-builds `package` (a driver crate of this workspace, with `features` on top of
/// `mingw-ddk`), fixes up its image and returns the path of the `.sys`.
///
/// # Errors
/// When the toolchain is missing or the build fails.
pub fn build_driver(package: &str, features: &[&str], profile: Profile) -> Result<PathBuf> {
    // Variants (features) build in a target directory of their own, so that they neither
    // overwrite the product image nor make cargo rebuild it.
    // The test bed's fixture driver shares one such directory across its variants: it is
    // never shipped, and one build of the standard library serves them all.
    let target_dir = if features.is_empty() {
        root().join("target")
    } else if package == "testbed-fixtures" {
        root().join("target").join("variants").join(package)
    } else {
        root().join("target").join("variants").join(features.join("+"))
    };
    build_driver_in(&root(), &target_dir, package, features, profile)
}

/// Cross-builds `package` from a copy of the workspace with `patch` (a unified diff against
/// the workspace, `a/` and `b/` prefixes) applied: a deliberately broken variant of the driver.
/// The variants share one target directory under `target/variants` (one build of the standard
/// library serves them all) and build one at a time; each image is copied out under its
/// patch's name.
///
/// # Errors
/// When the patch does not apply, or the build fails.
pub fn build_patched(package: &str, patch: &Path, profile: Profile) -> Result<PathBuf> {
    let name = patch.file_stem().and_then(|s| s.to_str()).context("the patch's file name")?;
    let dir = root().join("target").join("variants").join("patched");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join("lock"))?;
    // Two tests may ask for variants at once: one syncs, patches and builds at a time.
    lock.lock().context("locking the variants' directory")?;
    let copy = scratch::Workspace::sync(&root(), &dir.join("source"))?;
    copy.apply(patch, 1, None)?;
    let built = build_driver_in(copy.root(), &dir, package, &[], profile)?;
    let image = dir.join(format!("{package}-{name}-{}.sys", profile.dir()));
    // Renamed into place, as `build_driver_in` does, for readers of an older copy.
    let partial = image.with_extension(format!("sys.{}", std::process::id()));
    std::fs::copy(&built, &partial)?;
    std::fs::rename(&partial, &image)?;
    Ok(image)
}

/// Cross-builds `package` of the workspace at `source` into `target_dir`, fixes up its image
/// and returns the path of the `.sys`.
///
/// # Errors
/// When the toolchain is missing or the build fails.
pub fn build_driver_in(
    source: &Path,
    target_dir: &Path,
    package: &str,
    features: &[&str],
    profile: Profile,
) -> Result<PathBuf> {
    let mut command = kernel_build(source, target_dir, package, features, profile)?;
    eprintln!("cross-building {package} ({profile:?}) from {}", source.display());
    toolchain::run(&mut command)?;
    fix_up_image(target_dir, package, profile)
}

/// The `cargo build` of `package` of the workspace at `source` into `target_dir`, for the
/// kernel target (see [`fix_up_image`] for what follows it).
///
/// # Errors
/// When the toolchain is missing.
pub fn kernel_build(
    source: &Path,
    target_dir: &Path,
    package: &str,
    features: &[&str],
    profile: Profile,
) -> Result<Command> {
    toolchain::ensure_installed()?;
    let tool = toolchain::find()?;
    let mut command = kernel_cargo(&tool, &tool.cargo, "build");
    command.current_dir(source).args(["--package", package]);
    for feature in features {
        command.args(["--features", feature]);
    }
    if profile == Profile::Release {
        command.arg("--release");
    }
    // One object per compiler_builtins function, as the standard library's own build does:
    // otherwise pulling in one builtin drags its neighbours along, with references to
    // routines no kernel exports (`fma`).
    let name = if profile == Profile::Release { "release" } else { "dev" };
    command.args([
        "--config",
        &format!("profile.{name}.package.compiler_builtins.codegen-units=10000"),
    ]);
    command.env("CARGO_TARGET_DIR", target_dir);
    Ok(command)
}

/// Makes the kernel image of `package` that cargo linked into `target_dir` a driver image
/// (`pe::fix_up`), as `pagelock.sys` beside it; returns its path.
///
/// # Errors
/// When the linked image is missing or cannot be fixed up.
pub fn fix_up_image(target_dir: &Path, package: &str, profile: Profile) -> Result<PathBuf> {
    let dir = target_dir.join(TARGET).join(profile.dir());
    let library = package.replace('-', "_");
    let dll = dir.join(format!("{library}.dll"));
    let sys = dir.join(format!("{package}.sys"));
    // Fixed up in a file of its own, then renamed into place: whoever reads the image at the
    // same time (another build's test, a long fuzz run) sees the old image or the new, whole.
    let partial = dir.join(format!("{package}.sys.{}", std::process::id()));
    std::fs::copy(&dll, &partial)
        .with_context(|| format!("copying {} to {}", dll.display(), partial.display()))?;
    pe::fix_up(&partial)?;
    std::fs::rename(&partial, &sys)
        .with_context(|| format!("renaming {} to {}", partial.display(), sys.display()))?;
    Ok(sys)
}

/// Lints the driver for the Windows target with warnings denied.
///
/// # Errors
/// When clippy reports anything.
pub fn clippy_driver() -> Result<()> {
    toolchain::ensure_installed()?;
    let tool = toolchain::find()?;
    let mut command = kernel_cargo(&tool, &tool.clippy, "clippy");
    command.args([
        "--package",
        "pagelock",
        "--package",
        "testbed-fixtures",
        "--",
        "-D",
        "warnings",
    ]);
    toolchain::run(&mut command)
}

/// The test app's Windows builds keep their own artifacts: the driver's use other flags.
const APP_TARGET_DIR: &str = "target/app-windows";

/// A `cargo` command building the Windows test app with the cross toolchain.
fn app_cargo(tool: &Toolchain, program: &Path, subcommand: &str, target: &str) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(root())
        .arg(subcommand)
        .args(["--package", "pagelock-test", "--target", target, "-Zbuild-std=std,panic_abort"])
        .env("RUSTC", &tool.rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root().join(APP_TARGET_DIR))
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", "x86_64-w64-mingw32-gcc")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    command
}

/// Type-checks and lints the test app for the MSVC target (clippy runs the check).
///
/// # Errors
/// When clippy reports anything.
pub fn clippy_app() -> Result<()> {
    toolchain::ensure_installed()?;
    let tool = toolchain::find()?;
    toolchain::run(
        app_cargo(&tool, &tool.clippy, "clippy", "x86_64-pc-windows-msvc")
            .args(["--", "-D", "warnings"]),
    )
}

/// Links the test app for the GNU target with mingw-w64.
///
/// # Errors
/// When the build or the link fails.
pub fn link_app() -> Result<()> {
    toolchain::ensure_installed()?;
    let tool = toolchain::find()?;
    toolchain::run(&mut app_cargo(&tool, &tool.cargo, "build", "x86_64-pc-windows-gnu"))
}
