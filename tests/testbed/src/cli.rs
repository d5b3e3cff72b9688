//! The command line: `exec`, `run`, `bench`, `rules`.
//!
//! Exit status: 0 when the run was clean, 1 on a bugcheck, a violation, a failed scenario or a
//! driver process that died, 2 on a usage or load error.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use pagelock_testbed::{
    bed::Options,
    isolate::{self, Outcome},
    report::Report,
    routine::Routine,
    se::Caller,
    session::{self, IoctlSpec},
    verifier,
};

#[derive(Parser)]
#[command(
    name = "pagelock-testbed",
    about = "Run a WDM driver image on Linux under an emulated kernel with Driver-Verifier-style rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Turn Force IRQL checking off (on by default, as in Driver Verifier's standard settings).
    #[arg(long)]
    no_force_irql: bool,
    /// Who opens the device (the access check at create uses the device's DACL).
    #[arg(long, value_enum, default_value_t = Caller::Admin)]
    caller: Caller,
    /// Access each handle asks for: read, write, or read,write.
    #[arg(long, default_value = "read,write", value_parser = parse_access)]
    access: u32,
    /// Make the Nth call (from 1) of a kernel routine fail as it can on Windows: NAME:N.
    #[arg(long, value_parser = parse_fail_call)]
    fail_call: Option<(Routine, u64)>,
    /// Open every handle as a directory (`FILE_DIRECTORY_FILE` in the create options, as
    /// `NtCreateFile` can ask; `CreateFileW` cannot).
    #[arg(long)]
    as_directory: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Common {
    const fn options(&self) -> Options {
        Options {
            force_irql: !self.no_force_irql,
            caller: self.caller,
            access: self.access,
            fail_call: self.fail_call,
            trace: true,
            as_directory: self.as_directory,
        }
    }
}

#[derive(Args, Clone)]
struct ConcurrencyArgs {
    /// Send the IOCTL list from T threads at once, each on its own emulated CPU under the
    /// seeded scheduler (1: the list is sent once, on the first handle). One more CPU is the
    /// system worker that sends the threads' closes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=15))]
    threads: u16,
    /// All threads on one handle opened for overlapped I/O (requests in the driver at once);
    /// otherwise each thread on a synchronous handle of its own.
    #[arg(long, requires = "threads")]
    shared: bool,
    /// With --shared: the last thread closes the shared handle (`CloseHandle`) while the
    /// others send theirs, so `IRP_MJ_CLEANUP` meets their requests in the driver; requests
    /// after it find the handle closed (`STATUS_INVALID_HANDLE`).
    #[arg(long, requires = "shared")]
    close_shared: bool,
    /// Stop the driver's service as the threads start (`sc stop`): the I/O manager refuses new
    /// opens (`STATUS_NO_SUCH_DEVICE`) and runs `DriverUnload` as the last handle's close
    /// returns, on the CPU that sent it, while the others may still be returning from the
    /// driver; at once when no handle is open. Handles opened before the threads (--open) stay
    /// open until they are done: with --open 0 the close of the shared handle (--close-shared)
    /// is the last.
    #[arg(long)]
    stop: bool,
    /// Times each thread sends the IOCTL list.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// The schedule's seed; with --schedules, the first of consecutive seeds.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run K schedules (seeds S, S+1, ...), each on a freshly loaded driver; the first failing
    /// one is reported with its seed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    schedules: u64,
    /// How the scheduler picks the next CPU: uniform, or pct:D[:K] (priorities, D-1 changes at
    /// switch points drawn among the first K, 4096 unless given: the run's length, which its
    /// report prints, is the K that makes PCT's bound hold).
    #[arg(long, default_value = "uniform", value_parser = parse_policy)]
    policy: pagelock_testbed::sched::Policy,
    /// Draw the run as an SVG picture into FILE: one lane per CPU, every kernel call, IRQL
    /// change, page fault, IRP and spin-lock hold on it, the lock counts beneath, the violation
    /// marked (with --schedules, of the failing schedule, or else of the last).
    #[arg(long, value_name = "FILE")]
    trace_svg: Option<PathBuf>,
}

