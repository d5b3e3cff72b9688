//! The Wine lane (`cargo xtask wine`): the real pagelock-test.exe drives the real pagelock.sys
//! through Wine, an implementation of Windows nobody here wrote.
//!
//! `CreateFileW` → `NtCreateFile` → wineserver → winedevice.exe hosting the driver → its
//! `IRP_MJ_CREATE`, `IRP_MJ_DEVICE_CONTROL` and `IRP_MJ_CLOSE`; the service control manager
//! loads the driver as the kernel service the INF's `AddService` makes. What Wine 8 (Debian's
//! wine64) lacks is supplied by three stand-ins in `tests/wine/`, each saying what it replaces:
//! `bcryptprimitives.dll` (Rust's std needs `ProcessPrng`), `newdev.dll` (a real
//! `DiInstallDriverW` and `DiUninstallDriverW`) and `ntoswine.dll`, four kernel routines Wine
//! lacks or stubs, which a test copy of the image imports instead of `ntoskrnl.exe` (the
//! import's DLL name renamed to one of the same length, and the checksum; nothing else).
//!
//! The lane makes a fresh prefix under `target/wine`, keeps its wineserver alive for the run
//! (Wine stops its services, unloading the driver, about 2 s after the last program exits),
//! runs the app's commands in order with their expected exit statuses and output, then a
//! negative control that must fail: the same run under a shim that answers IRQL 0, as Wine,
//! which keeps no IRQL, would. It proves the app's Win32 code and the driver under an I/O
//! manager the project did not write; not paging, IRQL rules, Driver Verifier or the Driver
//! Store.

use std::{
    fmt::Write as _,
    fs::File,
    mem::{offset_of, size_of},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use object::{
    LittleEndian as LE, Object,
    pe::{ImageFileHeader, ImageOptionalHeader64},
    read::pe::PeFile64,
};

use crate::{
    cross::{self, Profile},
    pe,
};

/// Debian's wine64 (package wine64): the loader the lane runs every Windows program with.
pub const WINE64: &str = "/usr/lib/wine/wine64";
/// Its server (package wine64).
pub const WINESERVER64: &str = "/usr/lib/wine/wineserver64";
/// Wine's 64-bit PE modules (package libwine): the shim forwards to the ntoskrnl.exe and
/// hal.dll here.
pub const WINE_DLLS: &str = "/usr/lib/x86_64-linux-gnu/wine/x86_64-windows";
/// Where the test app's GNU build lands (`cross::link_app`, a debug build).
const APP_EXE: &str = "target/app-windows/x86_64-pc-windows-gnu/debug/pagelock-test.exe";
/// The C compiler of the stand-ins (package gcc-mingw-w64-x86-64, also the app's linker).
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// The import the test copy of the image renames, and its new name (same length).
const KERNEL: &str = "ntoskrnl.exe";
const SHIM: &str = "ntoswine.dll";
/// The routines `tests/wine/ntoswine.c` defines (as `shim_<name>`); every other import of the
/// driver is forwarded to Wine.
const SHIM_ROUTINES: &[&str] = &[
    "ExAcquireRundownProtection",
    "ExAllocatePool2",
    "ExInitializeRundownProtection",
    "ExReleaseRundownProtection",
    "ExWaitForRundownProtectionRelease",
    "IoCsqInitialize",
    "IoCsqInitializeEx",
    "IoCsqInsertIrp",
    "IoCsqInsertIrpEx",
    "IoCsqRemoveIrp",
    "IoCsqRemoveNextIrp",
    "KeAcquireSpinLockRaiseToDpc",
    "KeCancelTimer",
    "KeFlushQueuedDpcs",
    "KeGetCurrentIrql",
    "KeInitializeDpc",
    "KeInitializeTimerEx",
    "KeReleaseSpinLock",
    "KeSetTimerEx",
    "MmLockPagableDataSection",
];
/// Where forwarded routines go, in order of preference.
const WINE_KERNEL_MODULES: &[&str] = &["ntoskrnl.exe", "hal.dll"];

/// Longest a Wine command may take before the lane kills it and fails the step.
const STEP_TIMEOUT: Duration = Duration::from_mins(3);
/// The stress run gets longer: Wine's IRPs cross a process boundary each.
const STRESS_TIMEOUT: Duration = Duration::from_mins(10);

/// The package's INF inside the prefix (`C:` is `drive_c`).
const INF_WINDOWS_PATH: &str = r"C:\pagelock\package\pagelock.inf";

/// Runs the lane; whether every step went as expected. With `broken_irql`, the shim the lane
/// runs answers IRQL 0 everywhere, so that the lane must fail (a check of the lane itself).
///
/// # Errors
/// When a build or the preparation fails (not when a step has an unexpected result).
pub fn run(broken_irql: bool) -> Result<bool> {
    let started = Instant::now();
    crate::toolchain::ensure_installed()?;
    let sys = cross::build_driver("pagelock", &[], Profile::Release)?;
    cross::link_app()?;
    let root = cross::root();
    let work = root.join("target/wine");
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    let imports = kernel_imports(&std::fs::read(&sys)?)?;
    build_stand_ins(&root.join("tests/wine"), &bin, &imports, broken_irql)?;
    let prefix = work.join("prefix");
    let mut wine = Wine::start(&prefix, &work.join("logs"))?;
    let outcome = prepare_prefix(&wine, &root, &sys, &bin).and_then(|()| lane(&mut wine));
    wine.stop();
    let (expected, total) = outcome?;
    let verdict = if expected == total { "PASS" } else { "FAIL" };
    println!(
        "wine lane: {verdict}: {expected} of {total} steps as expected, in {:.0} s (logs in {})",
        started.elapsed().as_secs_f64(),
        work.join("logs").display()
    );
    Ok(expected == total)
}

/// The names the image imports from `ntoskrnl.exe`.
fn kernel_imports(image: &[u8]) -> Result<Vec<String>> {
    let file = PeFile64::parse(image).context("not a 64-bit PE image")?;
    let mut names: Vec<String> = file
        .imports()?
        .iter()
        .filter(|import| import.library().eq_ignore_ascii_case(KERNEL.as_bytes()))
        .map(|import| String::from_utf8_lossy(import.name()).into_owned())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!("the image imports nothing from {KERNEL}");
    }
    Ok(names)
}

