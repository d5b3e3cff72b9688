//! A driver on the bed: load, open, control, close, unload, and the report of what happened.

use std::{
    ffi::c_void,
    path::Path,
    sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use pagelock_ddk as ddk;
use pagelock_protocol::status;
use serde::{Deserialize, Serialize};

use crate::{
    bugcheck::Bugcheck,
    image::{self, Image},
    io::{self, Caller},
    kernel::{self, Kernel, MmSection, State},
    rules::{Rule, Violation},
};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Force IRQL checking (page out unlocked sections on every raise to `DISPATCH_LEVEL`).
    pub force_irql: bool,
    /// The caller's identity for the access check at create.
    pub caller: Caller,
    /// The access handles are opened with (`FILE_READ_DATA` 1 | `FILE_WRITE_DATA` 2).
    pub access: u32,
    /// Fault injection: fail the Nth call of this routine.
    pub fail_call: Option<(String, u64)>,
}

impl Default for Options {
    fn default() -> Self {
        Self { force_irql: true, caller: Caller::Admin, access: 3, fail_call: None }
    }
}

/// An open handle.
pub struct Handle {
    file: Box<ddk::FILE_OBJECT>,
    device: usize,
    access: u32,
}

// SAFETY: the file object is only touched by the driver through the I/O manager, which the
// bed serialises per handle as Windows does for a synchronous handle.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// A section's state in a report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SectionReport {
    /// Name.
    pub name: String,
    /// Lock count now.
    pub lock_count: i64,
    /// Faults that paged it back in.
    pub page_ins: u64,
    /// Times it was paged out.
    pub page_outs: u64,
}

/// What a run did, for people and for JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// What the bed did, in order (IRPs with their status and output).
    pub events: Vec<String>,
    /// Lock counts of the pageable sections after each step: (step, [(section, count)]).
    pub timeline: Vec<(String, Vec<(String, i64)>)>,
    /// The pageable sections at the end.
    pub sections: Vec<SectionReport>,
    /// `DbgPrint` output.
    pub log: Vec<String>,
    /// Rules that fired.
    pub violations: Vec<Violation>,
    /// The bugcheck that stopped the run, if any.
    pub bugcheck: Option<Bugcheck>,
    /// Failable calls made, in order (for fault injection).
    pub failable_calls: Vec<String>,
    /// Failures injected.
    pub injected: u64,
    /// Pool blocks still allocated.
    pub pool_outstanding: usize,
    /// Output of the scenario suite, when one ran.
    pub scenarios: Option<String>,
    /// Whether every scenario passed, when one ran.
    pub scenarios_passed: Option<bool>,
}

impl Report {
    /// A clean run: no violation and no bugcheck (and the scenarios passed, if any ran).
    #[must_use]
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
            && self.bugcheck.is_none()
            && self.scenarios_passed != Some(false)
    }
}

/// The report from the kernel state alone (also used when a bugcheck stops the run).
#[must_use]
pub fn partial_report(state: Option<&State>, bugcheck: Option<Bugcheck>) -> Report {
    let sections = kernel::try_kernel().map_or_else(Vec::new, |k| {
        k.sections
            .iter()
            .filter(|s| s.pageable)
            .map(|s| SectionReport {
                name: s.name.clone(),
                lock_count: s.count.load(Ordering::SeqCst),
                page_ins: s.page_ins.load(Ordering::Relaxed),
                page_outs: s.page_outs.load(Ordering::Relaxed),
            })
            .collect()
    });
    let mut report = Report { sections, bugcheck, ..Report::default() };
    if let Some(state) = state {
        report.events.clone_from(&state.events);
        report.timeline.clone_from(&state.timeline);
        report.log.clone_from(&state.log);
        report.violations.clone_from(&state.violations);
        report.failable_calls = state.failable_calls.iter().map(|s| (*s).to_owned()).collect();
        report.injected = state.injected;
        report.pool_outstanding = state.pool.len();
    }
    report
}