impl ConcurrencyArgs {
    fn concurrency(&self, seed: u64) -> Option<session::Concurrency> {
        (self.threads > 1 || self.shared || self.stop).then_some(session::Concurrency {
            threads: usize::from(self.threads),
            shared: self.shared,
            close_shared: self.close_shared,
            stop: self.stop,
            repeat: self.repeat,
            seed,
            policy: self.policy,
        })
    }
}

fn parse_policy(text: &str) -> Result<pagelock_testbed::sched::Policy, String> {
    use pagelock_testbed::sched::Policy;
    let Some(("pct", rest)) = text.split_once(':') else {
        return if text == "uniform" {
            Ok(Policy::Uniform)
        } else {
            Err(format!("{text:?}: expected uniform or pct:D[:K]"))
        };
    };
    let (depth, steps) = rest.split_once(':').unwrap_or((rest, "4096"));
    let Ok(depth @ 1..=8) = depth.parse() else {
        return Err(format!("{text:?}: the depth D of pct:D[:K] is 1 to 8"));
    };
    match steps.parse() {
        Ok(steps @ 1..) => Ok(Policy::Pct { depth, steps }),
        _ => Err(format!("{text:?}: the switch points K of pct:D[:K] are a number from 1")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load a driver, open handles, send IOCTLs on the first, close them all, unload, report.
    Exec {
        /// The driver image (.sys).
        driver: PathBuf,
        /// The device to open: \Device\Name, \DosDevices\Name or \\.\Name.
        #[arg(long)]
        device: String,
        /// Handles to open.
        #[arg(long, default_value_t = 1)]
        open: usize,
        /// CODE[:INHEX[:OUTLEN]], sent in order on the first handle (CODE hex with 0x, or decimal).
        #[arg(long, value_parser = clap::value_parser!(IoctlSpec))]
        ioctl: Vec<IoctlSpec>,
        /// CODE[:INHEX[:OUTLEN]], sent overlapped on a handle of its own after the --ioctl list,
        /// and left pending: that handle is closed with the requests still in the driver. With
        /// --threads and --shared, sent on the shared handle instead, which stays open.
        #[arg(long, value_parser = clap::value_parser!(IoctlSpec))]
        pend: Vec<IoctlSpec>,
        /// Cancel each --pend request right after sending it, as `CancelIoEx` does (with
        /// --shared, every request of the shared handle in flight, other threads' included).
        #[arg(long, requires = "pend")]
        cancel: bool,
        #[command(flatten)]
        concurrency: ConcurrencyArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Run pagelock's scenario suite against a pagelock.sys.
    Run {
        /// The driver image (pagelock.sys).
        driver: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Send one IOCTL COUNT times per thread, each thread on its own handle; print IRPs per second.
    Bench {
        /// The driver image (.sys).
        driver: PathBuf,
        /// The device to open.
        #[arg(long)]
        device: String,
        /// CODE[:INHEX[:OUTLEN]].
        #[arg(long, value_parser = clap::value_parser!(IoctlSpec))]
        ioctl: IoctlSpec,
        /// IRPs per thread.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Threads.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        #[command(flatten)]
        common: Common,
    },
    /// Print the verifier rules: id, bugcheck code, where the code comes from, parameters.
    Rules,
    /// Fuzz a pagelock.sys with random IRP sequences; a failure is shrunk and printed with its
    /// seed. Exit status 0 when nothing was found.
    Fuzz {
        /// The driver image (.sys).
        driver: PathBuf,
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Stop after N sequences, if the time is not up before: a run whose figures do not
        /// depend on the machine's speed.
        #[arg(long, value_name = "N")]
        sequences: Option<u64>,
        /// The seed (default: from the clock); the same seed gives the same sequences.
        #[arg(long)]
        seed: Option<u64>,
        /// Emulated CPUs: with more than 1, a third of the steps send that many requests at once,
        /// under the seeded scheduler, on handles opened for overlapped I/O.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        threads: u16,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// T threads each open, `LOCK`, `RUN_LOCKED`, `UNLOCK` and close N times at once; then every
    /// count must be back and no update lost.
    Stress {
        /// The driver image (.sys).
        driver: PathBuf,
        /// Threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Iterations per thread.
        #[arg(long, default_value_t = 1000)]
        iterations: u64,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_access(text: &str) -> Result<u32, String> {
    text.split(',').try_fold(0u32, |access, right| match right.trim() {
        "read" => Ok(access | 1),
        "write" => Ok(access | 2),
        other => Err(format!("unknown right {other:?}: use read, write or read,write")),
    })
}

fn parse_fail_call(text: &str) -> Result<(Routine, u64), String> {
    let (name, n) = text.split_once(':').ok_or("expected NAME:N, e.g. ExAllocatePool2:1")?;
    let routine = Routine::from_name(name)
        .ok_or_else(|| format!("{name} is not a routine the bed provides"))?;
    if routine.failure().is_none() {
        let failable: Vec<_> =
            Routine::ALL.iter().filter(|r| r.failure().is_some()).map(|r| r.name()).collect();
        return Err(format!("{name} cannot fail on Windows; these can: {}", failable.join(", ")));
    }
    match n.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((routine, n)),
        _ => Err(format!("N must be a call number from 1, not {n:?}")),
    }
}

fn rules() -> String {
    let mut out = format!(
        "{:<32} {:<11} {:<6} {:<17} parameters / meaning\n",
        "rule", "bugcheck", "fatal", "code from"
    );
    for e in verifier::TABLE {
        let source = match e.source {
            verifier::Source::Windows => "Windows",
            verifier::Source::WindowsCodeBedParameter => "Windows (P1 bed)",
            verifier::Source::Bed => "the bed",
        };
        let code = if e.code == 0 { "driver's".to_owned() } else { format!("{:#x}", e.code) };
        let _ = writeln!(
            out,
            "{:<32} {code:<11} {:<6} {source:<17} {}; {}",
            e.id,
            if e.fatal { "yes" } else { "no" },
            e.parameters,
            e.meaning
        );
    }
    out
}

/// `fuzz` and `stress`: their own figures and verdicts.
fn reliability(command: &Command) -> Option<anyhow::Result<bool>> {
    match command {
        Command::Fuzz { driver, seconds, sequences, seed, threads, json } => Some((|| {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(1))
            });
            let limit = pagelock_testbed::fuzz::Limit { seconds: *seconds, sequences: *sequences };
            let stats = pagelock_testbed::fuzz::fuzz(driver, limit, seed, usize::from(*threads))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "fuzz: seed {}, {} s, {} CPUs: {} sequences, {} steps, {} IRPs, {} failures",
                    stats.seed,
                    stats.seconds,
                    stats.threads,
                    stats.sequences,
                    stats.steps,
                    stats.irps,
                    stats.failures
                );
                if stats.stops > 0 {
                    println!(
                        "service stops under a concurrent batch: {}, {} of them unloading while \
                         a dispatch routine ran",
                        stats.stops, stats.unloads_under_a_dispatch
                    );
                }
                if let Some((ops, failure)) = &stats.minimal_failure {
                    println!(
                        "minimal failing sequence ({} steps), after step {}: {}",
                        ops.len(),
                        failure.step,
                        failure.reason
                    );
                    for (i, op) in ops.iter().enumerate() {
                        println!("  {i:>3} {op:?}");
                    }
                    println!(
                        "reproduce: pagelock-testbed fuzz {} --seconds {} --seed {} --threads {}",
                        driver.display(),
                        stats.seconds,
                        stats.seed,
                        stats.threads
                    );
                }
            }
            Ok(stats.failures == 0)
        })()),
        Command::Stress { driver, threads, iterations, json } => Some((|| {
            let stats = pagelock_testbed::fuzz::stress(driver, *threads, *iterations)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "stress: {} threads x {} iterations: {} operations, {} runs counted by the driver, {} problems",
                    stats.threads,
                    stats.iterations,
                    stats.operations,
                    stats.runs_counted,
                    stats.problems.len()
                );
                for problem in &stats.problems {
                    println!("  {problem}");
                }
            }
            Ok(stats.problems.is_empty())
        })()),
        _ => None,
    }
}

