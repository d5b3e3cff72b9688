//! The routines the bed exports to a driver, in one table by import name.
//!
//! Each is an
//! `extern "win64"` host function (the driver calls it the Win64 way), most of them here, the
//! I/O, pool, security and debug-print ones in their modules. [`Routine`] names each one; fault
//! injection ([`Routine::failure`]) and call counts are keyed by it.

use std::{
    cell::Cell,
    ffi::c_void,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    dbgprint, io,
    irql::{self, APC_LEVEL, DISPATCH_LEVEL},
    kernel::kernel,
    mm::Mm,
    pool, security,
    verifier::{Rule, bed_number},
};

/// How a routine fails under fault injection (`--fail-call NAME:N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It returns NULL (an allocator).
    Null,
    /// It returns this status.
    Status(i32),
}

macro_rules! exports {
    ($($routine:ident => $host:expr, $failure:expr;)*) => {
        /// A routine the bed exports, named exactly as the driver imports it.
        #[expect(non_camel_case_types, reason = "the import names themselves")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Routine { $(
            #[doc = concat!("`", stringify!($routine), "`.")]
            $routine,
        )* }

        impl Routine {
            /// Every exported routine.
            pub const ALL: &[Self] = &[$(Self::$routine,)*];

            /// The import name.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $(Self::$routine => stringify!($routine),)* }
            }

            /// How fault injection makes it fail; `None` when it cannot fail on Windows.
            #[must_use]
            pub const fn failure(self) -> Option<Failure> {
                match self { $(Self::$routine => $failure,)* }
            }

            /// The host function's address.
            #[must_use]
            pub fn address(self) -> usize {
                match self { $(Self::$routine => $host as *const () as usize,)* }
            }
        }
    };
}

const NO_MEMORY: Option<Failure> =
    Some(Failure::Status(pagelock_protocol::status::INSUFFICIENT_RESOURCES));

exports! {
    MmLockPagableDataSection => mm_lock_pagable_data_section, None;
    MmLockPagableSectionByHandle => mm_lock_pagable_section_by_handle, None;
    MmUnlockPagableImageSection => mm_unlock_pagable_image_section, None;
    KeGetCurrentIrql => ke_get_current_irql, None;
    KfRaiseIrql => kf_raise_irql, None;
    KeRaiseIrqlToDpcLevel => ke_raise_irql_to_dpc_level, None;
    KeLowerIrql => ke_lower_irql, None;
    KfLowerIrql => ke_lower_irql, None;
    KeAcquireSpinLockRaiseToDpc => ke_acquire_spin_lock_raise_to_dpc, None;
    KeReleaseSpinLock => ke_release_spin_lock, None;
    KeAcquireSpinLockAtDpcLevel => ke_acquire_spin_lock_at_dpc_level, None;
    KeReleaseSpinLockFromDpcLevel => ke_release_spin_lock_from_dpc_level, None;
    KeQueryPerformanceCounter => ke_query_performance_counter, None;
    KeBugCheckEx => ke_bug_check_ex, None;
    ExAllocatePool2 => pool::ex_allocate_pool2, Some(Failure::Null);
    ExAllocatePoolWithTag => pool::ex_allocate_pool_with_tag, Some(Failure::Null);
    ExFreePool => pool::ex_free_pool, None;
    ExFreePoolWithTag => pool::ex_free_pool_with_tag, None;
    IoCreateDevice => io::io_create_device, NO_MEMORY;
    IoDeleteDevice => io::io_delete_device, None;
    IoCreateSymbolicLink => io::io_create_symbolic_link, NO_MEMORY;
    IoDeleteSymbolicLink => io::io_delete_symbolic_link, None;
    IofCompleteRequest => io::iof_complete_request, None;
    RtlInitUnicodeString => rtl_init_unicode_string, None;
    RtlCreateSecurityDescriptor => security::rtl_create_security_descriptor, None;
    RtlSetDaclSecurityDescriptor => security::rtl_set_dacl_security_descriptor, None;
    RtlCreateAcl => security::rtl_create_acl, None;
    RtlLengthSid => security::rtl_length_sid, None;
    RtlInitializeSid => security::rtl_initialize_sid, None;
    RtlSubAuthoritySid => security::rtl_sub_authority_sid, None;
    RtlAddAccessAllowedAce => security::rtl_add_access_allowed_ace, None;
    ObOpenObjectByPointer => security::ob_open_object_by_pointer, NO_MEMORY;
    ZwSetSecurityObject => security::zw_set_security_object, NO_MEMORY;
    ZwClose => security::zw_close, None;
    DbgPrint => dbgprint::dbg_print, None;
    DbgPrintEx => dbgprint::dbg_print_ex, None;
    memcpy => memcpy, None;
    memmove => memmove, None;
    memset => memset, None;
    memcmp => memcmp, None;
    strlen => strlen, None;
    __chkstk => pagelock_testbed_chkstk, None;
}

