//! The sessions the command line runs, each inside the isolated child: `exec` (open, control,
//! close, unload), `run` (pagelock's scenario suite) and `bench` (IRPs per second).

use std::{path::Path, str::FromStr, sync::Arc, time::Instant};

use anyhow::{Context, Result, bail};
use pagelock_test::scenarios::{self, Scenario};

use crate::{
    bed::{Bed, Options},
    device::BedDevice,
    report::{BenchFigures, Report, ScenarioLocks},
};

/// An IOCTL as the command line gives it: `CODE[:INHEX[:OUTLEN]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoctlSpec {
    /// The control code.
    pub code: u32,
    /// The input bytes.
    pub input: Vec<u8>,
    /// The output buffer's size.
    pub output: usize,
}

impl FromStr for IoctlSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(':');
        let code = parts.next().unwrap_or_default();
        let code = code
            .strip_prefix("0x")
            .or_else(|| code.strip_prefix("0X"))
            .map_or_else(|| code.parse(), |hex| u32::from_str_radix(hex, 16))
            .map_err(|_| format!("{spec:?}: CODE is hex (0x...) or decimal, 32 bits"))?;
        let input = parts.next().unwrap_or_default();
        if !input.len().is_multiple_of(2) {
            return Err(format!("{spec:?}: INHEX needs an even number of hex digits"));
        }
        let input = (0..input.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&input[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| format!("{spec:?}: INHEX is hex bytes"))?;
        let output = parts
            .next()
            .map_or(Ok(0), str::parse)
            .map_err(|_| format!("{spec:?}: OUTLEN is a byte count"))?;
        if parts.next().is_some() {
            return Err(format!("{spec:?}: expected CODE[:INHEX[:OUTLEN]]"));
        }
        Ok(Self { code, input, output })
    }
}

/// Loads `driver`; a failed `DriverEntry` ends the session with its report.
fn load(driver: &Path, options: Options) -> Result<Result<Bed, Report>> {
    let injecting = options.fail_call.is_some();
    match Bed::load(driver, options)? {
        Ok(bed) => Ok(Ok(bed)),
        // Under fault injection a failed DriverEntry is the error path being exercised: the
        // report (what it left behind) is the verdict. Otherwise the driver did not load.
        Err((_, report)) if injecting => Ok(Err(report)),
        Err((status, _)) => bail!("DriverEntry failed with {status:#010x}"),
    }
}

/// What `exec` sends.
#[derive(Clone, Copy, Debug)]
pub struct Requests<'a> {
    /// Sent in order, each waited for.
    pub ioctls: &'a [IoctlSpec],
    /// Sent overlapped on a handle of their own and left pending: the handle is closed with
    /// them in the driver.
    pub pends: &'a [IoctlSpec],
    /// Each pending request cancelled (`CancelIoEx`) right after it was sent.
    pub cancel: bool,
}

impl Requests<'_> {
    /// Sends every pending request on `handle`, overlapped.
    fn start(&self, bed: &Bed, handle: &crate::bed::Handle) -> Vec<crate::bed::Pending> {
        self.pends
            .iter()
            .map(|spec| bed.control_overlapped(handle, spec.code, &spec.input, spec.output))
            .collect()
    }

    /// Sends the pending requests on a fresh overlapped handle of `device`, cancels them when
    /// asked, closes the handle with them pending, then waits for each.
    fn send_pending(&self, bed: &Bed, device: &str) {
        if self.pends.is_empty() {
            return;
        }
        let Ok(handle) = bed.open_overlapped(device) else { return };
        let pending = self.start(bed, &handle);
        if self.cancel {
            for request in &pending {
                bed.cancel(request);
            }
        }
        bed.close(handle);
        for request in pending {
            bed.finish(request);
        }
    }

    /// Sends the pending requests on `handle`, shared with other CPUs, cancels every request of
    /// it in flight when asked (`CancelIoEx` on the handle: the other CPUs' too, queued or still
    /// in their dispatch), then waits for each; the handle stays open.
    fn send_pending_on(&self, bed: &Bed, handle: &crate::bed::Handle) {
        let pending = self.start(bed, handle);
        if self.cancel {
            bed.cancel_all(handle);
        }
        for request in pending {
            bed.finish(request);
        }
    }
}