/// `exec`, once per schedule asked for, each in a child of its own; the first failing
/// schedule ends the loop and is the outcome.
fn exec_schedules(
    driver: &std::path::Path,
    device: &str,
    open: usize,
    requests: session::Requests<'_>,
    concurrency: &ConcurrencyArgs,
    common: &Common,
) -> anyhow::Result<Outcome<Report>> {
    let mut last = None;
    // Per race: schedules that reached it, and times in all.
    let mut races: std::collections::BTreeMap<String, (u64, u64)> =
        std::collections::BTreeMap::new();
    let bar = if concurrency.schedules > 1 {
        pagelock_testbed::report::progress(concurrency.schedules, "{bar:40} {pos}/{len} schedules")
    } else {
        indicatif::ProgressBar::hidden()
    };
    for k in 0..concurrency.schedules {
        bar.set_position(k);
        let seed = concurrency.seed.wrapping_add(k);
        let outcome = isolate::run(
            || {
                if let Some(file) = &concurrency.trace_svg {
                    pagelock_testbed::bed::trace_to(file.clone());
                }
                let c = concurrency.concurrency(seed);
                let report = session::exec(driver, device, open, requests, common.options(), c);
                let why = report.as_ref().ok().and_then(|r| r.violations.first());
                let why = why.map(|v| format!("{}: {}", v.rule, v.detail));
                pagelock_testbed::bed::write_trace(why.as_deref());
                report
            },
            isolate::DEFAULT_TIMEOUT,
        );
        let failed = !matches!(&outcome, Ok(Outcome::Finished(r)) if r.clean());
        let report = match &outcome {
            Ok(Outcome::Finished(report)) => Some(report),
            Ok(Outcome::Stopped(report)) => Some(&**report),
            _ => None,
        };
        if let Some(report) = report {
            for (race, times) in &report.races {
                let entry = races.entry(race.clone()).or_insert((0u64, 0u64));
                *entry = (entry.0 + 1, entry.1 + times);
            }
        }
        last = Some(outcome);
        if failed {
            bar.finish_and_clear();
            if concurrency.schedules > 1 {
                eprintln!(
                    "schedule {} of {} (seed {seed}) failed; reproduce with --seed {seed}",
                    k + 1,
                    concurrency.schedules
                );
            }
            break;
        }
    }
    bar.finish_and_clear();
    if concurrency.schedules > 1
        && last.as_ref().is_some_and(|o| matches!(o, Ok(Outcome::Finished(r)) if r.clean()))
    {
        eprintln!("{} schedules clean", concurrency.schedules);
    }
    if concurrency.schedules > 1 {
        for (race, (schedules, times)) in &races {
            eprintln!("reached in {schedules} of the schedules run ({times}x in all): {race}");
        }
    }
    last.expect("at least one schedule")
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    if let Some(result) = reliability(&cli.command) {
        return match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("pagelock-testbed: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    let (outcome, json) = match cli.command {
        Command::Exec { driver, device, open, ioctl, pend, cancel, concurrency, common } => {
            let requests = session::Requests { ioctls: &ioctl, pends: &pend, cancel };
            (exec_schedules(&driver, &device, open, requests, &concurrency, &common), common.json)
        }
        Command::Run { driver, common } => (
            isolate::run(
                || session::run_suite(&driver, common.options()),
                isolate::DEFAULT_TIMEOUT,
            ),
            common.json,
        ),
        Command::Bench { driver, device, ioctl, count, threads, common } => (
            isolate::run(
                || {
                    session::bench(
                        &driver,
                        &device,
                        &ioctl,
                        count,
                        usize::from(threads),
                        &common.options(),
                    )
                },
                isolate::DEFAULT_TIMEOUT,
            ),
            common.json,
        ),
        Command::Rules => {
            print!("{}", rules());
            return ExitCode::SUCCESS;
        }
        Command::Fuzz { .. } | Command::Stress { .. } => unreachable!("handled above"),
    };
    let report = match outcome {
        Ok(Outcome::Finished(report)) => report,
        Ok(Outcome::Stopped(report)) => *report,
        Ok(Outcome::Failed(message)) => {
            eprintln!("pagelock-testbed: {message}");
            return ExitCode::from(2);
        }
        Ok(Outcome::Died(message)) => {
            eprintln!("pagelock-testbed: {message}");
            return ExitCode::from(1);
        }
        Err(error) => {
            eprintln!("pagelock-testbed: {error:#}");
            return ExitCode::from(2);
        }
    };
    print_report(&report, json);
    if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
    } else {
        print!("{}", report.render());
    }
}
