//! The commands of `pagelock-test`, written against [`Host`]: what the program says and when
//! it fails is decided here, on every platform; the Windows module only makes the calls.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use pagelock_protocol::{self as protocol, BenchRequest, MAX_BENCH_ITERATIONS, WIN32_PATH};

use crate::cli::{Command, WaitEnd};
use crate::client::{Failure, Session, code_name};
use crate::device::Device;
use crate::errors::{Win32Error, bits, status_text, win32_from_status};
use crate::report::{self, BenchTotals};
use crate::scenarios::{self, Selection};
use crate::stress::{self, StressConfig};

/// Exit status: everything worked and every check passed.
pub const EXIT_OK: u8 = 0;
/// Exit status: a call failed or a check did not pass.
pub const EXIT_FAILED: u8 = 1;

/// What happened to the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Started (or stopped) now.
    Done,
    /// It already was running (or stopped).
    Already,
}

/// What removing the package did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// The INF of the package that was removed.
    pub inf: String,
    /// Windows asks for a restart to finish.
    pub need_reboot: bool,
    /// The service was still registered after the package went, and was deleted.
    pub service_deleted: bool,
}

/// The machine the commands act on: the service control manager, the driver store and the
/// device. Implemented with Win32 calls on Windows, and by fakes in the tests.
pub trait Host {
    /// The transport to `\\.\PageLock`.
    type Device: Device + Sync;

    /// Whether this process runs elevated (`TokenElevation`).
    ///
    /// # Errors
    /// When the token cannot be read.
    fn is_elevated(&self) -> Result<bool, Win32Error>;

    /// The device transport.
    fn device(&self) -> &Self::Device;

    /// Installs the driver package from `inf` (`DiInstallDriverW`); whether Windows asks for a
    /// restart.
    ///
    /// # Errors
    /// The failed call.
    fn install_package(&self, inf: &Path) -> Result<bool, Win32Error>;

    /// Removes the driver package (`DiUninstallDriverW`): the one of `inf`, or by default the
    /// one the service runs from. Deletes the service if it is still registered afterwards.
    ///
    /// # Errors
    /// The failed call.
    fn uninstall_package(&self, inf: Option<&Path>) -> Result<Removed, Win32Error>;

    /// Starts the `pagelock` service.
    ///
    /// # Errors
    /// The failed call.
    fn start_service(&self) -> Result<Change, Win32Error>;

    /// Stops the `pagelock` service and waits until it has stopped.
    ///
    /// # Errors
    /// The failed call.
    fn stop_service(&self) -> Result<Change, Win32Error>;

    /// The system's text for a Win32 error (`FormatMessageW`).
    fn message(&self, code: u32) -> String;
}

/// Runs one command with the host, writing to `out` (results) and `err` (problems and the
/// progress bar when `progress` is set). Returns the exit status.
pub struct App<'a, H: Host> {
    host: &'a H,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    progress: bool,
}

/// Why a command stopped.
enum Problem {
    /// A Win32 call failed.
    Win32(Win32Error),
    /// Anything else, said in a sentence.
    Other(String),
}

impl From<Win32Error> for Problem {
    fn from(error: Win32Error) -> Self {
        Self::Win32(error)
    }
}

impl From<std::io::Error> for Problem {
    fn from(error: std::io::Error) -> Self {
        Self::Other(format!("writing the output failed: {error}"))
    }
}

impl<'a, H: Host> App<'a, H> {
    /// An app writing to `out` and `err`; `progress` draws the stress progress bar.
    pub fn new(
        host: &'a H,
        out: &'a mut dyn Write,
        err: &'a mut dyn Write,
        progress: bool,
    ) -> Self {
        Self { host, out, err, progress }
    }

