//! The emulated kernel: the routines a driver imports, as `extern "win64"` host functions, and
//! the state they share. One driver per process (each run is its own child process).

use std::{
    cell::Cell,
    collections::HashMap,
    ffi::c_void,
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use pagelock_ddk as ddk;

use crate::rules::{Rule, Violation};

/// IRQL values.
pub const PASSIVE_LEVEL: u8 = 0;
/// `APC_LEVEL`.
pub const APC_LEVEL: u8 = 1;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u8 = 2;

thread_local! {
    static IRQL: Cell<u8> = const { Cell::new(PASSIVE_LEVEL) };
    static HELD_SPIN_LOCKS: Cell<u32> = const { Cell::new(0) };
}

/// This thread's IRQL.
#[must_use]
pub fn irql() -> u8 {
    IRQL.with(Cell::get)
}

/// Sets this thread's IRQL; raising to `DISPATCH_LEVEL` pages out every unlocked pageable
/// section when Force IRQL checking is on.
pub fn set_irql(new: u8) {
    let old = IRQL.with(|c| c.replace(new));
    if new >= DISPATCH_LEVEL
        && old < DISPATCH_LEVEL
        && let Some(k) = KERNEL.get()
        && k.force_irql
    {
        k.page_out_unlocked();
    }
}

/// Spin locks this thread holds now.
#[must_use]
pub fn held_spin_locks() -> u32 {
    HELD_SPIN_LOCKS.with(Cell::get)
}

/// One section as the memory manager tracks it. Read without locks by the fault handler.
pub struct MmSection {
    /// Name.
    pub name: String,
    /// First address.
    pub start: usize,
    /// One past the last address (page-rounded).
    pub end: usize,
    /// Protection when present.
    pub prot: i32,
    /// May be paged out.
    pub pageable: bool,
    /// `INIT`: freed after `DriverEntry`.
    pub discardable: bool,
    /// Lock count.
    pub count: AtomicI64,
    /// Present (accessible) now.
    pub present: AtomicBool,
    /// Freed (`INIT` after load).
    pub discarded: AtomicBool,
    /// Times paged back in after a fault.
    pub page_ins: AtomicU64,
    /// Times paged out.
    pub page_outs: AtomicU64,
}

impl MmSection {
    fn protect(&self, prot: i32) {
        // SAFETY: the range is a section of the image mapping, which lives for the process.
        let _ = unsafe { libc::mprotect(self.start as *mut c_void, self.end - self.start, prot) };
    }

    /// Makes the section inaccessible (async-signal-safe).
    pub fn page_out(&self) {
        if self.present.swap(false, Ordering::SeqCst) {
            self.page_outs.fetch_add(1, Ordering::Relaxed);
            self.protect(libc::PROT_NONE);
        }
    }

    /// Makes the section accessible again (async-signal-safe).
    pub fn page_in(&self) {
        if !self.present.swap(true, Ordering::SeqCst) {
            self.protect(self.prot);
        }
    }

    /// Whether `address` lies in this section.
    #[must_use]
    pub const fn contains(&self, address: usize) -> bool {
        address >= self.start && address < self.end
    }

    /// The section's opaque handle, as `MmLockPagableDataSection` returns it.
    #[must_use]
    pub fn handle(&self, index: usize) -> usize {
        HANDLE_BASE + index * 0x10
    }
}

/// Handles are fake kernel addresses, never dereferenced.
const HANDLE_BASE: usize = 0xFFFF_F800_5EC7_0000;

/// A device object the driver created.
pub struct DeviceRecord {
    /// The object (0x150 bytes, as the kernel allocates it).
    pub object: usize,
    /// Its name.
    pub name: String,
    /// The DACL the driver set, as (SID text, access mask) pairs; `None` when none was set.
    pub dacl: Option<Vec<(String, u32)>>,
}

/// An IRP the bed sent and has not yet retired.
#[derive(Default)]
pub struct IrpRecord {
    /// Times `IofCompleteRequest` was called on it.
    pub completions: u32,
}

/// What the emulated kernel remembers, behind one lock (never held while driver code runs).
#[derive(Default)]
pub struct State {
    /// Pool blocks: address -> (size, tag).
    pub pool: HashMap<usize, (usize, u32)>,
    /// Device objects.
    pub devices: Vec<DeviceRecord>,
    /// Symbolic links: name -> target.
    pub links: HashMap<String, String>,
    /// Object handles: handle -> object.
    pub object_handles: HashMap<usize, usize>,
    /// In-flight IRPs.
    pub irps: HashMap<usize, IrpRecord>,
    /// Spin locks held: lock address -> owning thread.
    pub spin_locks: HashMap<usize, u64>,
    /// Rules that fired.
    pub violations: Vec<Violation>,
    /// `DbgPrint` output.
    pub log: Vec<String>,
    /// Calls per kernel routine.
    pub calls: HashMap<&'static str, u64>,
    /// Every failable call, in order, for fault injection.
    pub failable_calls: Vec<&'static str>,
    /// The failable call (routine, 1-based index) to fail.
    pub fail_call: Option<(String, u64)>,
    /// Injected failures so far.
    pub injected: u64,
    /// Next fake object handle.
    pub next_handle: usize,
    /// What the bed did, in order.
    pub events: Vec<String>,
    /// Lock counts after each step.
    pub timeline: Vec<(String, Vec<(String, i64)>)>,
}

/// The emulated kernel.
pub struct Kernel {
    /// The driver's sections.
    pub sections: Vec<MmSection>,
    /// Force IRQL checking.
    pub force_irql: bool,
    /// Everything else.
    pub state: Mutex<State>,
    /// When the bed started (the performance counter's zero).
    pub start: Instant,
}

static KERNEL: OnceLock<Kernel> = OnceLock::new();

/// The kernel of this process, if installed (for the fault handler).
#[must_use]
pub fn try_kernel() -> Option<&'static Kernel> {
    KERNEL.get()
}