/// A copy of `image` whose import of `ntoskrnl.exe` names the shim instead, with its checksum
/// written again: the name's bytes and the checksum are all that differ.
fn test_copy(image: &[u8]) -> Result<Vec<u8>> {
    let file = PeFile64::parse(image).context("not a 64-bit PE image")?;
    let table = file.import_table()?.context("the image has no import table")?;
    let mut descriptors = table.descriptors()?;
    let mut at = None;
    while let Some(descriptor) = descriptors.next()? {
        let rva = descriptor.name.get(LE);
        if table.name(rva)?.eq_ignore_ascii_case(KERNEL.as_bytes()) {
            let (offset, _) = file
                .section_table()
                .pe_file_range_at(rva)
                .context("the import's name is not in the file")?;
            at = Some(usize::try_from(offset)?);
        }
    }
    let at = at.with_context(|| format!("the image does not import {KERNEL}"))?;
    let checksum_at = usize::try_from(file.dos_header().nt_headers_offset())?
        + 4
        + size_of::<ImageFileHeader>()
        + offset_of!(ImageOptionalHeader64, check_sum);
    let mut copy = image.to_vec();
    copy[at..at + SHIM.len()].copy_from_slice(SHIM.as_bytes());
    let sum = pe::pe_checksum(&copy, checksum_at);
    copy[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_le_bytes());
    let changed = |i: usize| {
        (at..at + SHIM.len()).contains(&i) || (checksum_at..checksum_at + 4).contains(&i)
    };
    if image.iter().zip(&copy).enumerate().any(|(i, (a, b))| a != b && !changed(i)) {
        bail!("the test copy differs from the image outside the import name and the checksum");
    }
    Ok(copy)
}

/// The `.def` of the shim: its own routines, and a forwarder to Wine for every other import.
fn shim_def(imports: &[String]) -> Result<String> {
    let mut exports = Vec::new();
    for module in WINE_KERNEL_MODULES {
        let path = Path::new(WINE_DLLS).join(module);
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let file =
            PeFile64::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
        // A `-stub` of Wine's .spec is exported like any routine, but kills the driver host
        // when called; its stub carries the name `__wine_stub_<name>`, so such names are left
        // out and the driver's import of one fails here instead of at run time.
        let stubs = wine_stubs(&data);
        let names: Vec<Vec<u8>> = file
            .exports()?
            .iter()
            .map(|e| e.name().to_vec())
            .filter(|name| !stubs.contains(name))
            .collect();
        exports.push((*module, names));
    }
    let mut def = format!("LIBRARY {SHIM}\nEXPORTS\n");
    let mut missing = Vec::new();
    for name in imports {
        if SHIM_ROUTINES.contains(&name.as_str()) {
            let _ = writeln!(def, "    {name} = shim_{name}");
        } else if let Some((module, _)) =
            exports.iter().find(|(_, names)| names.iter().any(|n| n == name.as_bytes()))
        {
            let _ = writeln!(def, "    {name} = {module}.{name}");
        } else {
            missing.push(name.as_str());
        }
    }
    if !missing.is_empty() {
        bail!(
            "the driver imports {} that neither Wine ({}) nor tests/wine/ntoswine.c provides",
            missing.join(", "),
            WINE_KERNEL_MODULES.join(", ")
        );
    }
    Ok(def)
}