    /// Runs `command`; the exit status.
    pub fn run(&mut self, command: &Command) -> u8 {
        let result = self.elevated(command.name()).and_then(|()| match command {
            Command::Install { inf } => self.install(inf),
            Command::Uninstall { inf } => self.uninstall(inf.as_deref()),
            Command::Start => self.start(),
            Command::Stop => self.stop(),
            Command::Query { json } => self.query(*json),
            Command::Run { scenario, verbose, skip } => self.scenarios(*scenario, *verbose, skip),
            Command::Stress { threads, iterations, shared } => self.stress(StressConfig {
                threads: *threads,
                iterations: *iterations,
                shared: *shared,
            }),
            Command::Bench { iterations } => self.bench(*iterations),
            Command::Wait { timeout_ms, cookie, then } => self.wait(*timeout_ms, *cookie, *then),
        });
        match result {
            Ok(status) => status,
            Err(problem) => {
                let text = match problem {
                    Problem::Win32(error) => error.to_string(),
                    Problem::Other(text) => text,
                };
                let _ = writeln!(self.err, "pagelock-test {}: {text}", command.name());
                EXIT_FAILED
            }
        }
    }

    /// Every command needs an elevated process: the service control manager and the driver
    /// store for the first four, and the device's DACL (Administrators and SYSTEM) for the rest.
    fn elevated(&self, command: &str) -> Result<(), Problem> {
        if self.host.is_elevated()? {
            Ok(())
        } else {
            Err(Problem::Other(format!(
                "not running as administrator. `{command}` needs an elevated prompt: right-click \
                 the terminal, choose Run as administrator, and run pagelock-test {command} there"
            )))
        }
    }

    fn install(&mut self, inf: &Path) -> Result<u8, Problem> {
        let inf = std::path::absolute(inf)
            .map_err(|error| Problem::Other(format!("{}: {error}", inf.display())))?;
        if !inf.is_file() {
            return Err(Problem::Other(format!("{} is not a file", inf.display())));
        }
        let need_reboot = self.host.install_package(&inf)?;
        writeln!(self.out, "installed the driver package from {}", inf.display())?;
        if need_reboot {
            writeln!(
                self.out,
                "Windows asks for a restart to finish installing; restart, then run pagelock-test start"
            )?;
            return Ok(EXIT_OK);
        }
        self.start()
    }

    fn uninstall(&mut self, inf: Option<&Path>) -> Result<u8, Problem> {
        match self.host.stop_service() {
            Ok(change) => self.say_stopped(change)?,
            // Without its service the package can still be removed when its INF is named.
            Err(error)
                if inf.is_some() && error.code == crate::errors::win32::SERVICE_DOES_NOT_EXIST =>
            {
                writeln!(self.out, "the pagelock service does not exist")?;
            }
            Err(error) => return Err(error.into()),
        }
        let inf: Option<PathBuf> = inf
            .map(std::path::absolute)
            .transpose()
            .map_err(|error| Problem::Other(format!("the INF path: {error}")))?;
        let removed = self.host.uninstall_package(inf.as_deref())?;
        writeln!(self.out, "removed the driver package {}", removed.inf)?;
        if removed.service_deleted {
            writeln!(self.out, "deleted the pagelock service, which the package left registered")?;
        }
        if removed.need_reboot {
            writeln!(self.out, "Windows asks for a restart to finish removing it")?;
        }
        Ok(EXIT_OK)
    }

    fn start(&mut self) -> Result<u8, Problem> {
        match self.host.start_service()? {
            Change::Done => {
                writeln!(self.out, "started the pagelock service: pagelock.sys is loaded")?;
            }
            Change::Already => writeln!(self.out, "the pagelock service is already running")?,
        }
        Ok(EXIT_OK)
    }

    fn stop(&mut self) -> Result<u8, Problem> {
        let change = self.host.stop_service()?;
        self.say_stopped(change)?;
        Ok(EXIT_OK)
    }

    fn say_stopped(&mut self, change: Change) -> Result<(), Problem> {
        match change {
            Change::Done => {
                writeln!(self.out, "stopped the pagelock service: pagelock.sys is unloaded")?;
            }
            Change::Already => writeln!(self.out, "the pagelock service is not running")?,
        }
        Ok(())
    }