/// The kernel of this process.
///
/// # Panics
/// Before [`install`].
#[must_use]
pub fn kernel() -> &'static Kernel {
    KERNEL.get().expect("the emulated kernel is installed before the driver runs")
}

/// Installs the kernel for this process.
///
/// # Panics
/// When one is already installed: one driver per process.
pub fn install(kernel: Kernel) -> &'static Kernel {
    assert!(KERNEL.set(kernel).is_ok(), "one emulated kernel per process");
    KERNEL.get().expect("just set")
}

impl Kernel {
    /// The state, even if a panicking thread poisoned the lock.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what the bed did.
    pub fn record_event(&self, event: String) {
        self.state().events.push(event);
    }

    /// Records the pageable sections' lock counts after `step`.
    pub fn snapshot(&self, step: &str) {
        let counts = self
            .sections
            .iter()
            .filter(|s| s.pageable)
            .map(|s| (s.name.clone(), s.count.load(Ordering::SeqCst)))
            .collect();
        self.state().timeline.push((step.to_owned(), counts));
    }

    /// Records a violation.
    pub fn violation(&self, rule: Rule, detail: String) {
        self.state().violations.push(Violation::new(rule, detail, false));
    }

    /// The section containing `address`.
    #[must_use]
    pub fn section_of(&self, address: usize) -> Option<(usize, &MmSection)> {
        self.sections.iter().enumerate().find(|(_, s)| s.contains(address))
    }

    /// `address` as "SECTION+0xOFFSET" when it is in the image.
    #[must_use]
    pub fn describe(&self, address: usize) -> String {
        self.section_of(address).map_or_else(
            || format!("{address:#x}"),
            |(_, s)| format!("{}+{:#x}", s.name, address - s.start),
        )
    }

    /// Pages out every pageable section whose count is zero.
    pub fn page_out_unlocked(&self) {
        for s in &self.sections {
            if s.pageable && s.count.load(Ordering::SeqCst) == 0 {
                s.page_out();
            }
        }
    }

    /// Counts a call; true when fault injection says this call must fail.
    fn failable(&self, routine: &'static str) -> bool {
        let mut state = self.state();
        *state.calls.entry(routine).or_default() += 1;
        state.failable_calls.push(routine);
        let nth = state.failable_calls.iter().filter(|r| **r == routine).count() as u64;
        let fail = state.fail_call.as_ref().is_some_and(|(name, n)| name == routine && *n == nth);
        if fail {
            state.injected += 1;
        }
        fail
    }

    fn count(&self, routine: &'static str) {
        *self.state().calls.entry(routine).or_default() += 1;
    }

