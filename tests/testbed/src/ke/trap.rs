//! Traps in the driver, as the kernel's page-fault and general-protection handlers take them.
//!
//! Page-ins of paged-out sections below `DISPATCH_LEVEL`, the `mov cr8` emulation, and every
//! other fault turned into a bugcheck.
//!
//! The signal handler is async-signal-safe: it reads the memory manager through an atomic load,
//! changes protections with `mprotect`, and touches only atomics and `const` thread-locals. When a
//! fault is fatal it does not report from inside the handler: it records the fault in thread-locals
//! and resumes the thread in `report_fault`, on the same stack below the faulting frame, outside
//! signal context, where formatting and writing the report are safe.

use std::cell::Cell;

use crate::{
    ke::irql::{self, DISPATCH_LEVEL},
    mm, record,
    verifier::Rule,
};

/// What the handler found, for [`report_fault`].
#[derive(Clone, Copy)]
struct Pending {
    rule: Option<Rule>,
    signal: i32,
    address: usize,
    rip: usize,
    write: bool,
    execute: bool,
    irql: u8,
    bytes: [u8; 16],
    len: usize,
    gs: bool,
}

const NONE: Pending = Pending {
    rule: None,
    signal: 0,
    address: 0,
    rip: 0,
    write: false,
    execute: false,
    irql: 0,
    bytes: [0; 16],
    len: 0,
    gs: false,
};

thread_local! {
    static PENDING: Cell<Pending> = const { Cell::new(NONE) };
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Installs the handler for `SIGSEGV`, `SIGBUS`, `SIGILL` and `SIGTRAP`.
///
/// # Errors
/// When `sigaction` fails.
pub fn install() -> anyhow::Result<()> {
    for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGTRAP] {
        // SAFETY: all-zero bytes are a valid sigaction (a plain C structure).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        // SAFETY: initialises the mask of the sigaction above.
        unsafe { libc::sigemptyset(&raw mut action.sa_mask) };
        // SAFETY: the handler has the signature SA_SIGINFO requires and stays for the process.
        let result = unsafe { libc::sigaction(signal, &raw const action, std::ptr::null_mut()) };
        if result != 0 {
            anyhow::bail!("sigaction({signal}) failed");
        }
    }
    Ok(())
}