impl Routine {
    /// The routine imported as `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }
}

/// The host address of the routine imported as `name` (the loader's resolver).
#[must_use]
pub fn resolve(name: &str) -> Option<usize> {
    Routine::from_name(name).map(Routine::address)
}

// ---- Memory manager ----

/// The Mm routines' IRQL rule (DDI rule `IrqlMmApcLte`).
fn mm_irql(routine: Routine) {
    let irql = irql::current();
    if irql > APC_LEVEL {
        kernel().violation(
            Rule::MmAboveApcLevel,
            [bed_number(0x11), u64::from(irql), routine.address() as u64, 0],
            format!("{} at IRQL {irql}", routine.name()),
        );
    }
}

extern "win64" fn mm_lock_pagable_data_section(address: *mut c_void) -> *mut c_void {
    let k = kernel();
    k.enter(Routine::MmLockPagableDataSection);
    mm_irql(Routine::MmLockPagableDataSection);
    // As the kernel: the section that holds the address is locked, whatever its name; the
    // routine never returns NULL.
    let described = || format!("MmLockPagableDataSection({})", k.mm.describe(address as usize));
    match k.mm.section_of(address as usize) {
        Some((index, section)) => {
            if !section.pageable() {
                k.violation(
                    Rule::LockOutsidePageableSection,
                    [address as u64, 0, 0, 0],
                    described(),
                );
            }
            k.mm.lock(section);
            Mm::handle(index) as *mut c_void
        }
        None if k.mm.in_image(address as usize) => crate::isolate::stop(
            Rule::LockInNoSection,
            None,
            [0x1234, address as u64, 0, 0],
            format!("{}: in the image but in no section", described()),
        ),
        None => crate::isolate::stop(
            Rule::LockOutsideEveryImage,
            None,
            [address as u64, 0, 0, 0],
            format!("{}: in no loaded image", described()),
        ),
    }
}

extern "win64" fn mm_lock_pagable_section_by_handle(handle: *mut c_void) {
    let k = kernel();
    k.enter(Routine::MmLockPagableSectionByHandle);
    mm_irql(Routine::MmLockPagableSectionByHandle);
    match k.mm.by_handle(handle as usize) {
        Some(section) => k.mm.lock(section),
        None => k.violation(
            Rule::UnknownSectionHandle,
            [handle as u64, 0, 0, 0],
            format!("MmLockPagableSectionByHandle({handle:p})"),
        ),
    }
}

extern "win64" fn mm_unlock_pagable_image_section(handle: *mut c_void) {
    let k = kernel();
    k.enter(Routine::MmUnlockPagableImageSection);
    mm_irql(Routine::MmUnlockPagableImageSection);
    match k.mm.by_handle(handle as usize) {
        Some(section) => {
            if !k.mm.unlock(section) {
                crate::isolate::stop(
                    Rule::UnlockAtZero,
                    None,
                    [handle as u64, 0, 0, 0],
                    format!(
                        "MmUnlockPagableImageSection({}) with its lock count at 0",
                        section.name
                    ),
                );
            }
        }
        None => k.violation(
            Rule::UnknownSectionHandle,
            [handle as u64, 0, 0, 0],
            format!("MmUnlockPagableImageSection({handle:p})"),
        ),
    }
}

// ---- IRQL and spin locks ----

extern "win64" fn ke_get_current_irql() -> u8 {
    irql::current()
}

extern "win64" fn kf_raise_irql(new: u8) -> u8 {
    let old = irql::current();
    irql::set(new);
    old
}

extern "win64" fn ke_raise_irql_to_dpc_level() -> u8 {
    kf_raise_irql(DISPATCH_LEVEL)
}