    /// Flags pageable memory that is not locked, handed to a routine at `DISPATCH_LEVEL`.
    fn check_resident(&self, routine: &str, address: usize) {
        if irql() < DISPATCH_LEVEL {
            return;
        }
        if let Some((_, s)) = self.section_of(address)
            && s.pageable
            && s.count.load(Ordering::SeqCst) == 0
        {
            self.violation(
                Rule::PageableMemoryAtDispatch,
                format!("{routine} got {} at IRQL {}", self.describe(address), irql()),
            );
        }
    }

    fn mm_irql(&self, routine: &str) {
        if irql() > APC_LEVEL {
            self.violation(Rule::MmAboveApcLevel, format!("{routine} at IRQL {}", irql()));
        }
    }

    fn section_by_handle(&self, handle: usize) -> Option<&MmSection> {
        self.sections.iter().enumerate().find(|(i, s)| s.handle(*i) == handle).map(|(_, s)| s)
    }
}

fn thread_id() -> u64 {
    // SAFETY: gettid has no preconditions.
    let id = unsafe { libc::gettid() };
    u64::try_from(id).unwrap_or_default()
}

// ---- Memory manager ----

extern "win64" fn mm_lock_pagable_data_section(address: *mut c_void) -> *mut c_void {
    let k = kernel();
    k.count("MmLockPagableDataSection");
    k.mm_irql("MmLockPagableDataSection");
    match k.section_of(address as usize) {
        Some((index, s)) if s.pageable => {
            s.count.fetch_add(1, Ordering::SeqCst);
            s.page_in();
            s.handle(index) as *mut c_void
        }
        _ => {
            k.violation(Rule::LockOutsidePageableSection, k.describe(address as usize));
            std::ptr::null_mut()
        }
    }
}

extern "win64" fn mm_lock_pagable_section_by_handle(handle: *mut c_void) {
    let k = kernel();
    k.count("MmLockPagableSectionByHandle");
    k.mm_irql("MmLockPagableSectionByHandle");
    match k.section_by_handle(handle as usize) {
        Some(s) => {
            // Every lock adds one; "sets the count to one" in the reference means from zero.
            s.count.fetch_add(1, Ordering::SeqCst);
            s.page_in();
        }
        None => k.violation(Rule::UnknownSectionHandle, format!("{handle:p}")),
    }
}

extern "win64" fn mm_unlock_pagable_image_section(handle: *mut c_void) {
    let k = kernel();
    k.count("MmUnlockPagableImageSection");
    k.mm_irql("MmUnlockPagableImageSection");
    match k.section_by_handle(handle as usize) {
        Some(s) => {
            let before = s.count.fetch_sub(1, Ordering::SeqCst);
            if before <= 0 {
                s.count.fetch_add(1, Ordering::SeqCst);
                k.violation(Rule::UnlockAtZero, s.name.clone());
            }
        }
        None => k.violation(Rule::UnknownSectionHandle, format!("{handle:p}")),
    }
}

// ---- IRQL and spin locks ----

extern "win64" fn ke_get_current_irql() -> u8 {
    irql()
}

extern "win64" fn kf_raise_irql(new: u8) -> u8 {
    let old = irql();
    set_irql(new);
    old
}

extern "win64" fn ke_lower_irql(new: u8) {
    set_irql(new);
}

extern "win64" fn ke_acquire_spin_lock_raise_to_dpc(lock: *mut u64) -> u8 {
    let k = kernel();
    k.count("KeAcquireSpinLockRaiseToDpc");
    let old = irql();
    set_irql(DISPATCH_LEVEL);
    k.check_resident("KeAcquireSpinLockRaiseToDpc", lock as usize);
    loop {
        let mut state = k.state();
        if !state.spin_locks.contains_key(&(lock as usize)) {
            state.spin_locks.insert(lock as usize, thread_id());
            break;
        }
        drop(state);
        std::hint::spin_loop();
    }
    HELD_SPIN_LOCKS.with(|c| c.set(c.get() + 1));
    old
}

extern "win64" fn ke_release_spin_lock(lock: *mut u64, new_irql: u8) {
    let k = kernel();
    k.count("KeReleaseSpinLock");
    k.check_resident("KeReleaseSpinLock", lock as usize);
    let owner = k.state().spin_locks.get(&(lock as usize)).copied();
    if owner == Some(thread_id()) {
        k.state().spin_locks.remove(&(lock as usize));
        HELD_SPIN_LOCKS.with(|c| c.set(c.get().saturating_sub(1)));
    } else {
        k.violation(Rule::SpinLockNotHeld, format!("lock at {}", k.describe(lock as usize)));
    }
    set_irql(new_irql);
}