/// Linux's `gregs` index of each `x86_64` register number (rax, rcx, ... r15).
const GREGS: [libc::c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

fn greg(index: libc::c_int) -> usize {
    usize::try_from(index).unwrap_or(0)
}

/// Emulates `mov cr8, r64` (`REX.R 0F 22 /r`) and `mov r64, cr8` (`REX.R 0F 20 /r`), the WDK's
/// inline `KeRaiseIrql`/`KeLowerIrql`/`KeGetCurrentIrql`; true when the instruction was one.
fn emulate_cr8(gregs: &mut [libc::greg_t], code: &[u8]) -> bool {
    let [rex, 0x0F, op @ (0x20 | 0x22), modrm, ..] = *code else { return false };
    // REX with R set (CR8 rather than CR0), register-direct ModRM, reg field 0.
    if rex & 0xF4 != 0x44 || modrm & 0xF8 != 0xC0 {
        return false;
    }
    let register = usize::from(modrm & 7) + if rex & 1 != 0 { 8 } else { 0 };
    let slot = greg(GREGS[register]);
    if op == 0x22 {
        // IRQL is the low 4 bits of CR8.
        irql::set(u8::try_from(gregs[slot] & 0xF).unwrap_or(0));
    } else {
        gregs[slot] = i64::from(irql::current());
    }
    gregs[greg(libc::REG_RIP)] += 4;
    true
}

/// Whether the instruction has a GS segment prefix (before its REX/opcode bytes).
fn has_gs_prefix(code: &[u8]) -> bool {
    code.iter()
        .take_while(|b| {
            matches!(b, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3)
        })
        .any(|b| *b == 0x65)
}

extern "C" fn on_signal(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler, used only here.
    let context = unsafe { &mut *context.cast::<libc::ucontext_t>() };
    // SAFETY: the kernel passes a valid siginfo, used only here.
    let info = unsafe { &*info };
    // SAFETY: SIGSEGV, SIGBUS, SIGILL and SIGTRAP all fill si_addr.
    let address = unsafe { info.si_addr() } as usize;
    let si_code = info.si_code;
    let gregs = &mut context.uc_mcontext.gregs;
    let rip = usize::try_from(gregs[greg(libc::REG_RIP)]).unwrap_or(0);
    let error = gregs[greg(libc::REG_ERR)];
    let Some(mm) = mm::try_get().filter(|_| !REPORTING.with(Cell::get)) else {
        // Not the driver's fault, or a fault while reporting one: die of it.
        // SAFETY: restores the default action; the instruction faults again and ends the process.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
        return;
    };
    // The instruction's bytes, when it is in the image (its code section is readable).
    let mut bytes = [0u8; 16];
    let mut len = 0;
    if let Some((_, section)) = mm.section_of(rip)
        && section.present.load(std::sync::atomic::Ordering::SeqCst)
    {
        len = (section.end - rip).min(16);
        // SAFETY: `rip..rip + len` lies in a present section of the image, which is readable.
        unsafe { std::ptr::copy_nonoverlapping(rip as *const u8, bytes.as_mut_ptr(), len) };
    }
    let code = &bytes[..len];
    let write = error & 2 != 0;
    let execute = error & 0x10 != 0 || address == rip;
    let irql = irql::current();
    let mut pending = Pending { signal, address, rip, write, execute, irql, bytes, len, ..NONE };

    pending.rule = match signal {
        libc::SIGSEGV | libc::SIGBUS if si_code == libc::SI_KERNEL => {
            // A general-protection fault: a privileged instruction or a bad address form.
            if emulate_cr8(gregs, code) {
                return;
            }
            pending.gs = has_gs_prefix(code);
            Some(Rule::UnsupportedInstruction)
        }
        libc::SIGSEGV | libc::SIGBUS => match page_fault(mm, &pending) {
            Some(rule) => {
                pending.gs = rule == Rule::InvalidAccess && has_gs_prefix(code);
                Some(rule)
            }
            // Paged in, or by another thread since the fault: the instruction is retried.
            None => return,
        },
        _ => Some(Rule::UnsupportedInstruction),
    };
    PENDING.with(|p| p.set(pending));
    REPORTING.with(|r| r.set(true));
    // Resume in `report_fault`, as if called from the faulting instruction, below its frame (past
    // any red zone), with the stack aligned as at a call.
    let rsp = usize::try_from(gregs[greg(libc::REG_RSP)]).unwrap_or(0);
    let new_rsp = ((rsp - 1024) & !15) - 8;
    gregs[greg(libc::REG_RSP)] = i64::try_from(new_rsp).unwrap_or(0);
    gregs[greg(libc::REG_RIP)] = report_fault as *const () as i64;
}

/// A page fault at `p.address` (by the instruction at `p.rip`): None when the instruction can be
/// retried, a section of the image paged back in (below `DISPATCH_LEVEL`) or present again, or
/// else the rule it breaks (async-signal-safe).
fn page_fault(mm: &mm::Mm, p: &Pending) -> Option<Rule> {
    use std::sync::atomic::Ordering::SeqCst;
    if let Some(rule) = mm.gone(p.address) {
        return Some(rule);
    }
    let Some((_, s)) = mm.section_of(p.address) else { return Some(Rule::InvalidAccess) };
    if !s.pageable() {
        return Some(Rule::InvalidAccess);
    }
    let allowed = if p.execute {
        s.prot & libc::PROT_EXEC != 0
    } else if p.write {
        s.prot & libc::PROT_WRITE != 0
    } else {
        s.prot & libc::PROT_READ != 0
    };
    if !allowed {
        Some(Rule::InvalidAccess)
    } else if s.present.load(SeqCst) {
        // Another thread paged it in since the fault: try again.
        None
    } else if p.irql < DISPATCH_LEVEL {
        // A page fault is a switch point; the page comes in once this CPU runs again, so
        // nothing can page it out before the instruction is retried.
        crate::trace::record(crate::trace::Kind::Fault, 0);
        crate::sched::point();
        mm.fault_in(s);
        None
    } else if p.execute {
        Some(Rule::PageableCodeAtDispatch)
    } else {
        Some(Rule::PageFaultAtDispatch)
    }
}

/// Where a fatal fault resumes: reports the bugcheck and ends the run.
extern "C" fn report_fault() -> ! {
    let p = PENDING.with(Cell::get);
    let mm = mm::get();
    let rule = p.rule.unwrap_or(Rule::InvalidAccess);
    let access = if p.execute {
        "execute"
    } else if p.write {
        "write"
    } else {
        "read"
    };
    let at = mm.describe(p.rip);
    let instruction = format!("{:02x?}", &p.bytes[..p.len]);
    let (rip, address) = (p.rip as u64, p.address as u64);
    let (parameters, detail) = match rule {
        Rule::PageFaultAtDispatch | Rule::PageableCodeAtDispatch => (
            [address, u64::from(p.irql), if p.execute { 8 } else { u64::from(p.write) }, rip],
            format!(
                "{access} of {} (paged out) at IRQL {} by the instruction at {at}",
                mm.describe(p.address),
                p.irql
            ),
        ),
        Rule::UnsupportedInstruction => {
            let (exception, what) = match p.signal {
                libc::SIGILL => (0xC000_001D, "illegal instruction"),
                libc::SIGTRAP => (0x8000_0003, "breakpoint"),
                _ if p.gs => (
                    0xC000_0005,
                    "GS-relative access (the processor control region is not emulated)",
                ),
                _ => (0xC000_0096, "privileged instruction not emulated"),
            };
            ([exception, rip, 0, 0], format!("{what}: {instruction} at {at}"))
        }
        _ => {
            let kind = if p.execute {
                10
            } else if p.write {
                2
            } else {
                0
            };
            let what = if p.gs {
                " (GS-relative: the processor control region is not emulated)"
            } else if rule == Rule::UnloadedImageTouched {
                " (the image was freed when DriverUnload returned)"
            } else {
                ""
            };
            // The instruction's bytes, unless its code is no longer there to read.
            let by = if p.len == 0 { "the instruction".to_owned() } else { instruction };
            (
                [address, kind, rip, 0],
                format!("{access} of {} by {by} at {at}{what}", mm.describe(p.address)),
            )
        }
    };
    record::stop(rule, None, parameters, detail)
}