/// The exports Wine's module `data` has only a stub for: the names after `__wine_stub_`.
fn wine_stubs(data: &[u8]) -> std::collections::BTreeSet<Vec<u8>> {
    const PREFIX: &[u8] = b"__wine_stub_";
    let mut stubs = std::collections::BTreeSet::new();
    let mut rest = data;
    while let Some(at) = rest.windows(PREFIX.len()).position(|window| window == PREFIX) {
        rest = &rest[at + PREFIX.len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        stubs.insert(rest[..end].to_vec());
    }
    stubs
}

/// Compiles the stand-ins into `bin`; the shim twice, the second answering IRQL 0 (the
/// negative control). With `broken_irql` the first one answers IRQL 0 as well.
fn build_stand_ins(src: &Path, bin: &Path, imports: &[String], broken_irql: bool) -> Result<()> {
    let gcc = |out: &Path, sources: &[PathBuf], extra: &[&str]| {
        let mut command = Command::new(MINGW_GCC);
        command.args(["-O2", "-Wall", "-Wextra", "-Werror", "-s", "-shared", "-o"]).arg(out);
        command.args(sources).args(extra);
        crate::toolchain::run(&mut command)
    };
    gcc(
        &bin.join("bcryptprimitives.dll"),
        &[src.join("bcryptprimitives.c"), src.join("bcryptprimitives.def")],
        &["-ladvapi32"],
    )?;
    gcc(&bin.join("newdev.dll"), &[src.join("newdev.c"), src.join("newdev.def")], &["-lsetupapi"])?;
    let def = bin.join("ntoswine.def");
    std::fs::write(&def, shim_def(imports)?)?;
    let shim = [src.join("ntoswine.c"), def];
    let libraries = ["-lntdll", "-lntoskrnl"];
    let zero = ["-DPAGELOCK_WINE_IRQL_ZERO", "-lntdll", "-lntoskrnl"];
    gcc(&bin.join(SHIM), &shim, if broken_irql { &zero } else { &libraries })?;
    let control = bin.join("control");
    std::fs::create_dir_all(&control)?;
    gcc(&control.join(SHIM), &shim, &zero)
}

/// The DLL overrides of `wine64 <args>`: winedbg.exe=d, so that a crash ends the program
/// instead of hanging in the debugger, and no Mono or Gecko installers; for the app, newdev=n
/// too: the stand-in beside it (wineboot needs Wine's own newdev to set the prefix up).
fn overrides(args: &[&str]) -> &'static str {
    if args.first() == Some(&"wineboot") {
        "winedbg.exe=d;mscoree=d;mshtml=d"
    } else {
        "winedbg.exe=d;newdev=n;mscoree=d;mshtml=d"
    }
}

/// A Wine prefix with its server, and the logs of the commands run in it.
struct Wine {
    prefix: PathBuf,
    logs: PathBuf,
    server: Option<Child>,
    count: usize,
}

/// What one Windows command did.
struct Outcome {
    /// Its exit status (`None`: killed after the timeout).
    status: Option<i32>,
    /// Its standard output and error, in that order.
    output: String,
    elapsed: Duration,
}

