//! The command line: `exec`, `run`, `bench`.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use pagelock_testbed::{
    bed::{Bed, Options, Report, hex},
    device::BedDevice,
    io::Caller,
    isolate::isolated,
    rules,
};

#[derive(Parser)]
#[command(
    about = "Run a WDM driver image on Linux under an emulated kernel with Driver-Verifier-style rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Turn Force IRQL checking off (on by default, as in Verifier's standard settings).
    #[arg(long)]
    no_force_irql: bool,
    /// Who opens the device: `admin` or `user`.
    #[arg(long, default_value = "admin", value_parser = ["admin", "user"])]
    caller: String,
    /// Access of each handle: `read`, `write` or `read,write`.
    #[arg(long, default_value = "read,write")]
    access: String,
    /// Make the Nth call of a kernel routine fail: `NAME:N` (for example `ExAllocatePool2:1`).
    #[arg(long)]
    fail_call: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Load a driver, open handles, send IOCTLs on the first, close, unload, report.
    Exec {
        /// The driver image.
        driver: PathBuf,
        /// The device to open, e.g. `\Device\PageLock`.
        #[arg(long)]
        device: String,
        /// Handles to open.
        #[arg(long, default_value_t = 1)]
        open: usize,
        /// `CODE[:INHEX[:OUTLEN]]`, in order (CODE hex with 0x, or decimal).
        #[arg(long)]
        ioctl: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Run pagelock's scenario suite against a pagelock.sys.
    Run {
        /// The driver image.
        driver: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Send one IOCTL N times per thread, each thread on its own handle; print IRPs per second.
    Bench {
        /// The driver image.
        driver: PathBuf,
        /// The device to open.
        #[arg(long)]
        device: String,
        /// `CODE[:INHEX[:OUTLEN]]`.
        #[arg(long)]
        ioctl: String,
        /// IRPs per thread.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn options(common: &Common) -> Result<Options> {
    let access = common.access.split(',').try_fold(0u32, |acc, part| match part.trim() {
        "read" => Ok(acc | 1),
        "write" => Ok(acc | 2),
        other => Err(anyhow!("--access: unknown right {other:?} (read, write)")),
    })?;
    let fail_call = common
        .fail_call
        .as_deref()
        .map(|spec| {
            let (name, n) = spec.split_once(':').context("--fail-call takes NAME:N")?;
            let n: u64 = n.parse().context("--fail-call: N is a number from 1")?;
            if n == 0 {
                bail!("--fail-call: N counts from 1");
            }
            Ok((name.to_owned(), n))
        })
        .transpose()?;
    Ok(Options {
        force_irql: !common.no_force_irql,
        caller: if common.caller == "user" { Caller::User } else { Caller::Admin },
        access,
        fail_call,
    })
}

/// An IOCTL as the command line gives it.
struct Spec {
    code: u32,
    input: Vec<u8>,
    output: usize,
}

fn parse_spec(spec: &str) -> Result<Spec> {
    let mut parts = spec.split(':');
    let code = parts.next().unwrap_or_default();
    let code = match code.strip_prefix("0x").or_else(|| code.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => code.parse(),
    }
    .with_context(|| format!("--ioctl {spec:?}: CODE is hex (0x...) or decimal"))?;
    let input = parts.next().unwrap_or_default();
    if input.len() % 2 != 0 {
        bail!("--ioctl {spec:?}: INHEX needs an even number of digits");
    }
    let input = (0..input.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&input[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("--ioctl {spec:?}: INHEX is hex bytes"))?;
    let output = parts
        .next()
        .map_or(Ok(0), str::parse)
        .with_context(|| format!("--ioctl {spec:?}: OUTLEN is a number"))?;
    if parts.next().is_some() {
        bail!("--ioctl {spec:?}: CODE[:INHEX[:OUTLEN]]");
    }
    Ok(Spec { code, input, output })
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("events:\n");
    for e in &report.events {
        out.push_str(&format!("  {e}\n"));
    }
    out.push_str("lock counts (memory manager):\n");
    for (step, counts) in &report.timeline {
        let counts: Vec<String> = counts.iter().map(|(n, c)| format!("{n}={c}")).collect();
        out.push_str(&format!("  {step:<28} {}\n", counts.join(" ")));
    }
    for s in &report.sections {
        out.push_str(&format!(
            "section {}: lock count {}, paged out {} times, paged in by fault {} times\n",
            s.name, s.lock_count, s.page_outs, s.page_ins
        ));
    }
    if !report.log.is_empty() {
        out.push_str("DbgPrint:\n");
        for line in &report.log {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(scenarios) = &report.scenarios {
        out.push_str(scenarios);
        out.push('\n');
    }
    for v in &report.violations {
        out.push_str(&format!(
            "VIOLATION {} (bugcheck {:#x}{}): {}\n",
            v.rule,
            v.code,
            if v.fatal { ", fatal" } else { "" },
            v.detail
        ));
    }
    if let Some(b) = &report.bugcheck {
        out.push_str(&format!(
            "BUGCHECK {:#x} ({:#x}, {:#x}, {:#x}, {:#x}): {}\n",
            b.code, b.parameters[0], b.parameters[1], b.parameters[2], b.parameters[3], b.detail
        ));
    }
    out.push_str(if report.clean() { "verdict: clean\n" } else { "verdict: FAILED\n" });
    out
}

fn exec(
    driver: &PathBuf,
    device: &str,
    open: usize,
    ioctls: &[Spec],
    options: Options,
) -> Result<Report> {
    isolated(|| {
        let bed = match Bed::load(driver, options)? {
            Ok(bed) => bed,
            Err((_, report)) => return Ok(report),
        };
        let mut handles = Vec::new();
        for _ in 0..open {
            if let Ok(handle) = bed.open(device) {
                handles.push(handle);
            }
        }
        if let Some(first) = handles.first() {
            for spec in ioctls {
                let _ = bed.control(first, spec.code, &spec.input, spec.output);
            }
        }
        for handle in handles {
            bed.close(handle);
        }
        bed.unload();
        Ok(bed.report())
    })
}

fn run(driver: &PathBuf, options: Options) -> Result<Report> {
    isolated(|| {
        let bed = match Bed::load(driver, options)? {
            Ok(bed) => bed,
            Err((_, report)) => return Ok(report),
        };
        let device = BedDevice { bed: &bed, name: pagelock_protocol::DOS_DEVICE_NAME.to_owned() };
        let verdicts =
            pagelock_test::scenarios::run(&device, pagelock_test::scenarios::Selection::All);
        bed.unload();
        let mut report = bed.report();
        report.scenarios = Some(pagelock_test::scenarios::render(&verdicts, false));
        report.scenarios_passed = Some(pagelock_test::scenarios::all_passed(&verdicts));
        Ok(report)
    })
}

fn bench(
    driver: &PathBuf,
    device: &str,
    spec: &Spec,
    count: u64,
    threads: usize,
) -> Result<Report> {
    isolated(|| {
        let bed = match Bed::load(driver, Options::default())? {
            Ok(bed) => Arc::new(bed),
            Err((_, report)) => return Ok(report),
        };
        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let bed = Arc::clone(&bed);
                let (device, code, input, output) =
                    (device.to_owned(), spec.code, spec.input.clone(), spec.output);
                std::thread::spawn(move || {
                    let Ok(handle) = bed.open(&device) else { return };
                    for _ in 0..count {
                        let _ = bed.control(&handle, code, &input, output);
                    }
                    bed.close(handle);
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.join();
        }
        let elapsed = started.elapsed();
        bed.unload();
        let mut report = bed.report();
        let irps = count * threads as u64;
        #[allow(clippy::cast_precision_loss)] // a rate for people
        let line = format!(
            "bench: {irps} IRPs on {threads} thread(s) in {:.3} s: {:.0} IRPs/s, {:.0} ns per IRP",
            elapsed.as_secs_f64(),
            irps as f64 / elapsed.as_secs_f64(),
            elapsed.as_nanos() as f64 / irps as f64
        );
        report.events.retain(|e| !e.starts_with("IOCTL"));
        report.timeline.clear();
        report.scenarios = Some(line);
        Ok(report)
    })
}

fn finish(report: &Report, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
    } else {
        print!("{}", render(report));
    }
    if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Runs the command line. Exit status: 0 clean, 1 bugcheck or violation, 2 usage or load error.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    let result = (|| -> Result<(Report, bool)> {
        match cli.command {
            Command::Exec { driver, device, open, ioctl, common } => {
                let specs = ioctl.iter().map(|s| parse_spec(s)).collect::<Result<Vec<_>>>()?;
                Ok((exec(&driver, &device, open, &specs, options(&common)?)?, common.json))
            }
            Command::Run { driver, common } => Ok((run(&driver, options(&common)?)?, common.json)),
            Command::Bench { driver, device, ioctl, count, threads } => {
                let spec = parse_spec(&ioctl)?;
                Ok((bench(&driver, &device, &spec, count, threads)?, false))
            }
        }
    })();
    match result {
        Ok((report, json)) => {
            if report.events.first().is_some_and(|e| e.starts_with("error: ")) {
                eprintln!("pagelock-testbed: {}", &report.events[0][7..]);
                return ExitCode::from(2);
            }
            finish(&report, json)
        }
        Err(error) => {
            eprintln!("pagelock-testbed: {error:#}");
            let _ = rules::TABLE.len();
            let _ = hex(&[]);
            ExitCode::from(2)
        }
    }
}
