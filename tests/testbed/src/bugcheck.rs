//! Stopping the run: a bugcheck (from the driver, a rule, or a fault) ends the child process
//! that hosts the driver, after writing what happened to the report channel.

use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicI32, Ordering},
};

use serde::{Deserialize, Serialize};

use crate::{
    kernel::{self, DISPATCH_LEVEL},
    rules::{Rule, Violation},
};

/// Where the child writes its final report (a pipe to the parent), or -1.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Sets the report channel.
pub fn set_report_fd(fd: RawFd) {
    REPORT_FD.store(fd, Ordering::SeqCst);
}

/// A bugcheck, as the report shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bugcheck {
    /// The code.
    pub code: u32,
    /// Its four parameters.
    pub parameters: [u64; 4],
    /// What happened.
    pub detail: String,
}

/// Writes `bytes` to the report channel (async-signal-safe: `write` only).
pub fn write_report(bytes: &[u8]) {
    let fd = REPORT_FD.load(Ordering::SeqCst);
    let mut rest = bytes;
    while fd >= 0 && !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer; the fd is the pipe set up by the parent.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        rest = &rest[n..];
    }
}

/// Stops the run with a bugcheck: records the violation, writes the report, exits the child.
pub fn stop(code: u32, parameters: [u64; 4], rule: Rule, detail: String) -> ! {
    let k = kernel::kernel();
    let bugcheck = Bugcheck { code, parameters, detail: detail.clone() };
    let report = {
        let mut state = k.state.try_lock().ok();
        if let Some(state) = state.as_mut() {
            state.violations.push(Violation::new(rule, detail, true));
        }
        crate::bed::partial_report(state.as_deref(), Some(bugcheck))
    };
    write_report(&serde_json::to_vec(&report).unwrap_or_default());
    // SAFETY: ends the child at once: the driver's state is not to be trusted any more.
    unsafe { libc::_exit(1) }
}

/// Installs the fault handler: page-ins at low IRQL, bugchecks at `DISPATCH_LEVEL`, and the
/// `mov cr8` emulation.
///
/// # Panics
/// When `sigaction` fails.
pub fn install_fault_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
    // `extern "C" fn(i32, *mut siginfo_t, *mut c_void)` as SA_SIGINFO requires.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&raw mut action.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSEGV, &raw const action, std::ptr::null_mut()), 0);
        assert_eq!(libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut()), 0);
    }
}

/// Emulates `mov cr8, r64` (44 0F 22 C0+r) and `mov r64, cr8` (44 0F 20 C0+r); returns the
/// instruction length when it was one.
///
/// # Safety
/// `context` is the faulting thread's context; `rip` points at readable code.
unsafe fn emulate_cr8(context: &mut libc::ucontext_t, rip: *const u8) -> bool {
    // SAFETY: the caller guarantees the instruction bytes are readable.
    let bytes = unsafe { std::slice::from_raw_parts(rip, 4) };
    let (rex, op, modrm) = (bytes[0], bytes[2], bytes[3]);
    if !(rex & 0xF4 == 0x44
        && bytes[1] == 0x0F
        && (op == 0x22 || op == 0x20)
        && modrm & 0xF8 == 0xC0)
    {
        return false;
    }
    let register = usize::from(modrm & 7) + if rex & 1 != 0 { 8 } else { 0 };
    // Linux's gregs order for rax..r15.
    const GREG: [usize; 16] = [
        libc::REG_RAX as usize,
        libc::REG_RCX as usize,
        libc::REG_RDX as usize,
        libc::REG_RBX as usize,
        libc::REG_RSP as usize,
        libc::REG_RBP as usize,
        libc::REG_RSI as usize,
        libc::REG_RDI as usize,
        libc::REG_R8 as usize,
        libc::REG_R9 as usize,
        libc::REG_R10 as usize,
        libc::REG_R11 as usize,
        libc::REG_R12 as usize,
        libc::REG_R13 as usize,
        libc::REG_R14 as usize,
        libc::REG_R15 as usize,
    ];
    let slot = &mut context.uc_mcontext.gregs[GREG[register]];
    if op == 0x22 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // IRQL is 4 bits
        kernel::set_irql((*slot as u64 & 0xF) as u8);
    } else {
        *slot = i64::from(kernel::irql());
    }
    context.uc_mcontext.gregs[libc::REG_RIP as usize] += 4;
    true
}

extern "C" fn on_fault(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers to an SA_SIGINFO handler.
    let (address, context) =
        unsafe { ((*info).si_addr() as usize, &mut *context.cast::<libc::ucontext_t>()) };
    let rip = context.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    let error = context.uc_mcontext.gregs[libc::REG_ERR as usize];
    let Some(k) = kernel::try_kernel() else {
        // SAFETY: not the bed's fault: restore the default action and let it happen again.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
        return;
    };
    let in_image = k.section_of(rip).is_some();
    // A privileged instruction (general protection: si_addr 0) in the driver's code.
    if address == 0 && in_image {
        // SAFETY: `rip` is inside the mapped image, whose code is readable.
        if unsafe { emulate_cr8(context, rip as *const u8) } {
            return;
        }
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(rip as *const u8, 8) };
        stop(
            0x1E,
            [0xC000_0096, rip as u64, 0, 0],
            Rule::DriverBugcheck,
            format!(
                "privileged or GS-relative instruction {bytes:02x?} at {} (not emulated)",
                k.describe(rip)
            ),
        );
    }
    let write = error & 2 != 0;
    let execute = address == rip;
    let access = if execute {
        "execute"
    } else if write {
        "write"
    } else {
        "read"
    };
    match k.section_of(address) {
        Some((_, s)) if s.discarded.load(Ordering::SeqCst) => stop(
            0x50,
            [address as u64, u64::from(write), rip as u64, 0],
            Rule::DiscardedSectionTouched,
            format!(
                "{access} of {} after DriverEntry, from {}",
                k.describe(address),
                k.describe(rip)
            ),
        ),
        Some((_, s)) if s.pageable && !s.present.load(Ordering::SeqCst) => {
            if kernel::irql() < DISPATCH_LEVEL {
                s.page_ins.fetch_add(1, Ordering::Relaxed);
                s.page_in();
                return;
            }
            let (code, rule) = if execute {
                (0xD3, Rule::PageableCodeAtDispatch)
            } else {
                (0xD1, Rule::PageFaultAtDispatch)
            };
            stop(
                code,
                [address as u64, u64::from(kernel::irql()), u64::from(write), rip as u64],
                rule,
                format!(
                    "{access} of {} at IRQL {} from {}",
                    k.describe(address),
                    kernel::irql(),
                    k.describe(rip)
                ),
            )
        }
        _ => stop(
            0x50,
            [address as u64, u64::from(write), rip as u64, 0],
            Rule::DriverBugcheck,
            format!("{access} of {address:#x} from {}: access violation", k.describe(rip)),
        ),
    }
}