impl Wine {
    /// A fresh prefix at `prefix`, set up by `wineboot --init`, with a persistent wineserver of
    /// its own.
    ///
    /// wineboot runs under a server of its own, which is let exit before the persistent one
    /// starts: a persistent server from the start leaves two service managers in the prefix,
    /// one that creates the driver's service and one that then cannot find it.
    fn start(prefix: &Path, logs: &Path) -> Result<Self> {
        // A server left by an earlier run would hold the old prefix.
        let _ = Self::server_command(prefix).arg("-k").status();
        for dir in [prefix, logs] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        std::fs::create_dir_all(logs)?;
        let mut wine =
            Self { prefix: prefix.to_path_buf(), logs: logs.to_path_buf(), server: None, count: 0 };
        let boot = wine.run("wineboot", &["wineboot", "--init"], logs, STEP_TIMEOUT)?;
        if boot.status != Some(0) {
            bail!("wineboot --init failed ({:?}):\n{}", boot.status, boot.output);
        }
        // -w: until wineboot's server has exited, with the services it started.
        let mut wait = Self::server_command(prefix).arg("-w").spawn()?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while wait.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = wait.kill();
                bail!("wineboot's wineserver did not exit in {} s", STEP_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = File::create(logs.join("wineserver.txt"))?;
        // -f: in the foreground, so that this process owns it; -p: persistent, so that the
        // services (and the driver) stay up between two commands.
        wine.server = Some(
            Self::server_command(prefix)
                .args(["-f", "-p"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {WINESERVER64}"))?,
        );
        Ok(wine)
    }

    fn server_command(prefix: &Path) -> Command {
        let mut command = Command::new(WINESERVER64);
        command.env("WINEPREFIX", prefix);
        command
    }

    /// `wine64 <args>` in the prefix, with `timeout`; its output goes to a log file (the
    /// services it starts inherit the handles and outlive it, so no pipe could be read to its
    /// end).
    fn run(&mut self, name: &str, args: &[&str], cwd: &Path, timeout: Duration) -> Result<Outcome> {
        self.count += 1;
        let stem: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let out_path = self.logs.join(format!("{:02}-{stem}.out.txt", self.count));
        let err_path = self.logs.join(format!("{:02}-{stem}.err.txt", self.count));
        let start = Instant::now();
        let mut child = Command::new(WINE64)
            .args(args)
            .current_dir(cwd)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEARCH", "win64")
            .env("WINESERVER", WINESERVER64)
            .env("WINEDEBUG", std::env::var("WINEDEBUG").unwrap_or_else(|_| "-all".into()))
            .env("WINEDLLOVERRIDES", overrides(args))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .spawn()
            .with_context(|| format!("starting {WINE64}"))?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status.code();
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default()
            + &std::fs::read_to_string(&err_path).unwrap_or_default();
        Ok(Outcome { status, output, elapsed: start.elapsed() })
    }

    /// Stops the server (and every Wine process of the prefix with it).
    fn stop(&mut self) {
        let _ = Self::server_command(&self.prefix).arg("-k").status();
        if let Some(mut server) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    fn drive_c(&self) -> PathBuf {
        self.prefix.join("drive_c")
    }
}

/// Puts the app with its stand-ins in `C:\pagelock`, the package
/// (the stamped INF and the test copy of the image) in `C:\pagelock\package` and the shim in
/// `C:\windows\system32`, where the driver's import finds it.
fn prepare_prefix(wine: &Wine, root: &Path, sys: &Path, bin: &Path) -> Result<()> {
    let app = wine.drive_c().join("pagelock");
    let package = app.join("package");
    std::fs::create_dir_all(&package)?;
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))
            .map(drop)
    };
    copy(&root.join(APP_EXE), &app.join("pagelock-test.exe"))?;
    copy(&bin.join("bcryptprimitives.dll"), &app.join("bcryptprimitives.dll"))?;
    copy(&bin.join("newdev.dll"), &app.join("newdev.dll"))?;
    copy(&bin.join(SHIM), &wine.drive_c().join("windows/system32").join(SHIM))?;
    // What stampinf does to the template, as far as Wine's setupapi reads it.
    let inx = std::fs::read_to_string(root.join("pagelock.inx"))?;
    std::fs::write(package.join("pagelock.inf"), inx.replace("$ARCH$", "amd64"))?;
    std::fs::write(package.join("pagelock.sys"), test_copy(&std::fs::read(sys)?)?)?;
    Ok(())
}

/// One command of the app and what it must do.
struct Step {
    name: &'static str,
    args: Vec<&'static str>,
    status: i32,
    /// Texts the output must contain.
    says: Vec<&'static str>,
}

fn step(name: &'static str, args: &[&'static str], status: i32, says: &[&'static str]) -> Step {
    Step { name, args: args.to_vec(), status, says: says.to_vec() }
}

/// The app's commands in order, each with its exit status and what it must say.
fn steps() -> Vec<Step> {
    let no_driver = "CreateFileW(\\\\.\\PageLock) failed with error 2";
    let mut steps = vec![
        step("query with no driver", &["query"], 1, &[no_driver]),
        step(
            "install",
            &["install", INF_WINDOWS_PATH],
            0,
            &["installed the driver package", "started the pagelock service"],
        ),
        step("start while running", &["start"], 0, &["already running"]),
        step("query", &["query"], 0, &["open handles: 1", "PAGELK", "PAGEDATA"]),
        step("query --json", &["query", "--json"], 0, &["\"open_handles\": 1"]),
        // Every scenario but close-with-waits: Wine 8 sends no IRP_MJ_CLEANUP (its ntoskrnl
        // dispatches create, close, read, write, flush, ioctl, volume queries and cancel), so a
        // handle closed with waits queued leaves them queued until they expire; the step
        // "wait, then close its handle" below shows what Wine does instead.
        step("run", &["run", "--skip", "close-with-waits"], 0, &[" 0 failed"]),
        // The pending-request scenarios one by one, for a line each in the lane's report.
        step("run waits-expire", &["run", "--scenario", "waits-expire"], 0, &[" 0 failed"]),
        step("run waits-signalled", &["run", "--scenario", "waits-signalled"], 0, &[" 0 failed"]),
        step("run waits-cancelled", &["run", "--scenario", "waits-cancelled"], 0, &[" 0 failed"]),
        step("run many-waits", &["run", "--scenario", "many-waits"], 0, &[" 0 failed"]),
        // bad-input's opens: a name below the device is refused by Wine itself (its server
        // resolves no name below a device, and its IRP_MJ_CREATE carries no FileName), so it
        // never reaches the driver; a directory open reaches it with FILE_DIRECTORY_FILE, and
        // since Wine returns the handle without waiting for the driver's answer, the scenario
        // checks that the driver keeps no state for that handle.
        step(
            "run --verbose",
            &["run", "--verbose", "--skip", "close-with-waits"],
            0,
            &[
                "ok: ",
                "ok: an open of the device as a directory: QUERY_STATE on the handle the I/O \
                 manager gave",
                "an open of a name below the device: refused by Wine itself",
                " 0 failed",
            ],
        ),
        step("stress", &["stress"], 0, &["stress: PASS"]),
        // Every thread on one overlapped handle: Wine's I/O manager lets the requests of the
        // file object into the driver at once.
        step("stress --shared", &["stress", "--shared"], 0, &["stress: PASS"]),
    ];
    steps.extend([
        step("bench", &["bench"], 0, &["ratio: lock by address costs"]),
        // A pended WAIT that the driver's timer completes from its DPC (the shim's timer).
        step(
            "wait",
            &["wait", "--timeout-ms", "200", "--cookie", "7"],
            0,
            &["wait: expired", "cookie 7"],
        ),
        // A long WAIT ended early while it is queued: by a SIGNAL from a second handle, and by
        // CancelIoEx (Wine's IoCancelIrp reaches the queue's cancel routine).
        step(
            "wait, then SIGNAL from another handle",
            &["wait", "--timeout-ms", "30000", "--cookie", "8", "--then", "signal"],
            0,
            &["signal: completed 1 waits", "wait: signalled", "cookie 8"],
        ),
        step(
            "wait, then CancelIoEx",
            &["wait", "--timeout-ms", "30000", "--then", "cancel"],
            0,
            &["wait: cancelled"],
        ),
        // Its handle closed with the wait queued. Windows sends IRP_MJ_CLEANUP, whose drain
        // cancels the wait (the close-with-waits scenario, on the test bed and on Windows);
        // Wine 8 sends none, and holds IRP_MJ_CLOSE until the wait has completed (the IRP
        // keeps the file object, as on Windows): the wait expires, then close releases the
        // handle's locks, which the query after it sees.
        step(
            "wait, then close its handle (Wine: no cleanup)",
            &["wait", "--timeout-ms", "1000", "--cookie", "9", "--then", "close"],
            0,
            &["wait: expired", "cookie 9"],
        ),
        step("query after the close with a wait queued", &["query"], 0, &["open handles: 1"]),
        step("stop", &["stop"], 0, &["stopped the pagelock service"]),
        step("stop while stopped", &["stop"], 0, &["not running"]),
        step("start", &["start"], 0, &["started the pagelock service"]),
        // Wine has no Driver Store: DIRID 13 is C:\windows\system32\unknown to it, so the app
        // finds the service's package outside the store and asks for the INF (it stops the
        // service first).
        step(
            "uninstall without the INF",
            &["uninstall"],
            1,
            &["stopped the pagelock service", "outside the Driver Store: pass the package's INF"],
        ),
        step(
            "uninstall",
            &["uninstall", INF_WINDOWS_PATH],
            0,
            &["not running", "removed the driver package"],
        ),
        step("start after uninstall", &["start"], 1, &["error 1060"]),
    ]);
    steps
}

/// Runs the steps and the negative control, printing a line each; (as expected, total).
fn lane(wine: &mut Wine) -> Result<(usize, usize)> {
    let app = wine.drive_c().join("pagelock");
    let mut results = Vec::new();
    for step in steps() {
        let mut args = vec!["pagelock-test.exe"];
        args.extend(&step.args);
        let timeout = if step.name.starts_with("stress") { STRESS_TIMEOUT } else { STEP_TIMEOUT };
        let outcome = wine.run(step.name, &args, &app, timeout)?;
        results.push(report(&step, &outcome, ""));
    }
    // The negative control: the same driver under a shim that answers IRQL 0, as Wine (which
    // keeps no IRQL) would. run-locked must see it. A fresh driver host loads the new shim: the
    // driver was uninstalled above, and installing it again starts a new service.
    let system32 = wine.drive_c().join("windows/system32");
    let control = cross::root().join("target/wine/bin/control").join(SHIM);
    std::fs::copy(&control, system32.join(SHIM))?;
    let install = step(
        "control: install under the IRQL-0 shim",
        &["install", INF_WINDOWS_PATH],
        0,
        &["started the pagelock service"],
    );
    let outcome = wine.run(
        install.name,
        &["pagelock-test.exe", "install", INF_WINDOWS_PATH],
        &app,
        STEP_TIMEOUT,
    )?;
    results.push(report(&install, &outcome, ""));
    let run_locked = step(
        "control: run-locked under the IRQL-0 shim",
        &["run", "--scenario", "run-locked"],
        1,
        &["FAIL  run-locked", "IRQL\n        expected: 2\n        seen:     0"],
    );
    let outcome = wine.run(
        run_locked.name,
        &["pagelock-test.exe", "run", "--scenario", "run-locked"],
        &app,
        STEP_TIMEOUT,
    )?;
    results.push(report(&run_locked, &outcome, " (the control failed, as it must)"));
    let expected = results.iter().filter(|&&ok| ok).count();
    Ok((expected, results.len()))
}

/// Prints one line for a step; whether it went as expected.
fn report(step: &Step, outcome: &Outcome, when_expected: &str) -> bool {
    let mut problems = Vec::new();
    match outcome.status {
        None => problems.push(format!("timed out after {} s", outcome.elapsed.as_secs())),
        Some(status) if status != step.status => {
            problems.push(format!("exit {status}, expected {}", step.status));
        }
        Some(_) => {}
    }
    for text in &step.says {
        if !outcome.output.contains(text) {
            problems.push(format!("no {text:?} in its output"));
        }
    }
    let command = format!("pagelock-test {}", step.args.join(" "));
    let time = outcome.elapsed.as_secs_f64();
    if problems.is_empty() {
        println!("  ok    {:<42} exit {}, {time:.1} s{when_expected}", step.name, step.status);
        true
    } else {
        println!("  FAIL  {:<42} {}", step.name, problems.join("; "));
        println!("        {command}:");
        for line in outcome.output.lines().take(40) {
            println!("        | {line}");
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_of_the_app_is_a_step() {
        let all = steps();
        for command in
            ["query", "install", "start", "stop", "run", "stress", "bench", "wait", "uninstall"]
        {
            assert!(all.iter().any(|s| s.args[0] == command), "{command}");
        }
        assert!(all.iter().any(|s| s.args == ["stress", "--shared"]));
    }

    #[test]
    fn wine_stubs_are_read_from_their_names() {
        let data = b"x\0__wine_stub_IoCsqInsertIrp\0y__wine_stub_KeFoo\0";
        let stubs = wine_stubs(data);
        assert!(
            stubs.contains(b"IoCsqInsertIrp".as_slice()) && stubs.contains(b"KeFoo".as_slice())
        );
        assert_eq!(stubs.len(), 2);
    }

    #[test]
    fn the_shim_name_has_the_length_of_the_kernel_name() {
        assert_eq!(SHIM.len(), KERNEL.len());
    }
}
