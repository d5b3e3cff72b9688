//! The routines the bed exports, by name: what each one is, how fault injection makes it fail,
//! how often the driver called it, and where the image was bound to it.
//!
//! Every emulated routine starts with [`enter`]: it counts the call, marks a switch point of
//! the scheduler, and says whether fault injection makes this call fail. The host functions
//! themselves live in the component that owns them (`mm`, `ke`, `ex`, `io`, `ob`, `rtl`, `kd`,
//! `crt`); `exports` binds the names to them.

use std::sync::{
    Mutex, OnceLock,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// How a routine fails under fault injection (`--fail-call NAME:N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It returns NULL (an allocator).
    Null,
    /// It returns this status.
    Status(i32),
}

const NO_MEMORY: Option<Failure> =
    Some(Failure::Status(pagelock_protocol::status::INSUFFICIENT_RESOURCES));

macro_rules! routines {
    ($($routine:ident => $failure:expr;)*) => {
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
        }
    };
}

routines! {
    MmLockPagableDataSection => None;
    MmLockPagableSectionByHandle => None;
    MmUnlockPagableImageSection => None;
    KeGetCurrentIrql => None;
    KfRaiseIrql => None;
    KeRaiseIrqlToDpcLevel => None;
    KeLowerIrql => None;
    KfLowerIrql => None;
    KeAcquireSpinLockRaiseToDpc => None;
    KeReleaseSpinLock => None;
    KeAcquireSpinLockAtDpcLevel => None;
    KeReleaseSpinLockFromDpcLevel => None;
    KeQueryPerformanceCounter => None;
    KeBugCheckEx => None;
    KeInitializeTimer => None;
    KeInitializeTimerEx => None;
    KeSetTimer => None;
    KeSetTimerEx => None;
    KeCancelTimer => None;
    KeReadStateTimer => None;
    KeInitializeDpc => None;
    KeInsertQueueDpc => None;
    KeRemoveQueueDpc => None;
    KeFlushQueuedDpcs => None;
    ExAllocatePool2 => Some(Failure::Null);
    ExAllocatePoolWithTag => Some(Failure::Null);
    ExFreePool => None;
    ExFreePoolWithTag => None;
    ExInitializeRundownProtection => None;
    ExAcquireRundownProtection => None;
    ExReleaseRundownProtection => None;
    ExWaitForRundownProtectionRelease => None;
    IoCreateDevice => NO_MEMORY;
    IoDeleteDevice => None;
    IoCreateSymbolicLink => NO_MEMORY;
    IoDeleteSymbolicLink => None;
    IofCompleteRequest => None;
    IoCancelIrp => None;
    IoAcquireCancelSpinLock => None;
    IoReleaseCancelSpinLock => None;
    IoCsqInitialize => None;
    IoCsqInitializeEx => None;
    IoCsqInsertIrp => None;
    IoCsqInsertIrpEx => None;
    IoCsqRemoveIrp => None;
    IoCsqRemoveNextIrp => None;
    RtlInitUnicodeString => None;
    RtlCreateSecurityDescriptor => None;
    RtlSetDaclSecurityDescriptor => None;
    RtlCreateAcl => None;
    RtlLengthSid => None;
    RtlInitializeSid => None;
    RtlSubAuthoritySid => None;
    RtlAddAccessAllowedAce => None;
    ObOpenObjectByPointer => NO_MEMORY;
    ZwSetSecurityObject => NO_MEMORY;
    ZwClose => None;
    DbgPrint => None;
    DbgPrintEx => None;
    memcpy => None;
    memmove => None;
    memset => None;
    memcmp => None;
    strlen => None;
    __chkstk => None;
}

const COUNT: usize = Routine::ALL.len();

/// Calls per routine, indexed by [`Routine`].
static CALLS: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];
/// The host address each routine was bound to, 0 until the loader bound it.
static ADDRESSES: [AtomicUsize; COUNT] = [const { AtomicUsize::new(0) }; COUNT];
/// Fault injection: the Nth call (from 1) of this routine fails.
static FAIL_CALL: OnceLock<(Routine, u64)> = OnceLock::new();

/// What fault injection saw: every call of a routine that can fail, in order (to choose
/// `--fail-call` targets), and the calls it made fail.
#[derive(Clone, Debug, Default)]
pub struct Injection {
    /// Names of the failable routines called, in call order.
    pub failable_calls: Vec<&'static str>,
    /// One line per call made to fail.
    pub injected: Vec<String>,
}

static INJECTION: Mutex<Injection> =
    Mutex::new(Injection { failable_calls: Vec::new(), injected: Vec::new() });

impl Routine {
    /// The routine imported as `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// The host function's address the image was bound to (0 before the loader bound it).
    #[must_use]
    pub fn address(self) -> usize {
        ADDRESSES[self as usize].load(Ordering::Relaxed)
    }
}

/// Records that the image's import of `routine` was bound to `address`.
pub fn bound(routine: Routine, address: usize) {
    ADDRESSES[routine as usize].store(address, Ordering::Relaxed);
}

/// Makes the `nth` call (from 1) of `routine` fail; once per process.
///
/// # Errors
/// When fault injection was already set up in this process.
pub fn fail_call(routine: Routine, nth: u64) -> anyhow::Result<()> {
    FAIL_CALL
        .set((routine, nth))
        .map_err(|_| anyhow::anyhow!("fault injection is set once per process"))
}

static ENTERED: OnceLock<fn()> = OnceLock::new();

/// Installs what may happen on the calling CPU as it enters a kernel routine.
///
/// It runs after the switch point and before the routine: the layer above delivers the clock
/// interrupt there, as the schedule draws (a timer expires and its DPC runs, if the CPU is below
/// `DISPATCH_LEVEL`), as an interrupt may arrive at any instruction on Windows.
pub fn on_enter(hook: fn()) {
    let _ = ENTERED.set(hook);
}

/// Counts a call of `routine`; true when fault injection makes this call fail.
///
/// Every call into the emulated kernel is a switch point of the scheduler, taken here before
/// any of the kernel's own locks is held.
pub fn enter(routine: Routine) -> bool {
    crate::trace::record(crate::trace::Kind::Call, routine as u16);
    crate::sched::point();
    if let Some(hook) = ENTERED.get() {
        hook();
    }
    let nth = CALLS[routine as usize].fetch_add(1, Ordering::Relaxed) + 1;
    let fail = FAIL_CALL.get() == Some(&(routine, nth));
    if routine.failure().is_some() {
        let mut injection = crate::sched::lock(&INJECTION);
        injection.failable_calls.push(routine.name());
        if fail {
            injection.injected.push(format!("{}: call {nth} failed", routine.name()));
        }
        drop(injection);
    }
    fail
}

/// Calls per routine so far, the routines called at least once.
#[must_use]
pub fn calls() -> Vec<(String, u64)> {
    Routine::ALL
        .iter()
        .map(|r| (r.name().to_owned(), CALLS[*r as usize].load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What fault injection saw; `None` when its lock is held (the bugcheck path must not wait).
#[must_use]
pub fn injection(wait: bool) -> Option<Injection> {
    crate::sched::guard(&INJECTION, wait).map(|i| i.clone())
}