extern "win64" fn ke_query_performance_counter(frequency: *mut i64) -> i64 {
    if !frequency.is_null() {
        // SAFETY: the caller passes a LARGE_INTEGER to fill.
        unsafe { frequency.write(10_000_000) };
    }
    let nanos = kernel().start.elapsed().as_nanos() / 100;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

extern "win64" fn ke_bug_check_ex(code: u32, p1: u64, p2: u64, p3: u64, p4: u64) -> ! {
    crate::bugcheck::stop(
        code,
        [p1, p2, p3, p4],
        Rule::DriverBugcheck,
        format!("KeBugCheckEx({code:#x}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})"),
    )
}

// ---- Pool ----

fn allocate(routine: &'static str, size: usize, tag: u32) -> *mut c_void {
    let k = kernel();
    if k.failable(routine) || size == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: calloc has no preconditions; its blocks are 16-byte aligned on x86_64 Linux, as
    // pool blocks are.
    let block = unsafe { libc::calloc(1, size) };
    if !block.is_null() {
        k.state().pool.insert(block as usize, (size, tag));
    }
    block
}

extern "win64" fn ex_allocate_pool2(_flags: u64, size: usize, tag: u32) -> *mut c_void {
    allocate("ExAllocatePool2", size, tag)
}

extern "win64" fn ex_allocate_pool_with_tag(_pool_type: u32, size: usize, tag: u32) -> *mut c_void {
    allocate("ExAllocatePoolWithTag", size, tag)
}

fn free(routine: &'static str, block: *mut c_void, tag: Option<u32>) {
    let k = kernel();
    k.count(routine);
    let known = k.state().pool.remove(&(block as usize));
    match known {
        Some((_, real)) if tag.is_none_or(|t| t == real) => {
            // SAFETY: the block came from calloc above and is freed once (removed from the map).
            unsafe { libc::free(block) };
        }
        Some((size, real)) => {
            k.state().pool.insert(block as usize, (size, real));
            k.violation(
                Rule::BadPoolFree,
                format!(
                    "{routine}({block:p}) with tag {:#x}, allocated with {real:#x}",
                    tag.unwrap_or(0)
                ),
            );
        }
        None => k.violation(Rule::BadPoolFree, format!("{routine}({block:p}): not a pool block")),
    }
}

extern "win64" fn ex_free_pool_with_tag(block: *mut c_void, tag: u32) {
    free("ExFreePoolWithTag", block, Some(tag));
}

extern "win64" fn ex_free_pool(block: *mut c_void) {
    free("ExFreePool", block, None);
}

// ---- C runtime ----

extern "win64" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let k = kernel();
    k.check_resident("memcpy", dest as usize);
    k.check_resident("memcpy", src as usize);
    // SAFETY: the driver passes valid, non-overlapping ranges, as memcpy requires.
    unsafe { std::ptr::copy_nonoverlapping(src, dest, n) };
    dest
}

extern "win64" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    let k = kernel();
    k.check_resident("memmove", dest as usize);
    k.check_resident("memmove", src as usize);
    // SAFETY: the driver passes valid ranges.
    unsafe { std::ptr::copy(src, dest, n) };
    dest
}

extern "win64" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    kernel().check_resident("memset", dest as usize);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // memset takes the low byte
    // SAFETY: the driver passes a valid range.
    unsafe {
        std::ptr::write_bytes(dest, value as u8, n);
    }
    dest
}

extern "win64" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let k = kernel();
    k.check_resident("memcmp", a as usize);
    k.check_resident("memcmp", b as usize);
    // SAFETY: the driver passes valid ranges of `n` bytes.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
    a.iter().zip(b).find(|(x, y)| x != y).map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

extern "win64" fn strlen(s: *const u8) -> usize {
    kernel().check_resident("strlen", s as usize);
    // SAFETY: the driver passes a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(s.cast()) }.count_bytes()
}

// `__chkstk` probes the stack pages of a large frame; Linux stacks are mapped, so it only
// returns, preserving every register as the real one does.
std::arch::global_asm!(".globl pagelock_testbed_chkstk", "pagelock_testbed_chkstk:", "ret");
unsafe extern "C" {
    fn pagelock_testbed_chkstk();
}

