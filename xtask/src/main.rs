//! pagelock's build tool, run as `cargo xtask <command>`.
//!
//! - `build [--debug]`: cross-builds pagelock.sys (on Windows: the official `cargo make` flow).
//! - `check-pe <file.sys>`: structural and HVCI checks and the footprint of a kernel image.
//! - `check-wdk [--source DIR]`: the official `wdk` path type-checked and linted on this host.
//! - `test`: every check the project has, in one command.
//! - `run`: the main job.
//! - `doctor`: every prerequisite, where it was found or what provides it.
//! - `wine`: the Windows test app drives the driver through Wine (also a step of `test`).
//! - `mutants [--file PATH] [--shard K/N] [--sample N --seed S]`: the mutation run.

#![forbid(unsafe_code)]

mod check_wdk;
mod cross;
mod inf;
mod layout;
mod mutants;
mod pe;
mod ps1;
mod reliability;
mod routines;
mod scratch;
mod toolchain;
mod wine;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::cross::Profile;

#[derive(Parser)]
#[command(about = "Build, check and test the pagelock driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build pagelock.sys and print its path.
    Build {
        /// Build the debug image (assertions on) instead of the release image.
        #[arg(long)]
        debug: bool,
    },
    /// Cross-build another driver crate of this workspace (test fixtures) and print its path.
    BuildDriver {
        /// The package.
        #[arg(long)]
        package: String,
        /// Cargo features to enable (repeatable).
        #[arg(long)]
        features: Vec<String>,
        /// A unified diff (`a/`, `b/` prefixes) applied to a copy of the workspace first: a
        /// deliberately broken variant, such as those of `tests/defects`.
        #[arg(long, conflicts_with = "features")]
        patch: Option<PathBuf>,
        /// Build the debug image.
        #[arg(long)]
        debug: bool,
    },
    /// Check a kernel image's structure and HVCI's rules, and print its footprint.
    CheckPe {
        /// The image to check.
        file: PathBuf,
        /// Also enforce pagelock's footprint budget.
        #[arg(long)]
        budget: bool,
    },
    /// Type-check and lint the official `wdk` path (wdk-sys, wdk-build) on this host, against
    /// mingw-w64's headers: debug and release, warnings denied.
    CheckWdk {
        /// The driver's workspace to check (a scratch copy of it, say); the project's own by
        /// default.
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Run every check: format, lints, unit tests, the cross build and its checks.
    Test,
    /// The import graph of a crate's modules (default: the test bed's) and its cycles; fails
    /// on any cycle.
    CheckLayout {
        /// The crate's source directory.
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Every prerequisite of the builds and tests: where it was found, or the package that
    /// provides it; and which toolchain the cross build will use. Installs nothing.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The main job: build pagelock.sys, check it, and run its scenario suite on the test bed.
    Run,
    /// The long reliability run: fuzz for S seconds, the fault-injection sweep and the
    /// concurrency run; writes docs/reliability.json and the README's "Reliability" figures.
    Fuzz {
        /// How long the fuzzer runs.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// The fuzzer's seed.
        #[arg(long, default_value_t = 20_261_123)]
        seed: u64,
        /// Emulated CPUs sending the fuzzer's parallel steps.
        #[arg(long, default_value_t = 4)]
        threads: u16,
        /// Take the fuzzer's figures from this JSON output of `pagelock-testbed fuzz --json`
        /// instead of running it again.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// How much of the driver the tests pin down: every one-token change of `src/`
    /// (cargo-mutants' listing) tried against the host unit tests, then the test bed; one line
    /// per mutant and a summary; exit status 1 when one is missed.
    Mutants {
        #[command(flatten)]
        selection: mutants::Selection,
        /// Write the figures into the README (a full run only).
        #[arg(long)]
        readme: bool,
    },
    /// The Windows test app drives the real driver through Wine: its commands in order, each
    /// with its expected exit status and output, then a negative control that must fail.
    Wine {
        /// Run the lane under a kernel shim that answers IRQL 0 everywhere, which must make
        /// the lane fail (a check of the lane itself).
        #[arg(long)]
        broken_irql: bool,
    },
}

fn build(debug: bool) -> Result<PathBuf> {
    if cfg!(windows) {
        let mut make = std::process::Command::new("cargo");
        make.arg("make").current_dir(cross::root());
        if !debug {
            make.args(["default", "--release"]);
        }
        toolchain::run(&mut make)?;
        let dir = if debug { "debug" } else { "release" };
        return Ok(cross::root().join("target").join(dir).join("pagelock.sys"));
    }
    cross::build_driver("pagelock", &[], if debug { Profile::Debug } else { Profile::Release })
}

fn check_pe(file: &std::path::Path, budget: bool) -> Result<bool> {
    let report = pe::check(file, budget.then_some(pe::PAGELOCK_BUDGET))?;
    println!("{}\n{}", file.display(), report.render());
    Ok(report.passed())
}

fn host_cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    toolchain::run(std::process::Command::new(cargo).args(args).current_dir(cross::root()))
}

/// The images the test bed's tests run, built once: (environment variable, the deliberate
/// defect of `tests/defects/<name>.diff` applied to a copy of the source, debug).
const IMAGES: &[(&str, Option<&str>, bool)] = &[
    ("PAGELOCK_SYS", None, false),
    ("PAGELOCK_SYS_DEBUG", None, true),
    ("PAGELOCK_SYS_DEFECT_LOST_UNLOCK", Some("lost-unlock"), false),
    ("PAGELOCK_SYS_DEFECT_UNLOCKED_RUN", Some("unlocked-run"), false),
    ("PAGELOCK_SYS_DEBUG_DEFECT_UNLOCKED_RUN", Some("unlocked-run"), true),
    ("PAGELOCK_SYS_DEFECT_UNSYNCHRONIZED_OPEN", Some("unsynchronized-open"), false),
    ("PAGELOCK_SYS_DEFECT_UNLOCK_BEFORE_DRAIN", Some("unlock-before-drain"), false),
    ("PAGELOCK_SYS_DEFECT_UNLOAD_WITHOUT_RUNDOWN_WAIT", Some("unload-without-rundown-wait"), false),
    ("PAGELOCK_SYS_DEFECT_PAGED_RUNDOWN_RELEASE", Some("paged-rundown-release"), false),
];

/// How many mutants `cargo xtask test` tries, and the seed that draws them: about two minutes
/// warm on two cores.
const MUTANTS_SAMPLE: usize = 10;
const MUTANTS_SEED: u64 = 20_261_207;

/// The deliberately broken variant `name` of pagelock (`tests/defects/<name>.diff`).
fn defect_patch(name: &str) -> PathBuf {
    cross::root().join("tests").join("defects").join(format!("{name}.diff"))
}

/// The test bed's fixture driver: its package, and the feature that is its binding source
/// rather than a defect.
const FIXTURE_PACKAGE: &str = "testbed-fixtures";
const FIXTURE_BINDINGS: &str = "mingw-ddk";

/// The fixture variants to build: `correct`, then one per defect feature of the fixture
/// crate, read from `cargo metadata` so that the list lives in its Cargo.toml only.
fn fixture_variants() -> Result<Vec<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(cross::root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata's JSON")?;
    let features = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == FIXTURE_PACKAGE))
        .and_then(|package| package["features"].as_object())
        .with_context(|| format!("the features of {FIXTURE_PACKAGE} in cargo metadata"))?;
    let defects = features.keys().filter(|f| *f != FIXTURE_BINDINGS && *f != "default").cloned();
    Ok(std::iter::once("correct".to_owned()).chain(defects).collect())
}