/// How `exec` sends its requests from several emulated CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Concurrency {
    /// CPUs, one thread each.
    pub threads: usize,
    /// All threads on one handle opened for overlapped I/O; otherwise each on its own
    /// (synchronous) handle.
    pub shared: bool,
    /// With `shared`: the last thread closes the shared handle (`CloseHandle`) instead of
    /// sending, while the others send theirs; cleanup then meets their requests in the driver,
    /// and the requests after it find the handle closed.
    pub close_shared: bool,
    /// The driver's service is stopped as the threads start ([`Bed::stop_service`]):
    /// `DriverUnload` runs as the last handle's close returns, on the CPU that sent it, while
    /// the other CPUs may still be returning from the driver.
    pub stop: bool,
    /// Times each thread sends the IOCTL list.
    pub repeat: u32,
    /// The schedule's seed.
    pub seed: u64,
    /// How the schedule picks the next CPU.
    pub policy: crate::sched::Policy,
}

/// `exec`: opens handles, sends the IOCTLs, closes every handle, unloads.
///
/// Opens `open` handles on `device` and sends `requests.ioctls` in order on the first; then sends
/// `requests.pends` overlapped on a handle of its own and closes that handle with them pending.
/// With `concurrency`, each thread does both, on its own CPU under the scheduler, on one shared
/// overlapped handle or on their own.
///
/// # Errors
/// When the driver cannot be loaded.
pub fn exec(
    driver: &Path,
    device: &str,
    open: usize,
    requests: Requests<'_>,
    options: Options,
    concurrency: Option<Concurrency>,
) -> Result<Report> {
    let bed = match load(driver, options)? {
        Ok(bed) => bed,
        Err(report) => return Ok(report),
    };
    let handles: Vec<_> = (0..open).filter_map(|_| bed.open(device).ok()).collect();
    match concurrency {
        None => {
            if let Some(first) = handles.first() {
                for spec in requests.ioctls {
                    bed.control(first, spec.code, &spec.input, spec.output);
                }
            }
            requests.send_pending(&bed, device);
        }
        Some(c) => scheduled(&bed, device, requests, c),
    }
    for handle in handles {
        bed.close(handle);
    }
    bed.unload();
    Ok(bed.report())
}

/// `exec` with `concurrency`: each thread on its own CPU under the scheduler, one more CPU the
/// system worker that sends the threads' closes; the service stopped first when asked.
fn scheduled(bed: &Bed, device: &str, requests: Requests<'_>, c: Concurrency) {
    let shared = if c.shared { bed.open_overlapped(device).ok() } else { None };
    let done = std::sync::atomic::AtomicUsize::new(0);
    bed.defer_closes();
    if c.stop {
        bed.stop_service();
    }
    crate::sched::run(c.threads + 1, c.seed, c.policy, |cpu| {
        if cpu as usize == c.threads {
            let others_done = || done.load(std::sync::atomic::Ordering::Acquire) == c.threads;
            bed.close_worker(&others_done);
            return;
        }
        match &shared {
            Some(handle) if c.close_shared && cpu as usize + 1 == c.threads => {
                // CloseHandle at a moment the schedule draws: the others' requests may not have
                // started, be in the driver, or be done.
                for _ in 0..crate::sched::choose_below(8) {
                    crate::sched::point();
                }
                bed.close_shared(handle);
            }
            _ => send_from_a_thread(bed, device, requests, c, shared.as_ref()),
        }
        done.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    });
    bed.close_now();
    if let Some(handle) = shared {
        bed.close(handle);
    }
}

/// One thread of a scheduled `exec`: the IOCTL list `c.repeat` times and the pending requests,
/// on the `shared` handle or on handles of its own.
fn send_from_a_thread(
    bed: &Bed,
    device: &str,
    requests: Requests<'_>,
    c: Concurrency,
    shared: Option<&crate::bed::Handle>,
) {
    let own = if c.shared || requests.ioctls.is_empty() { None } else { bed.open(device).ok() };
    if let Some(handle) = shared.or(own.as_ref()) {
        for _ in 0..c.repeat {
            for spec in requests.ioctls {
                bed.control(handle, spec.code, &spec.input, spec.output);
            }
        }
    }
    match shared {
        Some(handle) => requests.send_pending_on(bed, handle),
        None => requests.send_pending(bed, device),
    }
    if let Some(handle) = own {
        bed.close(handle);
    }
}

