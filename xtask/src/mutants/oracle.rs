//! The steps that try a mutant, cheapest first, on a scratch copy of the workspace.

use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pagelock_protocol::{
    IOCTL_LOCK, IOCTL_QUERY_STATE, IOCTL_RUN_LOCKED, IOCTL_UNLOCK, IOCTL_WAIT, RunRequest,
    WaitReply, WaitRequest, zerocopy::IntoBytes as _,
};

use super::{Mutant, Verdict};
use crate::{
    cross::{self, Profile},
    pe, scratch,
};

/// The cargo-mutants release whose listing and diffs this reads (installed if missing).
pub const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// Installs cargo-mutants at [`CARGO_MUTANTS_VERSION`] unless `cargo mutants` is that one.
///
/// # Errors
/// When `cargo install` fails.
pub fn ensure_cargo_mutants() -> Result<()> {
    let version = Command::new("cargo").args(["mutants", "--version"]).output();
    if version.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).trim().ends_with(CARGO_MUTANTS_VERSION)
    }) {
        return Ok(());
    }
    eprintln!("installing cargo-mutants {CARGO_MUTANTS_VERSION}");
    crate::toolchain::run(Command::new("cargo").args([
        "install",
        "cargo-mutants",
        "--locked",
        "--version",
        CARGO_MUTANTS_VERSION,
    ]))
}

/// A run of a program that ended by itself or was stopped at its time limit.
enum Ended {
    Passed,
    Failed,
    TimedOut,
}

/// Runs `command` in a process group of its own, its output appended to `log`; kills the group
/// at `limit` (a mutant may loop forever, in the test or in the driver the bed runs).
fn run_limited(command: &mut Command, log: &Path, limit: Duration) -> Result<Ended> {
    let out = File::options().create(true).append(true).open(log)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", command.get_program().display()))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(if status.success() { Ended::Passed } else { Ended::Failed });
        }
        if start.elapsed() > limit {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            return Ok(Ended::TimedOut);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The executables of `cargo test --no-run` (`args` select them) built in `dir`, as cargo
/// reports them, test harnesses first; `None` when the build fails.
fn test_executables(
    dir: &Path,
    target_dir: &Path,
    args: &[&str],
    log: &Path,
) -> Result<Option<Vec<PathBuf>>> {
    let json = log.with_extension("json");
    let out = File::create(&json)?;
    let mut command = Command::new("cargo");
    command
        .args(["test", "--no-run", "--message-format=json"])
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdout(out);
    let errors = File::options().create(true).append(true).open(log)?;
    if !command.stderr(errors).status()?.success() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&json)?;
    let mut artifacts: Vec<(bool, PathBuf)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|m| {
            let harness = m["profile"]["test"].as_bool() == Some(true);
            m["executable"].as_str().map(|e| (!harness, PathBuf::from(e)))
        })
        .collect();
    artifacts.sort();
    Ok(Some(artifacts.into_iter().map(|(_, path)| path).collect()))
}