    /// Opens `\\.\PageLock`, reporting a refusal as the failed `CreateFileW`.
    fn open(&self) -> Result<Session<'a, H::Device>, Problem> {
        Session::open(self.host.device())
            .map_err(|failure| self.failed(&format!("CreateFileW({WIN32_PATH})"), failure))
    }

    /// A failed request as a problem: the Win32 error the caller saw, with its text.
    fn failed(&self, call: &str, failure: Failure) -> Problem {
        match failure {
            Failure::Status(status) => {
                let code = win32_from_status(status).unwrap_or_else(|| bits(status));
                let mut message = self.host.message(code);
                if call.starts_with("DeviceIoControl") {
                    message = format!("{message} (the driver's {})", status_text(status));
                }
                Problem::Win32(Win32Error { call: call.to_owned(), code, message })
            }
            other => Problem::Other(format!("{call}: {other}")),
        }
    }

    fn query(&mut self, json: bool) -> Result<u8, Problem> {
        let session = self.open()?;
        let call = format!("DeviceIoControl({})", code_name(protocol::IOCTL_QUERY_STATE));
        let state = session.query().map_err(|failure| self.failed(&call, failure))?;
        let text =
            if json { report::state_json(&state) + "\n" } else { report::state_table(&state) };
        self.out.write_all(text.as_bytes())?;
        session.close().map_err(|error| Problem::Other(format!("CloseHandle: {error}")))?;
        Ok(EXIT_OK)
    }

    fn scenarios(
        &mut self,
        which: Selection,
        verbose: bool,
        skip: &[scenarios::Scenario],
    ) -> Result<u8, Problem> {
        // One open first, so that a missing driver or missing rights is one clear error.
        self.open()?.close().map_err(|error| Problem::Other(format!("CloseHandle: {error}")))?;
        let device = self.host.device();
        let verdicts: Vec<_> = which
            .scenarios()
            .into_iter()
            .filter(|scenario| !skip.contains(scenario))
            .map(|scenario| scenario.run(device))
            .collect();
        self.out.write_all(scenarios::render(&verdicts, verbose).as_bytes())?;
        Ok(if scenarios::all_passed(&verdicts) { EXIT_OK } else { EXIT_FAILED })
    }

    fn stress(&mut self, config: StressConfig) -> Result<u8, Problem> {
        self.open()?.close().map_err(|error| Problem::Other(format!("CloseHandle: {error}")))?;
        let bar =
            if self.progress { ProgressBar::new(config.total()) } else { ProgressBar::hidden() };
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} cycles, {per_sec}, {eta} left")
        {
            bar.set_style(style);
        }
        let report = stress::stress(self.host.device(), config, |done| bar.set_position(done));
        bar.finish_and_clear();
        self.out.write_all(report.render().as_bytes())?;
        Ok(if report.passed() { EXIT_OK } else { EXIT_FAILED })
    }

    fn wait(&mut self, timeout_ms: u32, cookie: u64, then: Option<WaitEnd>) -> Result<u8, Problem> {
        let call = format!("DeviceIoControl({})", code_name(protocol::IOCTL_WAIT));
        let transport = |what: &str, error| Problem::Other(format!("{what}: {error}"));
        let request = protocol::WaitRequest::new(timeout_ms, cookie);
        let started = std::time::Instant::now();
        let (ended, session) = if let Some(then) = then {
            // Overlapped: the wait is queued in the driver while `then` happens.
            let session = Session::open_overlapped(self.host.device())
                .map_err(|failure| self.failed(&format!("CreateFileW({WIN32_PATH})"), failure))?;
            let pending = session.start_wait(&request).map_err(|e| transport(&call, e))?;
            let session = match then {
                WaitEnd::Signal => {
                    let other = self.open()?;
                    let signal = format!("DeviceIoControl({})", code_name(protocol::IOCTL_SIGNAL));
                    let reply = other
                        .signal(protocol::SignalScope::All)
                        .map_err(|failure| self.failed(&signal, failure))?;
                    let line = format!("signal: completed {} waits\n", reply.completed);
                    self.out.write_all(line.as_bytes())?;
                    other.close().map_err(|e| transport("CloseHandle", e))?;
                    Some(session)
                }
                WaitEnd::Cancel => {
                    session.cancel().map_err(|e| transport("CancelIoEx", e))?;
                    Some(session)
                }
                WaitEnd::Close => {
                    session.close().map_err(|e| transport("CloseHandle", e))?;
                    None
                }
            };
            (pending.finish(), session)
        } else {
            let session = self.open()?;
            (session.wait(&request), Some(session))
        };
        let line = match ended {
            Ok(reply) => {
                let outcome = protocol::WaitOutcome::from_u32(reply.outcome)
                    .map_or("an unknown outcome", protocol::WaitOutcome::name);
                format!(
                    "wait: {outcome} after {} ms (cookie {}, waits completed since load: {})\n",
                    started.elapsed().as_millis(),
                    reply.cookie,
                    reply.completed_waits
                )
            }
            Err(Failure::Status(protocol::status::CANCELLED)) => {
                format!("wait: cancelled after {} ms\n", started.elapsed().as_millis())
            }
            Err(failure) => return Err(self.failed(&call, failure)),
        };
        self.out.write_all(line.as_bytes())?;
        if let Some(session) = session {
            session.close().map_err(|e| transport("CloseHandle", e))?;
        }
        Ok(EXIT_OK)
    }

    fn bench(&mut self, iterations: u64) -> Result<u8, Problem> {
        let session = self.open()?;
        let call = format!("DeviceIoControl({})", code_name(protocol::IOCTL_BENCH));
        let mut totals = BenchTotals::default();
        let mut left = iterations;
        while left > 0 {
            // One request times at most MAX_BENCH_ITERATIONS pairs; longer runs add up several.
            let chunk = u32::try_from(left).unwrap_or(u32::MAX).min(MAX_BENCH_ITERATIONS);
            let reply = session
                .bench(&BenchRequest::new(chunk))
                .map_err(|failure| self.failed(&call, failure))?;
            totals.add(&reply);
            left -= u64::from(chunk);
        }
        self.out.write_all(totals.render().as_bytes())?;
        session.close().map_err(|error| Problem::Other(format!("CloseHandle: {error}")))?;
        let measured =
            totals.by_address_ticks > 0 && totals.by_handle_ticks > 0 && totals.frequency > 0;
        Ok(if measured { EXIT_OK } else { EXIT_FAILED })
    }
}