extern "win64" fn ke_lower_irql(new: u8) {
    irql::set(new);
}

thread_local! {
    /// This thread's spin-lock owner token (`tid << 1 | 1`), 0 until first used.
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

fn owner_token() -> u64 {
    TOKEN.with(|token| {
        if token.get() == 0 {
            // SAFETY: gettid has no preconditions.
            let tid = u64::try_from(unsafe { libc::gettid() }).unwrap_or(0);
            token.set((tid << 1) | 1);
        }
        token.get()
    })
}

/// The driver's `KSPIN_LOCK`, as the atomic word it is.
const fn spin_word<'a>(lock: *mut u64) -> &'a AtomicU64 {
    // SAFETY: the driver passes a valid, aligned KSPIN_LOCK that lives while it is used; the
    // kernel only ever touches it atomically.
    unsafe { AtomicU64::from_ptr(lock) }
}

fn acquire(routine: Routine, lock: *mut u64) {
    let k = kernel();
    k.check_resident(routine, lock as usize, true);
    let token = owner_token();
    let word = spin_word(lock);
    loop {
        match word.compare_exchange_weak(0, token, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(owner) if owner == token => crate::isolate::stop(
                Rule::SpinLockAcquiredTwice,
                None,
                [bed_number(0x1F), lock as u64, 0, 0],
                format!(
                    "{} of the lock at {} already held by this thread",
                    routine.name(),
                    k.mm.describe(lock as usize)
                ),
            ),
            Err(owner) => {
                crate::trace::record(crate::trace::Kind::Spin, 0);
                // Held by another CPU: let a CPU that is not waiting run (the holder among them).
                if !crate::sched::wait_on_other_cpu() {
                    crate::isolate::stop(
                        Rule::Deadlock,
                        None,
                        [lock as u64, owner >> 1, 0, 0],
                        format!(
                            "{} of the lock at {}, held by thread {}, which cannot run again",
                            routine.name(),
                            k.mm.describe(lock as usize),
                            owner >> 1
                        ),
                    );
                }
            }
        }
    }
    irql::count_spin_lock(true);
}

fn release(routine: Routine, lock: *mut u64) {
    let k = kernel();
    k.check_resident(routine, lock as usize, true);
    let token = owner_token();
    match spin_word(lock).compare_exchange(token, 0, Ordering::Release, Ordering::Relaxed) {
        Ok(_) => irql::count_spin_lock(false),
        Err(owner) => k.violation(
            Rule::SpinLockNotHeld,
            [bed_number(0x1D), lock as u64, owner >> 1, 0],
            format!(
                "{} of the lock at {}, {}",
                routine.name(),
                k.mm.describe(lock as usize),
                if owner == 0 {
                    "which nobody holds".to_owned()
                } else {
                    format!("held by thread {}", owner >> 1)
                }
            ),
        ),
    }
}

extern "win64" fn ke_acquire_spin_lock_raise_to_dpc(lock: *mut u64) -> u8 {
    kernel().enter(Routine::KeAcquireSpinLockRaiseToDpc);
    let old = irql::current();
    irql::set(DISPATCH_LEVEL);
    acquire(Routine::KeAcquireSpinLockRaiseToDpc, lock);
    old
}

extern "win64" fn ke_release_spin_lock(lock: *mut u64, new_irql: u8) {
    kernel().enter(Routine::KeReleaseSpinLock);
    release(Routine::KeReleaseSpinLock, lock);
    irql::set(new_irql);
}

extern "win64" fn ke_acquire_spin_lock_at_dpc_level(lock: *mut u64) {
    kernel().enter(Routine::KeAcquireSpinLockAtDpcLevel);
    acquire(Routine::KeAcquireSpinLockAtDpcLevel, lock);
}

extern "win64" fn ke_release_spin_lock_from_dpc_level(lock: *mut u64) {
    kernel().enter(Routine::KeReleaseSpinLockFromDpcLevel);
    release(Routine::KeReleaseSpinLockFromDpcLevel, lock);
}

/// The performance counter runs at 10 MHz, as on most Windows machines.
const PERFORMANCE_FREQUENCY: i64 = 10_000_000;

extern "win64" fn ke_query_performance_counter(frequency: *mut i64) -> i64 {
    let k = kernel();
    k.enter(Routine::KeQueryPerformanceCounter);
    if !frequency.is_null() {
        // SAFETY: the driver passes a LARGE_INTEGER to fill.
        unsafe { frequency.write(PERFORMANCE_FREQUENCY) };
    }
    i64::try_from(k.started.elapsed().as_nanos() / 100).unwrap_or(i64::MAX)
}

extern "win64" fn ke_bug_check_ex(code: u32, p1: u64, p2: u64, p3: u64, p4: u64) -> ! {
    kernel().enter(Routine::KeBugCheckEx);
    crate::isolate::stop(
        Rule::DriverBugcheck,
        Some(code),
        [p1, p2, p3, p4],
        format!("KeBugCheckEx({code:#x}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})"),
    )
}

extern "win64" fn rtl_init_unicode_string(
    destination: *mut pagelock_ddk::UNICODE_STRING,
    source: *const u16,
) {
    kernel().enter(Routine::RtlInitUnicodeString);
    let mut len = 0usize;
    // SAFETY: the driver passes a NUL-terminated UTF-16 string (or NULL); reading stops at NUL.
    while !source.is_null() && unsafe { source.wrapping_add(len).read_unaligned() } != 0 {
        len += 1;
    }
    let bytes = u16::try_from(len * 2).unwrap_or(u16::MAX - 1);
    let string = pagelock_ddk::UNICODE_STRING {
        Length: bytes,
        MaximumLength: if source.is_null() { 0 } else { bytes + 2 },
        Buffer: source.cast_mut(),
    };
    // SAFETY: the driver passes a UNICODE_STRING to fill.
    unsafe { destination.write(string) };
}

// ---- C runtime ----

/// Checks a range a routine reads or writes at `DISPATCH_LEVEL` (both of its ends).
fn check_range(routine: Routine, address: *const u8, len: usize, write: bool) {
    if len > 0 {
        let k = kernel();
        k.check_resident(routine, address as usize, write);
        k.check_resident(routine, address as usize + len - 1, write);
    }
}

extern "win64" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    kernel().enter(Routine::memcpy);
    check_range(Routine::memcpy, src, n, false);
    check_range(Routine::memcpy, dest, n, true);
    // SAFETY: the driver passes valid, non-overlapping ranges of `n` bytes, as memcpy requires.
    unsafe { std::ptr::copy_nonoverlapping(src, dest, n) };
    dest
}