/// Installs what is missing, then prints where each prerequisite was found, one line each.
fn prerequisites() -> Result<()> {
    toolchain::ensure_installed()?;
    for line in toolchain::summary() {
        eprintln!("    {line}");
    }
    Ok(())
}

fn doctor(json: bool) -> bool {
    let all = toolchain::survey();
    let ready = all.iter().all(|p| p.found.is_ok());
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                serde_json::json!({
                    "what": p.what,
                    "provider": p.provider.to_string(),
                    "found": p.found.as_ref().ok().map(|f| f.display().to_string()),
                    "missing": p.found.as_ref().err(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "ready": ready, "prerequisites": rows }));
        return ready;
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(["prerequisite", "found", "provided by"]);
    for p in &all {
        let found = match &p.found {
            Ok(path) => path.display().to_string(),
            Err(why) => format!("MISSING: {why}"),
        };
        table.add_row([p.what.to_string(), found, p.provider.to_string()]);
    }
    println!("{table}");
    match toolchain::find() {
        Ok(tool) => {
            println!("cross toolchain: {}, linker {}", tool.description, tool.linker.display());
        }
        Err(e) => println!("cross toolchain: none yet ({e:#})"),
    }
    if !ready {
        println!(
            "`cargo xtask run` and `cargo xtask test` install what is missing (as root on Debian or Ubuntu)."
        );
    }
    ready
}