// ---- Debug output ----

/// Formats a `DbgPrint` format with its arguments (Win64 variadic: the bed reads them as
/// 64-bit values in order).
fn format_debug(format: *const u8, args: &[u64]) -> String {
    if format.is_null() {
        return String::new();
    }
    // SAFETY: the driver passes a NUL-terminated format string.
    let format = unsafe { std::ffi::CStr::from_ptr(format.cast()) }.to_string_lossy();
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&n) = chars.peek() {
            chars.next();
            spec.push(n);
            if n.is_ascii_alphabetic() && !matches!(n, 'l' | 'h' | 'I' | 'z') || n == '%' {
                break;
            }
        }
        let conversion = spec.chars().last().unwrap_or('%');
        let arg = || args.clone().next().copied().unwrap_or(0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // C's conversions
        match conversion {
            '%' => out.push('%'),
            's' => {
                let p = arg() as *const u8;
                if p.is_null() {
                    out.push_str("(null)");
                } else {
                    // SAFETY: `%s` takes a NUL-terminated string.
                    out.push_str(&unsafe { std::ffi::CStr::from_ptr(p.cast()) }.to_string_lossy());
                }
            }
            'u' => out.push_str(&if spec.contains("ll") || spec.contains("I64") {
                arg().to_string()
            } else {
                (arg() as u32).to_string()
            }),
            'd' | 'i' => out.push_str(&if spec.contains("ll") || spec.contains("I64") {
                (arg() as i64).to_string()
            } else {
                (arg() as i32).to_string()
            }),
            'x' | 'X' => out.push_str(&format!(
                "{:x}",
                if spec.contains("ll") || spec.contains("I64") {
                    arg()
                } else {
                    u64::from(arg() as u32)
                }
            )),
            'p' => out.push_str(&format!("{:016x}", arg())),
            'c' => out.push(char::from(arg() as u8)),
            _ => out.push_str(&format!("%{spec}")),
        }
        if conversion != '%' {
            args.next();
        }
    }
    out
}

extern "win64" fn dbg_print(
    format: *const u8,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
    a6: u64,
    a7: u64,
) -> u32 {
    let line = format_debug(format, &[a1, a2, a3, a4, a5, a6, a7]);
    kernel().state().log.push(line.trim_end().to_owned());
    0
}

extern "win64" fn dbg_print_ex(
    _component: u32,
    _level: u32,
    format: *const u8,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
    a6: u64,
) -> u32 {
    let line = format_debug(format, &[a1, a2, a3, a4, a5, a6]);
    kernel().state().log.push(line.trim_end().to_owned());
    0
}

// ---- Security (the device DACL) ----

extern "win64" fn rtl_create_security_descriptor(
    sd: *mut ddk::SECURITY_DESCRIPTOR,
    revision: u32,
) -> i32 {
    // SAFETY: the driver passes room for an absolute SECURITY_DESCRIPTOR.
    unsafe {
        sd.write(ddk::SECURITY_DESCRIPTOR {
            Revision: u8::try_from(revision).unwrap_or(1),
            ..Default::default()
        });
    }
    0
}

extern "win64" fn rtl_set_dacl_security_descriptor(
    sd: *mut ddk::SECURITY_DESCRIPTOR,
    present: u8,
    dacl: *mut ddk::ACL,
    _defaulted: u8,
) -> i32 {
    // SAFETY: `sd` was initialised by RtlCreateSecurityDescriptor.
    let sd = unsafe { &mut *sd };
    sd.Dacl = if present != 0 { dacl } else { std::ptr::null_mut() };
    sd.Control |= 0x0004; // SE_DACL_PRESENT
    0
}

extern "win64" fn rtl_create_acl(acl: *mut ddk::ACL, size: u32, revision: u32) -> i32 {
    if size < 8 {
        return pagelock_protocol::status::BUFFER_TOO_SMALL;
    }
    // SAFETY: the driver passes `size` writable bytes.
    unsafe {
        acl.write(ddk::ACL {
            AclRevision: u8::try_from(revision).unwrap_or(2),
            Sbz1: 0,
            AclSize: u16::try_from(size).unwrap_or(u16::MAX),
            AceCount: 0,
            Sbz2: 0,
        });
    }
    0
}