/// A driver loaded on the bed.
pub struct Bed {
    image: Image,
    driver: Box<ddk::DRIVER_OBJECT>,
    options: Options,
    open_handles: AtomicI64,
    unloaded: AtomicBool,
    _registry: Vec<u16>,
}

// SAFETY: the driver object is shared with the driver the way the kernel shares it.
unsafe impl Send for Bed {}
// SAFETY: as above; the bed's own mutable state is behind the kernel's lock or atomics.
unsafe impl Sync for Bed {}

/// `DriverEntry` and `DriverUnload`, called the Win64 way.
type Entry = unsafe extern "win64" fn(*mut ddk::DRIVER_OBJECT, *const ddk::UNICODE_STRING) -> i32;
type Unload = unsafe extern "win64" fn(*mut ddk::DRIVER_OBJECT);

impl Bed {
    /// Maps the image, installs the emulated kernel and runs `DriverEntry`. A failed
    /// `DriverEntry` returns its status in `Ok(Err(..))`; Windows never unloads such a driver.
    ///
    /// # Errors
    /// When the image cannot be loaded (not a PE, an unsupported import, named).
    pub fn load(path: &Path, options: Options) -> Result<std::result::Result<Self, (i32, Report)>> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = image::map(&data, kernel::resolve)?;
        let base = image.base.as_ptr() as usize;
        let sections = image
            .sections
            .iter()
            .map(|s| MmSection {
                name: s.name.clone(),
                start: base + s.rva,
                end: base + s.rva + s.size,
                prot: s.prot,
                pageable: s.pageable,
                discardable: s.discardable,
                count: AtomicI64::new(0),
                present: AtomicBool::new(true),
                discarded: AtomicBool::new(false),
                page_ins: AtomicU64::new(0),
                page_outs: AtomicU64::new(0),
            })
            .collect();
        let k = kernel::install(Kernel {
            sections,
            force_irql: options.force_irql,
            state: std::sync::Mutex::new(State {
                fail_call: options.fail_call.clone(),
                ..State::default()
            }),
            start: Instant::now(),
        });
        crate::bugcheck::install_fault_handler();