extern "win64" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    kernel().enter(Routine::memmove);
    check_range(Routine::memmove, src, n, false);
    check_range(Routine::memmove, dest, n, true);
    // SAFETY: the driver passes valid ranges of `n` bytes.
    unsafe { std::ptr::copy(src, dest, n) };
    dest
}

extern "win64" fn memset(dest: *mut u8, value: i32, n: usize) -> *mut u8 {
    kernel().enter(Routine::memset);
    check_range(Routine::memset, dest, n, true);
    // memset stores the value's low byte.
    let byte = value.to_le_bytes()[0];
    // SAFETY: the driver passes a valid range of `n` bytes.
    unsafe { std::ptr::write_bytes(dest, byte, n) };
    dest
}

extern "win64" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    kernel().enter(Routine::memcmp);
    check_range(Routine::memcmp, a, n, false);
    check_range(Routine::memcmp, b, n, false);
    // SAFETY: the driver passes valid ranges of `n` bytes.
    let a = unsafe { std::slice::from_raw_parts(a, n) };
    // SAFETY: as above.
    let b = unsafe { std::slice::from_raw_parts(b, n) };
    a.iter().zip(b).find(|(x, y)| x != y).map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

extern "win64" fn strlen(s: *const u8) -> usize {
    kernel().enter(Routine::strlen);
    kernel().check_resident(Routine::strlen, s as usize, false);
    // SAFETY: the driver passes a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(s.cast()) }.count_bytes()
}

// `__chkstk` probes the pages of a frame over 4 KiB; Linux grows and maps thread stacks, so
// the bed's only returns, keeping every register as the real one does (no call counting: it
// must not touch the stack it probes).
std::arch::global_asm!(".globl pagelock_testbed_chkstk", "pagelock_testbed_chkstk:", "ret");
unsafe extern "C" {
    fn pagelock_testbed_chkstk();
}