fn sid_length(sid: *const u8) -> usize {
    // SAFETY: a SID starts with revision and sub-authority count bytes.
    8 + 4 * usize::from(unsafe { *sid.add(1) })
}

extern "win64" fn rtl_length_sid(sid: *const u8) -> u32 {
    u32::try_from(sid_length(sid)).unwrap_or(0)
}

extern "win64" fn rtl_initialize_sid(sid: *mut u8, authority: *const [u8; 6], count: u8) -> i32 {
    // SAFETY: the driver passes room for a SID with `count` sub-authorities and an authority.
    unsafe {
        sid.write(1);
        sid.add(1).write(count);
        std::ptr::copy_nonoverlapping(authority.cast::<u8>(), sid.add(2), 6);
    }
    0
}

extern "win64" fn rtl_sub_authority_sid(sid: *mut u8, index: u32) -> *mut u32 {
    sid.wrapping_add(8 + 4 * index as usize).cast()
}

extern "win64" fn rtl_add_access_allowed_ace(
    acl: *mut ddk::ACL,
    _revision: u32,
    mask: u32,
    sid: *const u8,
) -> i32 {
    // SAFETY: `acl` was initialised by RtlCreateAcl; its ACEs follow the header.
    let header = unsafe { &mut *acl };
    let mut offset = 8usize;
    for _ in 0..header.AceCount {
        // SAFETY: each ACE starts with its header: type, flags, size.
        let size = unsafe { acl.cast::<u8>().add(offset + 2).cast::<u16>().read_unaligned() };
        offset += usize::from(size);
    }
    let sid_len = sid_length(sid);
    let ace_size = 8 + sid_len;
    if offset + ace_size > usize::from(header.AclSize) {
        return pagelock_protocol::status::BUFFER_TOO_SMALL;
    }
    // SAFETY: the ACE fits in the ACL (checked above).
    unsafe {
        let ace = acl.cast::<u8>().add(offset);
        ace.write(0); // ACCESS_ALLOWED_ACE_TYPE
        ace.add(1).write(0);
        ace.add(2).cast::<u16>().write_unaligned(u16::try_from(ace_size).unwrap_or(0));
        ace.add(4).cast::<u32>().write_unaligned(mask);
        std::ptr::copy_nonoverlapping(sid, ace.add(8), sid_len);
    }
    header.AceCount += 1;
    0
}

/// The text form of a SID (`S-1-5-32-544`).
fn sid_text(sid: *const u8) -> String {
    // SAFETY: a valid SID: revision, count, 6-byte authority, then `count` sub-authorities.
    unsafe {
        let count = usize::from(*sid.add(1));
        let authority = (0..6).fold(0u64, |a, i| (a << 8) | u64::from(*sid.add(2 + i)));
        let mut text = format!("S-{}-{authority}", *sid);
        for i in 0..count {
            text.push_str(&format!("-{}", sid.add(8 + 4 * i).cast::<u32>().read_unaligned()));
        }
        text
    }
}

extern "win64" fn ob_open_object_by_pointer(
    object: *mut c_void,
    _attributes: u32,
    _state: *mut c_void,
    _access: u32,
    _ty: *mut c_void,
    _mode: u8,
    handle: *mut usize,
) -> i32 {
    let k = kernel();
    if k.failable("ObOpenObjectByPointer") {
        return pagelock_protocol::status::INSUFFICIENT_RESOURCES;
    }
    let mut state = k.state();
    state.next_handle += 4;
    let h = 0x8000_0000 + state.next_handle;
    state.object_handles.insert(h, object as usize);
    // SAFETY: the driver passes a HANDLE to fill.
    unsafe { handle.write(h) };
    0
}