        let mut driver = Box::new(ddk::DRIVER_OBJECT::default());
        driver.Type = 4;
        driver.DriverStart = image.base.as_ptr().cast();
        driver.DriverSize = u32::try_from(image.size).unwrap_or(u32::MAX);
        let registry: Vec<u16> = r"\Registry\Machine\System\CurrentControlSet\Services\pagelock"
            .encode_utf16()
            .collect();
        let path_string = ddk::UNICODE_STRING {
            Length: u16::try_from(registry.len() * 2).unwrap_or(0),
            MaximumLength: u16::try_from(registry.len() * 2).unwrap_or(0),
            Buffer: registry.as_ptr().cast_mut(),
        };
        let entry = base + image.entry;
        // SAFETY: the entry point of the mapped, relocated, bound image, called as Windows calls it.
        let status = unsafe {
            let entry: Entry = std::mem::transmute::<usize, Entry>(entry);
            entry(&raw mut *driver, &raw const path_string)
        };
        k.record_event(format!("DriverEntry -> {status:#010x} {}", status::name(status)));
        // The loader frees INIT once DriverEntry returns, whatever it returned.
        for s in &k.sections {
            if s.discardable {
                s.discarded.store(true, Ordering::SeqCst);
                s.page_out();
            }
        }
        k.snapshot("after DriverEntry");
        if !status::is_success(status) {
            let report = partial_report(Some(&k.state()), None);
            return Ok(Err((status, report)));
        }
        if driver.DriverUnload.is_none() {
            bail!("DriverEntry succeeded but set no DriverUnload");
        }
        // Nothing is locked once the driver is idle: the memory manager may page it all out.
        k.page_out_unlocked();
        Ok(Ok(Self {
            image,
            driver,
            options,
            open_handles: AtomicI64::new(0),
            unloaded: AtomicBool::new(false),
            _registry: registry,
        }))
    }

    fn device_named(&self, name: &str) -> Option<usize> {
        let state = kernel::kernel().state();
        let target = state.links.get(name).cloned().unwrap_or_else(|| name.to_owned());
        state.devices.iter().find(|d| d.name == target).map(|d| d.object)
    }

    /// Opens `name` (a device or a link), as `CreateFileW` would.
    ///
    /// # Errors
    /// The status the open failed with: `STATUS_OBJECT_NAME_NOT_FOUND`, the access check's
    /// `STATUS_ACCESS_DENIED`, or the driver's.
    pub fn open(&self, name: &str) -> std::result::Result<Handle, i32> {
        let k = kernel::kernel();
        let Some(device) = self.device_named(name) else {
            return Err(0xC000_0034_u32.cast_signed());
        };
        if !io::access_check(device, self.options.caller, self.options.access.max(1)) {
            k.record_event(format!(
                "create {name}: access denied by the device's DACL (caller {:?})",
                self.options.caller
            ));
            return Err(status::ACCESS_DENIED);
        }
        let mut file = Box::new(ddk::FILE_OBJECT::default());
        file.Type = 5;
        file.DeviceObject = device as *mut ddk::DEVICE_OBJECT;
        let completion = io::send(
            &raw const *self.driver as *mut _,
            device as *mut _,
            &raw mut *file,
            0x00,
            std::ptr::null_mut(),
            0,
            |_| {},
        );
        k.record_event(format!(
            "IRP_MJ_CREATE -> {:#010x} {}",
            completion.status,
            status::name(completion.status)
        ));
        k.snapshot("after create");
        if !status::is_success(completion.status) {
            // A failed create gets no cleanup or close.
            return Err(completion.status);
        }
        self.open_handles.fetch_add(1, Ordering::SeqCst);
        Ok(Handle { file, device, access: self.options.access })
    }

    /// Sends a control request (`METHOD_BUFFERED`), returning the status and the reply bytes.
    pub fn control(
        &self,
        handle: &Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> (i32, Vec<u8>) {
        let k = kernel::kernel();
        let required = (code >> 14) & 3;
        if required & handle.access != required {
            k.record_event(format!("IOCTL {code:#010x}: access denied by the I/O manager"));
            return (status::ACCESS_DENIED, Vec::new());
        }
        let method = code & 3;
        let size = input.len().max(output_capacity);
        // The system buffer: input copied in, the rest poisoned so unwritten output shows.
        let mut buffer = vec![0xCDu8; size.max(1)];
        buffer[..input.len()].copy_from_slice(input);
        let system_buffer = if size == 0 || method != 0 {
            std::ptr::null_mut()
        } else {
            buffer.as_mut_ptr().cast::<c_void>()
        };
        let handle_file: *const ddk::FILE_OBJECT = &raw const *handle.file;
        let completion = io::send(
            &raw const *self.driver as *mut _,
            handle.device as *mut _,
            handle_file.cast_mut(),
            0x0E,
            system_buffer,
            output_capacity,
            |stack| {
                let params = ddk::_IO_STACK_LOCATION__bindgen_ty_1__bindgen_ty_17 {
                    OutputBufferLength: u32::try_from(output_capacity).unwrap_or(u32::MAX),
                    InputBufferLength: u32::try_from(input.len()).unwrap_or(u32::MAX),
                    IoControlCode: code,
                    Type3InputBuffer: std::ptr::null_mut(),
                    ..Default::default()
                };
                stack.Parameters.DeviceIoControl = params;
            },
        );
        // Windows copies back Information bytes, only when the status is not an error.
        let output = if status::is_success(completion.status) {
            let n = usize::try_from(completion.information).unwrap_or(0).min(output_capacity);
            buffer[..n].to_vec()
        } else {
            Vec::new()
        };
        k.record_event(format!(
            "IOCTL {code:#010x} in {} out {output_capacity} -> {:#010x} {} [{}]",
            input.len(),
            completion.status,
            status::name(completion.status),
            hex(&output)
        ));
        k.snapshot(&format!("after IOCTL {code:#x}"));
        (completion.status, output)
    }

    /// Closes a handle: cleanup, then close, as the I/O manager sends them.
    pub fn close(&self, mut handle: Handle) {
        let k = kernel::kernel();
        for (major, name) in [(0x12u8, "IRP_MJ_CLEANUP"), (0x02, "IRP_MJ_CLOSE")] {
            let completion = io::send(
                &raw const *self.driver as *mut _,
                handle.device as *mut _,
                &raw mut *handle.file,
                major,
                std::ptr::null_mut(),
                0,
                |_| {},
            );
            k.record_event(format!(
                "{name} -> {:#010x} {}",
                completion.status,
                status::name(completion.status)
            ));
        }
        k.snapshot("after close");
        if self.open_handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            for s in k.sections.iter().filter(|s| s.pageable) {
                let count = s.count.load(Ordering::SeqCst);
                if count != 0 {
                    k.violation(
                        Rule::LockedAfterLastClose,
                        format!("{} has lock count {count} after the last close", s.name),
                    );
                }
            }
        }
        k.page_out_unlocked();
    }

    /// Lock counts of the pageable sections, as the memory manager keeps them.
    #[must_use]
    pub fn lock_counts(&self) -> Vec<(String, i64)> {
        kernel::kernel()
            .sections
            .iter()
            .filter(|s| s.pageable)
            .map(|s| (s.name.clone(), s.count.load(Ordering::SeqCst)))
            .collect()
    }

    /// Runs `DriverUnload` and checks that nothing is left behind.
    pub fn unload(&self) {
        if self.unloaded.swap(true, Ordering::SeqCst) {
            return;
        }
        let k = kernel::kernel();
        let unload = self.driver.DriverUnload.expect("checked at load");
        // SAFETY: the unload routine of the loaded image, called the Win64 way.
        unsafe {
            let unload: Unload = std::mem::transmute::<
                unsafe extern "C" fn(*mut ddk::DRIVER_OBJECT),
                Unload,
            >(unload);
            unload(&raw const *self.driver as *mut _);
        }
        k.record_event("DriverUnload".to_owned());
        k.snapshot("after unload");
        let mut state = k.state();
        for s in k.sections.iter().filter(|s| s.pageable) {
            let count = s.count.load(Ordering::SeqCst);
            if count != 0 {
                state.violations.push(Violation::new(
                    Rule::LockedAtUnload,
                    format!("{} has lock count {count} at unload", s.name),
                    false,
                ));
            }
        }
        let leaks: Vec<String> = state
            .pool
            .iter()
            .map(|(a, (size, tag))| {
                format!(
                    "{a:#x}: {size} bytes, tag {:?}",
                    String::from_utf8_lossy(&tag.to_le_bytes())
                )
            })
            .collect();
        if !leaks.is_empty() {
            state.violations.push(Violation::new(
                Rule::PoolLeakedAtUnload,
                leaks.join("; "),
                false,
            ));
        }
        let devices: Vec<String> = state.devices.iter().map(|d| d.name.clone()).collect();
        if !devices.is_empty() {
            state.violations.push(Violation::new(
                Rule::DeviceLeftAtUnload,
                devices.join(", "),
                false,
            ));
        }
        let links: Vec<String> = state.links.keys().cloned().collect();
        if !links.is_empty() {
            state.violations.push(Violation::new(Rule::LinkLeftAtUnload, links.join(", "), false));
        }
    }

    /// The report so far.
    #[must_use]
    pub fn report(&self) -> Report {
        let _ = &self.image;
        partial_report(Some(&kernel::kernel().state()), None)
    }
}

/// Bytes as hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