/// The source files a test executable was compiled from (its dependency file), relative to
/// `root` (cargo writes them relative to the workspace, or absolute).
fn compiled_files(executable: &Path, root: &Path) -> Result<BTreeSet<String>> {
    let deps = executable.with_extension("d");
    let text =
        std::fs::read_to_string(&deps).with_context(|| format!("reading {}", deps.display()))?;
    let first = text.lines().next().unwrap_or_default();
    let (_, files) = first.split_once(": ").context("a dependency file's first rule")?;
    Ok(files
        .split_whitespace()
        .map(Path::new)
        .filter_map(|f| if f.is_absolute() { f.strip_prefix(root).ok() } else { Some(f) })
        .filter_map(|f| f.to_str().map(str::to_owned))
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The device the driver creates.
const DEVICE: &str = r"\Device\PageLock";

/// The scheduled run's arguments: two CPUs on one overlapped handle, a `WAIT` left pending on
/// it, each sending `LOCK`, `RUN_LOCKED`, `QUERY_STATE` and `UNLOCK`, over consecutive seeds.
fn scheduled_run(sys: &str) -> Vec<String> {
    let wait = WaitRequest::new(30_000, 0x5EED);
    let run = RunRequest::new(10, 1);
    let mut args: Vec<String> =
        ["exec", sys, "--device", DEVICE, "--threads", "2", "--shared"].map(str::to_owned).to_vec();
    args.extend(["--schedules".into(), "20".into(), "--seed".into(), "1".into()]);
    let wait_len = size_of::<WaitReply>();
    args.extend(["--pend".into(), format!("{IOCTL_WAIT:#x}:{}:{wait_len}", hex(wait.as_bytes()))]);
    for ioctl in [
        format!("{IOCTL_LOCK:#x}::8"),
        format!("{IOCTL_RUN_LOCKED:#x}:{}:16", hex(run.as_bytes())),
        format!("{IOCTL_QUERY_STATE:#x}::200"),
        format!("{IOCTL_UNLOCK:#x}::8"),
    ] {
        args.extend(["--ioctl".into(), ioctl]);
    }
    args
}

/// Everything a run needs, prepared once: the scratch copy (its directory locked for the
/// run), the host tests' baseline, the test bed's programs and the unmutated images.
pub struct Oracle {
    copy: scratch::Workspace,
    /// The variants' directory, locked while the copy carries a mutant.
    _lock: File,
    variants: PathBuf,
    host_target: PathBuf,
    host_compiled: BTreeSet<String>,
    host_limit: Duration,
    testbed: PathBuf,
    bed_tests: PathBuf,
    product_debug: PathBuf,
    logs: PathBuf,
    done: usize,
    patched: Option<PathBuf>,
}

/// The limit of a build, or of the unmutated host tests: far above what they take on two loaded
/// cores.
const BED_LIMIT: Duration = Duration::from_mins(10);

impl Oracle {
    /// Syncs the copy, builds and runs every step once on the unmutated source (each must
    /// pass, or the oracle itself is wrong).
    ///
    /// # Errors
    /// When a build fails or a step fails on the unmutated driver.
    pub fn prepare(root: &Path) -> Result<Self> {
        let variants = root.join("target/variants/patched");
        let out = root.join("target/mutants");
        let logs = out.join("logs");
        std::fs::create_dir_all(&variants)?;
        std::fs::create_dir_all(&logs)?;
        let lock = File::create(variants.join("lock"))?;
        lock.lock().context("locking the variants' directory")?;
        let copy = scratch::Workspace::sync(root, &variants.join("source"))?;
        let log = logs.join("baseline.log");
        let _ = std::fs::remove_file(&log);
        let host_target = out.join("host");
        let host = test_executables(copy.root(), &host_target, &["--package", "pagelock"], &log)?
            .context(
            "the host unit tests do not build (see target/mutants/logs/baseline.log)",
        )?;
        let [host_tests] = host.as_slice() else { bail!("one host test executable, not {host:?}") };
        let host_compiled = compiled_files(host_tests, copy.root())?;
        let start = Instant::now();
        if !matches!(run_limited(&mut Command::new(host_tests), &log, BED_LIMIT)?, Ended::Passed) {
            bail!("the host unit tests fail on the unmutated source (see {})", log.display());
        }
        let host_limit = start.elapsed() * 10 + Duration::from_secs(20);
        let bed = test_executables(
            root,
            &root.join("target"),
            &["--package", "pagelock-testbed", "--test", "pagelock_on_the_bed"],
            &log,
        )?
        .context("the test bed's tests do not build")?;
        let [bed_tests, testbed] = bed.as_slice() else {
            bail!("the bed's test and its program, not {bed:?}")
        };
        let product_debug = cross::build_driver("pagelock", &[], Profile::Debug)?;
        let oracle = Self {
            copy,
            _lock: lock,
            variants,
            host_target,
            host_compiled,
            host_limit,
            testbed: testbed.clone(),
            bed_tests: bed_tests.clone(),
            product_debug,
            logs,
            done: 0,
            patched: None,
        };
        if let Some(verdict) = oracle.bed_steps(&log)? {
            bail!("the unmutated driver is {verdict} (see {})", log.display());
        }
        Ok(oracle)
    }

    /// Applies `mutant` to the copy (undoing the last one) and tries every step on it.
    ///
    /// # Errors
    /// When the diff does not apply or a step cannot run at all.
    pub fn judge(&mut self, mutant: &Mutant) -> Result<Verdict> {
        self.done += 1;
        let log = self.logs.join(format!("{}.log", self.done));
        let diff = self.logs.join(format!("{}.diff", self.done));
        std::fs::write(&log, format!("{}\n", mutant.name))?;
        std::fs::write(&diff, &mutant.diff)?;
        if let Some(last) = self.patched.take() {
            self.copy.restore(&last)?;
        }
        let file = PathBuf::from(&mutant.file);
        self.copy.apply(&diff, 0, Some(&file))?;
        self.patched = Some(file);
        if self.host_compiled.contains(&mutant.file)
            && let Some(verdict) = self.host_step(&log)?
        {
            return Ok(verdict);
        }
        Ok(self.bed_steps(&log)?.unwrap_or(Verdict::Missed))
    }

    /// The host unit tests on the copy: `Some` verdict when they do not build or fail.
    fn host_step(&self, log: &Path) -> Result<Option<Verdict>> {
        let args = ["--package", "pagelock"];
        let Some(built) = test_executables(self.copy.root(), &self.host_target, &args, log)? else {
            return Ok(Some(Verdict::Unviable("does not build".into())));
        };
        let [tests] = built.as_slice() else { bail!("one host test executable, not {built:?}") };
        Ok(match run_limited(&mut Command::new(tests), log, self.host_limit)? {
            Ended::Passed => None,
            Ended::Failed => Some(Verdict::Caught("host tests".into())),
            Ended::TimedOut => Some(Verdict::Caught("host tests (timeout)".into())),
        })
    }

    /// The test bed's steps on the copy's release image, then on its debug image: `Some`
    /// verdict for the first that fails, or for a copy that does not build for the kernel.
    fn bed_steps(&self, log: &Path) -> Result<Option<Verdict>> {
        let build = |profile| -> Result<Option<PathBuf>> {
            let mut command =
                cross::kernel_build(self.copy.root(), &self.variants, "pagelock", &[], profile)?;
            Ok(match run_limited(&mut command, log, BED_LIMIT)? {
                Ended::Passed => Some(cross::fix_up_image(&self.variants, "pagelock", profile)?),
                Ended::Failed | Ended::TimedOut => None,
            })
        };
        let Some(release) = build(Profile::Release)? else {
            return Ok(Some(Verdict::Unviable("does not build for the kernel".into())));
        };
        if !pe::check(&release, Some(pe::PAGELOCK_BUDGET))?.passed() {
            return Ok(Some(Verdict::Caught("check-pe".into())));
        }
        for step in Step::ALL {
            let ended = self.image_step(step, &release, &self.product_debug, log)?;
            if let Some(verdict) = step.verdict(&ended, "") {
                return Ok(Some(verdict));
            }
        }
        let Some(debug) = build(Profile::Debug)? else {
            return Ok(Some(Verdict::Unviable("the debug image does not build".into())));
        };
        // The debug image's own checks are assertions, which the scenario suite and the scheduled
        // run reach; the bed tests' statistical expectations (races reached, schedules clean)
        // are stated for the release image.
        for step in [Step::Scenarios, Step::Scheduled] {
            let ended = self.image_step(step, &debug, &debug, log)?;
            if let Some(verdict) = step.verdict(&ended, "the debug image's ") {
                return Ok(Some(verdict));
            }
        }
        Ok(None)
    }

    /// Runs `step` on `sys` (with `debug` as the bed tests' debug image), within its limit.
    fn image_step(&self, step: Step, sys: &Path, debug: &Path, log: &Path) -> Result<Ended> {
        let path = sys.to_str().context("a UTF-8 path")?;
        let mut command = Command::new(&self.testbed);
        match step {
            Step::Scenarios => command.args(["run", path]),
            Step::Scheduled => command.args(scheduled_run(path)),
            Step::BedTests => {
                command = Command::new(&self.bed_tests);
                command.env("PAGELOCK_SYS", sys).env("PAGELOCK_SYS_DEBUG", debug)
            }
            Step::Fuzz => {
                command.args(["fuzz", path, "--seconds", "10", "--seed", "1", "--threads", "2"])
            }
        };
        run_limited(&mut command, log, step.limit())
    }
}

/// A step on the test bed, in the order they run.
#[derive(Clone, Copy)]
enum Step {
    /// `pagelock-testbed run`: the scenario suite.
    Scenarios,
    /// Two CPUs on one overlapped handle with a pending `WAIT`, over 20 schedules.
    Scheduled,
    /// `tests/testbed/tests/pagelock_on_the_bed.rs`, on this image.
    BedTests,
    /// `pagelock-testbed fuzz` for 10 s on two CPUs.
    Fuzz,
}

impl Step {
    const ALL: [Self; 4] = [Self::Scenarios, Self::Scheduled, Self::BedTests, Self::Fuzz];

    /// Ten times what the step takes on the unmutated driver on two loaded cores, at least a
    /// minute: a mutant that makes the bed run on (a request pended that nothing completes, a
    /// timer that ticks for ever) is caught by the limit.
    const fn limit(self) -> Duration {
        match self {
            Self::Scenarios | Self::Fuzz => Duration::from_mins(1),
            Self::Scheduled => Duration::from_mins(2),
            Self::BedTests => Duration::from_mins(10),
        }
    }

    /// `None` when the step passed; else what caught the mutant (`prefix` names the image).
    fn verdict(self, ended: &Ended, prefix: &str) -> Option<Verdict> {
        match ended {
            Ended::Passed => None,
            Ended::Failed => Some(Verdict::Caught(format!("{prefix}{}", self.name()))),
            Ended::TimedOut => {
                Some(Verdict::Caught(format!("{prefix}{} (time limit)", self.name())))
            }
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Scenarios => "scenario suite",
            Self::Scheduled => "scheduled run",
            Self::BedTests => "bed tests",
            Self::Fuzz => "fuzz",
        }
    }
}