/// `run`: pagelock's scenario suite, with the lock counts before, during and after each
/// scenario.
///
/// # Errors
/// When the driver cannot be loaded.
pub fn run_suite(driver: &Path, options: Options) -> Result<Report> {
    let bed = match load(driver, options)? {
        Ok(bed) => bed,
        Err(report) => return Ok(report),
    };
    let mm = crate::mm::get();
    let device = BedDevice { bed: &bed, name: pagelock_protocol::WIN32_PATH.to_owned() };
    let mut verdicts = Vec::new();
    let mut locks = Vec::new();
    for scenario in Scenario::ALL {
        let before = mm.counts();
        mm.reset_peaks();
        let verdict = scenario.run(&device);
        locks.push(ScenarioLocks {
            name: scenario.name().to_owned(),
            passed: verdict.passed(),
            before,
            during: mm.peaks(),
            after: mm.counts(),
        });
        verdicts.push(verdict);
    }
    bed.unload();
    let mut report = bed.report();
    // The per-IRP steps of a whole suite are for --json; people read the scenario table.
    report.scenarios = Some(scenarios::render(&verdicts, false));
    report.scenarios_passed = Some(scenarios::all_passed(&verdicts));
    report.scenario_locks = locks;
    Ok(report)
}

/// `bench`: `count` IRPs per thread, each thread on its own handle.
///
/// # Errors
/// When the driver cannot be loaded, or no thread could open the device.
pub fn bench(
    driver: &Path,
    device: &str,
    spec: &IoctlSpec,
    count: u64,
    threads: usize,
    options: &Options,
) -> Result<Report> {
    let bed = match load(driver, Options { trace: false, ..options.clone() })? {
        Ok(bed) => Arc::new(bed),
        Err(report) => return Ok(report),
    };
    let handles = (0..threads)
        .map(|_| bed.open(device).map_err(|s| anyhow::anyhow!("open {device}: {s:#010x}")))
        .collect::<Result<Vec<_>>>()
        .context("bench")?;
    let started = Instant::now();
    let workers: Vec<_> = handles
        .into_iter()
        .map(|handle| {
            let (bed, spec) = (Arc::clone(&bed), spec.clone());
            std::thread::spawn(move || {
                let mut failed = 0u64;
                for _ in 0..count {
                    let (status, _) = bed.control(&handle, spec.code, &spec.input, spec.output);
                    failed += u64::from(status < 0);
                }
                (handle, failed)
            })
        })
        .collect();
    let mut failed = 0;
    let mut done = Vec::new();
    for worker in workers {
        let (handle, f) = worker.join().map_err(|_| anyhow::anyhow!("a bench thread panicked"))?;
        failed += f;
        done.push(handle);
    }
    let seconds = started.elapsed().as_secs_f64();
    for handle in done {
        bed.close(handle);
    }
    bed.unload();
    let irps = count * threads as u64;
    #[expect(clippy::cast_precision_loss, reason = "rates for people")]
    let figures = BenchFigures {
        irps,
        threads,
        seconds,
        irps_per_second: irps as f64 / seconds,
        nanoseconds_per_irp: seconds * 1e9 / irps.max(1) as f64,
        failed,
    };
    let mut report = bed.report();
    if options.force_irql {
        report.notes.push(
            "Force IRQL checking pages unlocked sections out at every raise to DISPATCH_LEVEL, \
             and the next touch pays a fault: --no-force-irql measures the driver itself"
                .to_owned(),
        );
    }
    report.bench = Some(figures);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::IoctlSpec;

    #[test]
    fn ioctl_specs_parse_code_input_and_output() {
        let spec: IoctlSpec = "0x83376000:0a0B:200".parse().expect("valid");
        assert_eq!(spec, IoctlSpec { code: 0x8337_6000, input: vec![0x0A, 0x0B], output: 200 });
        assert_eq!("42".parse::<IoctlSpec>(), Ok(IoctlSpec { code: 42, input: vec![], output: 0 }));
    }

    #[test]
    fn bad_ioctl_specs_say_what_is_wrong() {
        assert!("0xZZ".parse::<IoctlSpec>().unwrap_err().contains("CODE"));
        assert!("1:abc".parse::<IoctlSpec>().unwrap_err().contains("even"));
        assert!("1::x".parse::<IoctlSpec>().unwrap_err().contains("OUTLEN"));
        assert!("1:00:2:3".parse::<IoctlSpec>().unwrap_err().contains("expected"));
    }
}