extern "win64" fn zw_set_security_object(
    handle: usize,
    information: u32,
    sd: *const ddk::SECURITY_DESCRIPTOR,
) -> i32 {
    let k = kernel();
    if k.failable("ZwSetSecurityObject") {
        return pagelock_protocol::status::INSUFFICIENT_RESOURCES;
    }
    let Some(object) = k.state().object_handles.get(&handle).copied() else {
        return pagelock_protocol::status::INVALID_PARAMETER;
    };
    if information & 4 == 0 {
        return 0;
    }
    // SAFETY: the driver passes an absolute descriptor; its DACL, if any, is a valid ACL.
    let dacl = unsafe { (*sd).Dacl };
    let mut entries = Vec::new();
    if !dacl.is_null() {
        // SAFETY: as above.
        let count = unsafe { (*dacl).AceCount };
        let mut offset = 8usize;
        for _ in 0..count {
            // SAFETY: ACEs follow the header, each with its size.
            unsafe {
                let ace = dacl.cast::<u8>().add(offset);
                let kind = *ace;
                let size = ace.add(2).cast::<u16>().read_unaligned();
                let mask = ace.add(4).cast::<u32>().read_unaligned();
                if kind == 0 {
                    entries.push((sid_text(ace.add(8)), mask));
                }
                offset += usize::from(size);
            }
        }
    }
    let mut state = k.state();
    if let Some(device) = state.devices.iter_mut().find(|d| d.object == object) {
        device.dacl = Some(entries);
    }
    0
}

extern "win64" fn zw_close(handle: usize) -> i32 {
    kernel().state().object_handles.remove(&handle);
    0
}

/// The routines the bed provides, by import name.
#[must_use]
pub fn resolve(name: &str) -> Option<usize> {
    let address = match name {
        "MmLockPagableDataSection" => mm_lock_pagable_data_section as *const () as usize,
        "MmLockPagableSectionByHandle" => mm_lock_pagable_section_by_handle as *const () as usize,
        "MmUnlockPagableImageSection" => mm_unlock_pagable_image_section as *const () as usize,
        "KeGetCurrentIrql" => ke_get_current_irql as *const () as usize,
        "KfRaiseIrql" => kf_raise_irql as *const () as usize,
        "KeLowerIrql" | "KfLowerIrql" => ke_lower_irql as *const () as usize,
        "KeAcquireSpinLockRaiseToDpc" => ke_acquire_spin_lock_raise_to_dpc as *const () as usize,
        "KeReleaseSpinLock" => ke_release_spin_lock as *const () as usize,
        "KeQueryPerformanceCounter" => ke_query_performance_counter as *const () as usize,
        "KeBugCheckEx" => ke_bug_check_ex as *const () as usize,
        "ExAllocatePool2" => ex_allocate_pool2 as *const () as usize,
        "ExAllocatePoolWithTag" => ex_allocate_pool_with_tag as *const () as usize,
        "ExFreePoolWithTag" => ex_free_pool_with_tag as *const () as usize,
        "ExFreePool" => ex_free_pool as *const () as usize,
        "memcpy" => memcpy as *const () as usize,
        "memmove" => memmove as *const () as usize,
        "memset" => memset as *const () as usize,
        "memcmp" => memcmp as *const () as usize,
        "strlen" => strlen as *const () as usize,
        "__chkstk" => pagelock_testbed_chkstk as *const () as usize,
        "DbgPrint" => dbg_print as *const () as usize,
        "DbgPrintEx" => dbg_print_ex as *const () as usize,
        "RtlCreateSecurityDescriptor" => rtl_create_security_descriptor as *const () as usize,
        "RtlSetDaclSecurityDescriptor" => rtl_set_dacl_security_descriptor as *const () as usize,
        "RtlCreateAcl" => rtl_create_acl as *const () as usize,
        "RtlLengthSid" => rtl_length_sid as *const () as usize,
        "RtlInitializeSid" => rtl_initialize_sid as *const () as usize,
        "RtlSubAuthoritySid" => rtl_sub_authority_sid as *const () as usize,
        "RtlAddAccessAllowedAce" => rtl_add_access_allowed_ace as *const () as usize,
        "ObOpenObjectByPointer" => ob_open_object_by_pointer as *const () as usize,
        "ZwSetSecurityObject" => zw_set_security_object as *const () as usize,
        "ZwClose" => zw_close as *const () as usize,
        _ => crate::io::resolve(name)?,
    };
    Some(address)
}

/// The routines that can fail, and how: fault injection makes their Nth call fail.
pub const FAILABLE: &[&str] = &[
    "ExAllocatePool2",
    "ExAllocatePoolWithTag",
    "IoCreateDevice",
    "IoCreateSymbolicLink",
    "ObOpenObjectByPointer",
    "ZwSetSecurityObject",
];

/// Counts a failable call from another module; true when it must fail.
pub fn failable(routine: &'static str) -> bool {
    kernel().failable(routine)
}

/// Counts a call from another module.
pub fn count(routine: &'static str) {
    kernel().count(routine);
}