/// What `pagelock-test` prints on a host that is not Windows.
pub const NOT_WINDOWS: &str = "pagelock-test drives the pagelock driver on Windows and does \
nothing on this host. Here the same scenarios run against the real pagelock.sys on the test \
bed: pagelock-testbed run (or cargo xtask test).";

/// The exit status on a host that is not Windows.
pub const EXIT_NOT_WINDOWS: u8 = 2;

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::errors::win32;
    use crate::fake::{Fault, Model, Unopenable};

    /// A machine in memory: elevated or not, each call answering as set.
    struct FakeHost {
        elevated: bool,
        device: Model,
        start: Result<Change, u32>,
        stop: Result<Change, u32>,
        calls: RefCell<Vec<String>>,
    }

    impl FakeHost {
        fn new() -> Self {
            Self {
                elevated: true,
                device: Model::correct(),
                start: Ok(Change::Done),
                stop: Ok(Change::Done),
                calls: RefCell::new(Vec::new()),
            }
        }

        fn error(&self, call: &str, code: u32) -> Win32Error {
            Win32Error { call: call.to_owned(), code, message: self.message(code) }
        }
    }

    impl Host for FakeHost {
        type Device = Model;

        fn is_elevated(&self) -> Result<bool, Win32Error> {
            Ok(self.elevated)
        }

        fn device(&self) -> &Model {
            &self.device
        }

        fn install_package(&self, inf: &Path) -> Result<bool, Win32Error> {
            self.calls.borrow_mut().push(format!("install {}", inf.display()));
            Ok(false)
        }

        fn uninstall_package(&self, inf: Option<&Path>) -> Result<Removed, Win32Error> {
            self.calls.borrow_mut().push(format!("uninstall {inf:?}"));
            Ok(Removed { inf: r"C:\Windows\System32\DriverStore\FileRepository\pagelock.inf_amd64_0123456789abcdef\pagelock.inf".into(), need_reboot: false, service_deleted: false })
        }

        fn start_service(&self) -> Result<Change, Win32Error> {
            self.calls.borrow_mut().push("start".into());
            self.start.map_err(|code| self.error("StartServiceW(pagelock)", code))
        }

        fn stop_service(&self) -> Result<Change, Win32Error> {
            self.calls.borrow_mut().push("stop".into());
            self.stop.map_err(|code| self.error("OpenServiceW(pagelock)", code))
        }

        fn message(&self, code: u32) -> String {
            match code {
                5 => "Access is denied.".into(),
                577 => "Windows cannot verify the digital signature for this file.".into(),
                1060 => "The specified service does not exist as an installed service.".into(),
                _ => format!("message {code}"),
            }
        }
    }

    /// Runs `args` against `host`: exit status, stdout, stderr.
    fn run(host: &FakeHost, args: &[&str]) -> (u8, String, String) {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(
            std::iter::once("pagelock-test").chain(args.iter().copied()),
        )
        .expect("valid arguments");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = App::new(host, &mut out, &mut err, false).run(&cli.command);
        (
            status,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn not_elevated_is_said_plainly_before_anything_is_tried() {
        let mut host = FakeHost::new();
        host.elevated = false;
        for command in ["start", "query", "run"] {
            let (status, out, err) = run(&host, &[command]);
            assert_eq!(status, EXIT_FAILED);
            assert!(out.is_empty());
            assert!(err.contains("not running as administrator"), "{err}");
            assert!(err.contains("Run as administrator"));
        }
        assert!(host.calls.borrow().is_empty());
    }

    #[test]
    fn install_installs_then_starts() {
        let host = FakeHost::new();
        let inf = std::env::temp_dir().join("pagelock-test-install.inf");
        std::fs::write(&inf, "[Version]\n").expect("a file");
        let (status, out, _) = run(&host, &["install", inf.to_str().expect("UTF-8")]);
        let _ = std::fs::remove_file(&inf);
        assert_eq!(status, EXIT_OK);
        assert!(out.starts_with("installed the driver package from "), "{out}");
        assert!(out.ends_with("started the pagelock service: pagelock.sys is loaded\n"));
        assert_eq!(host.calls.borrow().len(), 2);
    }

    #[test]
    fn install_refuses_a_missing_inf() {
        let host = FakeHost::new();
        let (status, _, err) = run(&host, &["install", "no-such-dir/pagelock.inf"]);
        assert_eq!(status, EXIT_FAILED);
        assert!(err.contains("is not a file"), "{err}");
        assert!(host.calls.borrow().is_empty());
    }

    #[test]
    fn a_failed_start_names_the_call_the_code_the_text_and_a_hint() {
        let mut host = FakeHost::new();
        host.start = Err(win32::INVALID_IMAGE_HASH);
        let (status, _, err) = run(&host, &["start"]);
        assert_eq!(status, EXIT_FAILED);
        assert!(err.starts_with("pagelock-test start: StartServiceW(pagelock) failed with error 577 (0x00000241): Windows cannot verify"), "{err}");
        assert!(err.contains("hint: Windows does not trust the driver's signature"));
    }

    #[test]
    fn start_and_stop_accept_the_state_they_aim_for() {
        let mut host = FakeHost::new();
        host.start = Ok(Change::Already);
        host.stop = Ok(Change::Already);
        assert_eq!(run(&host, &["start"]).1, "the pagelock service is already running\n");
        assert_eq!(run(&host, &["stop"]).1, "the pagelock service is not running\n");
    }

    #[test]
    fn uninstall_stops_then_removes_the_package() {
        let host = FakeHost::new();
        let (status, out, _) = run(&host, &["uninstall"]);
        assert_eq!(status, EXIT_OK);
        assert!(out.starts_with("stopped the pagelock service"));
        assert!(out.contains("removed the driver package C:\\Windows\\System32\\DriverStore"));
        assert_eq!(*host.calls.borrow(), ["stop", "uninstall None"]);
    }

    #[test]
    fn uninstall_without_a_service_needs_the_inf() {
        let mut host = FakeHost::new();
        host.stop = Err(win32::SERVICE_DOES_NOT_EXIST);
        let (status, _, err) = run(&host, &["uninstall"]);
        assert_eq!(status, EXIT_FAILED);
        assert!(err.contains("error 1060"), "{err}");
        assert!(err.contains("hint: the pagelock service is not installed"));
        let (status, out, _) = run(&host, &["uninstall", "pagelock.inf"]);
        assert_eq!(status, EXIT_OK);
        assert!(out.starts_with("the pagelock service does not exist\nremoved"));
    }

    #[test]
    fn query_prints_a_table_or_json() {
        let host = FakeHost::new();
        let (status, table, _) = run(&host, &["query"]);
        assert_eq!(status, EXIT_OK);
        assert!(table.contains("open handles: 1 (this query's own included)"), "{table}");
        let (_, json, _) = run(&host, &["query", "--json"]);
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(value["sections"][0]["lock_count"], 1);
        assert_eq!(host.device.lock_count(), 0);
    }

    #[test]
    fn a_refused_open_is_reported_as_the_failed_create_file() {
        struct DeniedHost(FakeHost, Unopenable);
        impl Host for DeniedHost {
            type Device = Unopenable;
            fn is_elevated(&self) -> Result<bool, Win32Error> {
                Ok(true)
            }
            fn device(&self) -> &Unopenable {
                &self.1
            }
            fn install_package(&self, inf: &Path) -> Result<bool, Win32Error> {
                self.0.install_package(inf)
            }
            fn uninstall_package(&self, inf: Option<&Path>) -> Result<Removed, Win32Error> {
                self.0.uninstall_package(inf)
            }
            fn start_service(&self) -> Result<Change, Win32Error> {
                self.0.start_service()
            }
            fn stop_service(&self) -> Result<Change, Win32Error> {
                self.0.stop_service()
            }
            fn message(&self, code: u32) -> String {
                self.0.message(code)
            }
        }
        let host =
            DeniedHost(FakeHost::new(), Unopenable::Refused(protocol::status::ACCESS_DENIED));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status =
            App::new(&host, &mut out, &mut err, false).run(&Command::Query { json: false });
        let err = String::from_utf8_lossy(&err);
        assert_eq!(status, EXIT_FAILED);
        assert!(err.starts_with(r"pagelock-test query: CreateFileW(\\.\PageLock) failed with error 5 (0x00000005): Access is denied."), "{err}");
        assert!(err.contains("Run as administrator"));
    }

    #[test]
    fn run_exits_zero_only_when_every_scenario_passes() {
        let host = FakeHost::new();
        let (status, out, _) = run(&host, &["run"]);
        assert_eq!(status, EXIT_OK, "{out}");
        assert!(out.ends_with("scenarios: 13 passed, 0 failed\n"), "{out}");
        let mut broken = FakeHost::new();
        broken.device = Model::with(Fault::UnlockWithoutLock);
        let (status, out, _) = run(&broken, &["run", "--scenario", "nested-locks"]);
        assert_eq!(status, EXIT_FAILED);
        assert!(out.starts_with("FAIL  nested-locks"), "{out}");
    }

    #[test]
    fn stress_reports_and_exits_by_its_checks() {
        let host = FakeHost::new();
        let (status, out, _) = run(&host, &["stress", "--threads", "3", "--iterations", "50"]);
        assert_eq!(status, EXIT_OK, "{out}");
        assert!(out.contains("completed: 150 of 150 cycles"));
        let mut leaking = FakeHost::new();
        leaking.device = Model::with(Fault::LeakOnClose);
        assert_eq!(
            run(&leaking, &["stress", "--threads", "2", "--iterations", "5"]).0,
            EXIT_FAILED
        );
    }

    #[test]
    fn bench_adds_up_requests_beyond_the_per_request_limit() {
        let host = FakeHost::new();
        let (status, out, _) = run(&host, &["bench", "--iterations", "25000"]);
        assert_eq!(status, EXIT_OK);
        assert!(out.starts_with("BENCH: 25000 lock + unlock pairs"), "{out}");
        assert!(out.contains("13.7x"), "{out}");
        let mut zero = FakeHost::new();
        zero.device = Model::with(Fault::ZeroTicks);
        assert_eq!(run(&zero, &["bench", "--iterations", "10"]).0, EXIT_FAILED);
    }
}