fn test() -> Result<()> {
    let start = std::time::Instant::now();
    step("prerequisites", prerequisites)?;
    step("rustfmt", || host_cargo(&["fmt", "--all", "--check"]))?;
    step("the test bed's modules import one another without a cycle (check-layout)", || {
        if check_layout(None)? { Ok(()) } else { bail!("import cycles in the test bed") }
    })?;
    step("clippy (host crates)", || {
        host_cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
    })?;
    step("rustdoc (windows-drivers-rs's lint set, warnings denied)", || {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        toolchain::run(
            std::process::Command::new(cargo)
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings")
                .current_dir(cross::root()),
        )
    })?;
    step("clippy (kernel code, x86_64-pc-windows-msvc)", cross::clippy_driver)?;
    if !cfg!(windows) {
        // On Windows the build below is the `wdk` path itself.
        step("the official wdk path: type-check and clippy (check-wdk)", || {
            check_wdk::run(&cross::root())
        })?;
    }
    step("test app: type-check and clippy (x86_64-pc-windows-msvc)", cross::clippy_app)?;
    step("test app: link (x86_64-pc-windows-gnu)", cross::link_app)?;
    step("the INF template: one file for both Windows flows, both InfVerif modes", check_inf)?;
    step("the VM scripts parse (scripts/*.ps1, tree-sitter's PowerShell grammar)", || {
        let problems = ps1::check(&cross::root().join("scripts"))?;
        if problems.is_empty() { Ok(()) } else { bail!("{}", problems.join("\n")) }
    })?;
    let sys = step("cross build (release)", || build(false))?;
    step("check-pe with the footprint budget", || {
        if check_pe(&sys, true)? { Ok(()) } else { bail!("check-pe failed on {}", sys.display()) }
    })?;
    let debug = step("cross build (debug)", || build(true))?;
    step("check-pe (debug image)", || {
        if check_pe(&debug, false)? {
            Ok(())
        } else {
            bail!("check-pe failed on {}", debug.display())
        }
    })?;
    let mut images = Vec::new();
    for (variable, defect, debug) in IMAGES {
        let profile = if *debug { Profile::Debug } else { Profile::Release };
        let path = step(&format!("image for the test bed: {variable}"), || {
            defect.map_or_else(
                || cross::build_driver("pagelock", &[], profile),
                |name| cross::build_patched("pagelock", &defect_patch(name), profile),
            )
        })?;
        images.push((*variable, path));
    }
    let fixtures = cross::root().join("target/testbed-fixtures");
    step("fixture images for the test bed", || {
        std::fs::create_dir_all(&fixtures)?;
        for name in fixture_variants()? {
            let features: &[&str] = if name == "correct" { &[] } else { &[name.as_str()] };
            let path = cross::build_driver(FIXTURE_PACKAGE, features, Profile::Release)?;
            std::fs::copy(&path, fixtures.join(format!("{name}.sys")))?;
        }
        Ok(())
    })?;
    step("unit and integration tests (host, test bed included)", || {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.args(["test", "--workspace"]).current_dir(cross::root());
        for (variable, path) in &images {
            command.env(variable, path);
        }
        command.env("TESTBED_FIXTURES_DIR", &fixtures);
        toolchain::run(&mut command)
    })?;
    step("pagelock's scenario suite on the test bed", || run_on_bed(&sys))?;
    step("a seeded sample of the driver's mutants, each caught (cargo xtask mutants)", || {
        let sample = mutants::Selection::sample(MUTANTS_SAMPLE, MUTANTS_SEED);
        if mutants::run(&sample, false)? {
            Ok(())
        } else {
            bail!("a mutant of the sample was missed, or tests/mutants/equivalent.toml is stale")
        }
    })?;
    step("the test app drives the driver through Wine (cargo xtask wine)", || {
        if wine::run(false)? { Ok(()) } else { bail!("the Wine lane failed") }
    })?;
    println!("xtask test: all steps passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The INF template both Windows flows read (`<package>.inx`, see `inf::template`), checked
/// against the primitive-driver rules in the `InfVerif` mode of each flow.
fn check_inf() -> Result<()> {
    let (path, mut problems) = inf::template::check(&cross::root())?;
    if problems.is_empty() {
        let text = std::fs::read_to_string(&path)?;
        for mode in inf::Mode::ALL {
            let found = inf::check(&text, mode);
            eprintln!("    InfVerif {} ({}): {} problem(s)", mode.flag(), mode.flow(), found.len());
            problems.extend(found.into_iter().map(|p| format!("{} {p}", mode.flag())));
        }
    }
    if problems.is_empty() { Ok(()) } else { bail!("{}:\n{}", path.display(), problems.join("\n")) }
}

/// The main job: build pagelock.sys, check it against the budget, run its scenario suite on
/// the test bed.
fn main_job() -> Result<bool> {
    let start = std::time::Instant::now();
    step("prerequisites", prerequisites)?;
    let sys = step("cross build (release)", || build(false))?;
    let passed = step("check-pe with the footprint budget", || check_pe(&sys, true))?;
    step("pagelock's scenario suite on the test bed", || run_on_bed(&sys))?;
    let verdict = if passed { "done" } else { "check-pe FAILED" };
    eprintln!("xtask run: {verdict} in {:.0} s", start.elapsed().as_secs_f64());
    Ok(passed)
}

/// Runs the scenario suite against `sys` on the test bed and prints its report.
fn run_on_bed(sys: &std::path::Path) -> Result<()> {
    let path = sys.to_str().context("a UTF-8 path")?;
    host_cargo(&["run", "--quiet", "--package", "pagelock-testbed", "--", "run", path])
}

/// Prints the import graph's report for `source` (default: the test bed's sources); whether it
/// has no cycle.
fn check_layout(source: Option<std::path::PathBuf>) -> Result<bool> {
    let source = source.unwrap_or_else(|| cross::root().join("tests/testbed/src"));
    let (report, clean) = layout::check(&source)?;
    print!("{report}");
    Ok(clean)
}

fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("==> {name}");
    let start = std::time::Instant::now();
    let result = f().map_err(|e| e.context(format!("step failed: {name}")));
    eprintln!("    {name}: {:.1} s", start.elapsed().as_secs_f64());
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { debug } => build(debug).map(|path| {
            println!("{}", path.display());
            true
        }),
        Command::BuildDriver { package, features, patch, debug } => {
            let features: Vec<&str> = features.iter().map(String::as_str).collect();
            let profile = if debug { Profile::Debug } else { Profile::Release };
            let built = patch.map_or_else(
                || cross::build_driver(&package, &features, profile),
                |patch| cross::build_patched(&package, &patch, profile),
            );
            built.map(|path| {
                println!("{}", path.display());
                true
            })
        }
        Command::CheckPe { file, budget } => check_pe(&file, budget),
        Command::CheckWdk { source } => {
            check_wdk::run(&source.unwrap_or_else(cross::root)).map(|()| true)
        }
        Command::Test => test().map(|()| true),
        Command::Fuzz { seconds, seed, threads, from } => build(false)
            .and_then(|sys| reliability::run(&sys, seconds, seed, threads, from.as_deref())),
        Command::Doctor { json } => Ok(doctor(json)),
        Command::CheckLayout { source } => check_layout(source),
        Command::Wine { broken_irql } => wine::run(broken_irql),
        Command::Mutants { selection, readme } => mutants::run(&selection, readme),
        Command::Run => main_job(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
