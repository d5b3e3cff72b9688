//! IRPs: one stack location each, sent to the driver (`IoCallDriver`), completed
//! (`IofCompleteRequest`) during their dispatch or later, and the checks I/O verification
//! makes around both.

use std::{
    cell::RefCell,
    ffi::c_void,
    sync::{
        Mutex,
        atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering},
    },
};

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    io::{STATUS_PENDING, major},
    ke::irql,
    record,
    report::RequestTimes,
    routine::{self, Routine},
    verifier::{Rule, bed_number},
};

/// `IO_TYPE_IRP`.
const IO_TYPE_IRP: i16 = 6;
/// `SL_PENDING_RETURNED`, the bit `IoMarkIrpPending` sets in the stack location's `Control`.
pub const SL_PENDING_RETURNED: u8 = 0x01;

/// An IRP as the bed allocates it: the IRP, its one stack location, and what the I/O manager
/// tracks about it. `#[repr(C)]` with the IRP first, so `IofCompleteRequest` finds the rest.
#[repr(C)]
struct Frame {
    irp: ddk::IRP,
    stack: ddk::IO_STACK_LOCATION,
    /// [`IN_FLIGHT`] while the IRP is with the driver, cleared when it is retired.
    tag: AtomicU64,
    completions: AtomicU32,
    /// The caller's output buffer size, for the check at completion.
    output_capacity: usize,
    /// The interrupt time when the IRP was sent.
    sent_at: u64,
    /// The interrupt time when its dispatch routine returned (written by the requester).
    dispatched_at: AtomicU64,
    /// The interrupt time when it was completed (written by whichever CPU completed it).
    completed_at: AtomicU64,
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            irp: ddk::IRP::default(),
            stack: ddk::IO_STACK_LOCATION::default(),
            tag: AtomicU64::new(0),
            completions: AtomicU32::new(0),
            output_capacity: 0,
            sent_at: 0,
            dispatched_at: AtomicU64::new(0),
            completed_at: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// Retired frames of this thread, reused oldest first once [`QUARANTINE`] of them wait: a
    /// frame is never freed while its thread runs driver code, and a retired IRP keeps its
    /// contents for a while, so that a late `IofCompleteRequest` on it (a driver completing an
    /// IRP it no longer owns) reads valid memory and is caught, as I/O verification catches it,
    /// instead of hitting the next request in the same memory.
    static FRAMES: RefCell<std::collections::VecDeque<Box<Frame>>> =
        const { RefCell::new(std::collections::VecDeque::new()) };
}

/// Retired frames a thread keeps before it reuses one.
const QUARANTINE: usize = 32;

/// Marks a live frame.
const IN_FLIGHT: u64 = 0x5052_4920_4445_4221; // "!BED IRP"

/// An IRP the driver has and has not completed.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    irp: usize,
    file: usize,
    major: u8,
    /// Its dispatch routine returned `STATUS_PENDING`: the driver keeps it.
    pended: bool,
    /// Its dispatch routine returned.
    returned: bool,
}

/// Dispatch routines running, on any CPU: an IRP's requester may already have its completion
/// while the routine that completed it still returns through the driver.
static DISPATCHING: AtomicU32 = AtomicU32::new(0);

/// How many CPUs are in a dispatch routine of the driver.
#[must_use]
pub fn dispatching() -> u32 {
    DISPATCHING.load(Ordering::SeqCst)
}

/// Every IRP sent and not yet completed, in the order sent.
static OUTSTANDING: Mutex<Vec<Outstanding>> = Mutex::new(Vec::new());

fn outstanding() -> std::sync::MutexGuard<'static, Vec<Outstanding>> {
    crate::sched::lock(&OUTSTANDING)
}

/// Pended IRPs not yet completed: (IRP, major function), of the file object `file` if given.
#[must_use]
pub fn pended(file: Option<usize>) -> Vec<(usize, u8)> {
    outstanding()
        .iter()
        .filter(|o| o.pended && file.is_none_or(|f| f == o.file))
        .map(|o| (o.irp, o.major))
        .collect()
}

/// Every IRP of the file object `file` still with the driver: pended, or in its dispatch on
/// some CPU.
#[must_use]
pub fn in_flight(file: usize) -> Vec<usize> {
    outstanding().iter().filter(|o| o.file == file).map(|o| o.irp).collect()
}

/// Whether an IRP of the file object `file` is in its dispatch routine on some CPU (sent, not
/// yet returned from the driver).
#[must_use]
pub fn in_dispatch(file: usize) -> bool {
    outstanding().iter().any(|o| o.file == file && !o.returned)
}

/// File objects whose `IRP_MJ_CLEANUP` has returned and whose `IRP_MJ_CLOSE` has not come.
static CLEANED_UP: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn cleaned_up() -> std::sync::MutexGuard<'static, Vec<usize>> {
    crate::sched::lock(&CLEANED_UP)
}

/// Whether IRPs of the file object `file` are still with the driver.
#[must_use]
pub fn file_busy(file: usize) -> bool {
    outstanding().iter().any(|o| o.file == file)
}

/// `IofCompleteRequest`: completing an IRP no longer in flight, or twice, stops the run;
/// completing one whose cancel routine is still set is recorded.
pub(crate) extern "win64" fn iof_complete_request(irp: *mut ddk::IRP, _boost: i8) {
    routine::enter(Routine::IofCompleteRequest);
    if crate::ke::dpc::running() > 0
        && crate::ke::irql::current() >= crate::ke::irql::DISPATCH_LEVEL
    {
        record::reached("a DPC completed an IRP");
    }
    let frame = irp.cast::<Frame>();
    // SAFETY: the bed's IRPs are the first field of a Frame; frames are recycled, never freed
    // while their thread runs, so a pointer the driver got from the bed stays readable; the tag
    // says whether it is still in flight.
    let tag = unsafe { &(*frame).tag };
    if tag.load(Ordering::SeqCst) != IN_FLIGHT {
        record::stop(
            Rule::IrpCompletedTwice,
            None,
            [irp as u64, 0, 0, 0],
            format!("IofCompleteRequest({irp:p}) on an IRP no longer in flight"),
        );
    }
    // SAFETY: as above; the frame is live.
    let cancel_routine = cancel_routine(irp).load(Ordering::SeqCst);
    if !cancel_routine.is_null() {
        record::violation(
            Rule::CompletedWithCancelRoutine,
            [0x07, cancel_routine as u64, irp as u64, 0],
            format!(
                "IRP {irp:p} completed with its cancel routine ({}) still set",
                crate::mm::get().describe(cancel_routine as usize)
            ),
        );
    }
    outstanding().retain(|o| o.irp != irp as usize);
    // SAFETY: as above; the frame is live.
    unsafe { &(*frame).completed_at }.store(crate::ke::timer::now(), Ordering::SeqCst);
    // SAFETY: as above; the frame is live. Counted last: a requester waiting on another CPU
    // finishes the request once it sees the count.
    let completions = unsafe { &(*frame).completions };
    if completions.fetch_add(1, Ordering::SeqCst) > 0 {
        record::stop(
            Rule::IrpCompletedTwice,
            None,
            [irp as u64, 0, 0, 0],
            format!("IRP {irp:p} completed a second time"),
        );
    }
    // A switch point on the way back too: once completed, the IRP's requester may go on (its
    // cleanup, close and unlock) on another CPU while this one returns into the driver, whose
    // next instruction may be code that only the IRP's locks kept resident.
    crate::sched::point();
}

/// The IRP's `CancelRoutine`, as the atomic pointer `IoSetCancelRoutine` exchanges.
fn cancel_routine<'a>(irp: *mut ddk::IRP) -> &'a AtomicPtr<c_void> {
    // SAFETY: a live IRP of the bed's.
    let field = unsafe { &raw mut (*irp).CancelRoutine };
    // SAFETY: the field is a pointer-sized, aligned function pointer that the kernel and drivers
    // only ever exchange atomically (IoSetCancelRoutine).
    unsafe { AtomicPtr::from_ptr(field.cast::<*mut c_void>()) }
}

/// The IRP's current stack location (the bed's IRPs have one).
fn stack<'a>(irp: *mut ddk::IRP) -> &'a mut ddk::IO_STACK_LOCATION {
    // SAFETY: a live IRP of the bed's.
    let irp = unsafe { &mut *irp };
    // SAFETY: the tail's overlay member is the one in use while a driver holds the IRP.
    let overlay = unsafe { &irp.Tail.Overlay };
    // SAFETY: the current-stack-location member is the one the bed set in `prepare`.
    let location = unsafe { overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation };
    // SAFETY: it points at the frame's stack location, which lives as long as the IRP.
    unsafe { &mut *location }
}

/// The cancel spin lock (`IoAcquireCancelSpinLock`), a `KSPIN_LOCK` of the kernel's.
static CANCEL_LOCK: AtomicU64 = AtomicU64::new(0);

/// Whether the cancel spin lock is held (by anyone).
fn cancel_lock_held() -> bool {
    CANCEL_LOCK.load(Ordering::SeqCst) != 0
}

/// `IoAcquireCancelSpinLock`.
pub(crate) extern "win64" fn acquire_cancel_spin_lock(irql: *mut u8) {
    routine::enter(Routine::IoAcquireCancelSpinLock);
    let old = crate::ke::spinlock::acquire_raising(
        Routine::IoAcquireCancelSpinLock,
        CANCEL_LOCK.as_ptr(),
    );
    // SAFETY: the driver passes a KIRQL to fill.
    unsafe { irql.write(old) };
}

/// `IoReleaseCancelSpinLock`.
pub(crate) extern "win64" fn release_cancel_spin_lock(irql: u8) {
    routine::enter(Routine::IoReleaseCancelSpinLock);
    crate::ke::spinlock::release_lowering(
        Routine::IoReleaseCancelSpinLock,
        CANCEL_LOCK.as_ptr(),
        irql,
    );
}

/// Releases the cancel spin lock back to `irql`, as the kernel's own cancel routines do.
pub fn release_cancel_lock(irql: u8) {
    crate::ke::spinlock::release_lowering(
        Routine::IoReleaseCancelSpinLock,
        CANCEL_LOCK.as_ptr(),
        irql,
    );
}

/// `IoSetCancelRoutine`: exchanges the IRP's cancel routine, returning the one it had.
pub(crate) fn set_cancel_routine(irp: *mut ddk::IRP, routine: *mut c_void) -> *mut c_void {
    cancel_routine(irp).swap(routine, Ordering::SeqCst)
}

/// `IoMarkIrpPending`: sets `SL_PENDING_RETURNED` in the IRP's current stack location.
pub(crate) fn mark_pending(irp: *mut ddk::IRP) {
    stack(irp).Control |= SL_PENDING_RETURNED;
}

/// A cancel routine (`DRIVER_CANCEL`), called the Win64 way.
type Cancel = unsafe extern "win64" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP);

/// `IoCancelIrp`: marks the IRP cancelled and, when it has a cancel routine, calls it with the
/// cancel spin lock held, which the routine must release. True when a routine was called.
pub(crate) extern "win64" fn cancel_irp(irp: *mut ddk::IRP) -> u8 {
    routine::enter(Routine::IoCancelIrp);
    u8::from(cancel(irp))
}

/// `IoCancelIrp`, as the I/O manager calls it for `CancelIoEx` and at cleanup of a thread's
/// requests.
pub(crate) fn cancel(irp: *mut ddk::IRP) -> bool {
    let old = crate::ke::spinlock::acquire_raising(Routine::IoCancelIrp, CANCEL_LOCK.as_ptr());
    // SAFETY: a live IRP of the bed's (the caller found it outstanding).
    unsafe { (*irp).Cancel = 1 };
    let routine = cancel_routine(irp).swap(std::ptr::null_mut(), Ordering::SeqCst);
    if routine.is_null() {
        if outstanding().iter().any(|o| o.irp == irp as usize) {
            record::reached(
                "IoCancelIrp found no cancel routine on an outstanding IRP (not yet queued, or \
                 being completed)",
            );
        }
        crate::ke::spinlock::release_lowering(Routine::IoCancelIrp, CANCEL_LOCK.as_ptr(), old);
        return false;
    }
    let device = stack(irp).DeviceObject;
    // SAFETY: as above; the routine releases the cancel spin lock back to this IRQL.
    unsafe { (*irp).CancelIrql = old };
    // SAFETY: the cancel routine the driver (or the cancel-safe queue) set with
    // IoSetCancelRoutine: code of the image or of the bed, Win64 either way.
    let routine = unsafe { std::mem::transmute::<*mut c_void, Cancel>(routine) };
    // SAFETY: called as the kernel calls it: with the IRP's device and the IRP, holding the
    // cancel spin lock at DISPATCH_LEVEL.
    unsafe { routine(device, irp) };
    if cancel_lock_held() {
        record::violation(
            Rule::CancelLockNotReleased,
            [irp as u64, routine as usize as u64, 0, 0],
            format!(
                "the cancel routine at {} returned holding the cancel spin lock",
                crate::mm::get().describe(routine as usize)
            ),
        );
        // Released for it, so that the run can go on to show what else breaks.
        CANCEL_LOCK.store(0, Ordering::SeqCst);
        crate::ke::irql::forget_spin_locks();
        crate::ke::irql::set(old);
    }
    true
}

/// A dispatch routine, called the Win64 way.
type Dispatch = unsafe extern "win64" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP) -> i32;

/// What one IRP came back with.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// `IoStatus.Status`, or `STATUS_PENDING` for a pended IRP.
    pub status: i32,
    /// `IoStatus.Information`.
    pub information: u64,
    /// When it was sent, left its dispatch routine and was completed.
    pub times: RequestTimes,
}

/// An IRP to send.
pub struct Request {
    /// The major function.
    pub major: u8,
    /// The file object of the handle.
    pub file: *mut ddk::FILE_OBJECT,
    /// For device control, its parameters.
    pub control: Option<Control>,
    /// For create, `Parameters.Create.Options`: the disposition in the top 8 bits, the create
    /// options below.
    pub create_options: u32,
}

/// The parameters of a device-control IRP, with its buffers as the transfer method places them.
pub struct Control {
    /// The control code.
    pub code: u32,
    /// Input bytes.
    pub input_len: usize,
    /// Output buffer size.
    pub output_len: usize,
    /// `AssociatedIrp.SystemBuffer` (buffered: input and output; direct: input).
    pub system_buffer: *mut c_void,
    /// `Parameters.DeviceIoControl.Type3InputBuffer` (neither: the caller's input).
    pub type3_input: *mut c_void,
    /// `UserBuffer` (neither: the caller's output).
    pub user_buffer: *mut c_void,
}

/// An IRP sent to the driver: completed during its dispatch, or pended and completed later
/// (on any CPU). [`Sent::wait`] finishes it.
#[must_use = "a sent IRP is finished with `wait`"]
pub struct Sent {
    frame: *mut Frame,
    major: u8,
}

// SAFETY: the frame is the bed's, shared with the driver as the kernel shares an IRP: the
// requester only reads it once it is completed, whichever CPU completed it.
unsafe impl Send for Sent {}
// SAFETY: through `&Sent` only the IRP's address and its completion count (an atomic) are read.
unsafe impl Sync for Sent {}

impl Sent {
    /// The IRP.
    #[must_use]
    pub const fn irp(&self) -> *mut ddk::IRP {
        self.frame.cast()
    }

    /// Whether the driver has completed it.
    #[must_use]
    pub fn completed(&self) -> bool {
        // SAFETY: the frame lives until `wait` retires it.
        unsafe { &*self.frame }.completions.load(Ordering::SeqCst) > 0
    }

    /// Waits for its completion and returns it. While it is pended, other CPUs run; when none
    /// can, this CPU is idle and lets timers and DPCs run ([`crate::ke::idle`]); when nothing
    /// at all can complete it, the run stops: its requester would wait forever.
    #[must_use]
    pub fn wait(self) -> Completion {
        wait_for(&|| self.completed(), &|| format!("{} pended", major::name(self.major)));
        // SAFETY: completed: the driver's access to the frame has ended.
        let frame = unsafe { &*self.frame };
        // SAFETY: the status union's members overlay one 32-bit value.
        let io_status = unsafe { frame.irp.IoStatus.__bindgen_anon_1.Status };
        let information = frame.irp.IoStatus.Information;
        let times = RequestTimes {
            sent: frame.sent_at,
            dispatched: frame.dispatched_at.load(Ordering::SeqCst),
            completed: frame.completed_at.load(Ordering::SeqCst),
        };
        let capacity = frame.output_capacity;
        if self.major == major::DEVICE_CONTROL
            && status::is_success(io_status)
            && information > capacity as u64
        {
            record::violation(
                Rule::InformationTooLarge,
                [bed_number(0x1A), self.irp() as u64, information, capacity as u64],
                format!(
                    "{}: IoStatus.Information {information} > output buffer {capacity}",
                    major::name(self.major)
                ),
            );
        }
        // SAFETY: the frame from Box::into_raw in `start`, retired once and kept for reuse.
        let frame = unsafe { Box::from_raw(self.frame) };
        frame.tag.store(0, Ordering::SeqCst);
        FRAMES.with(|frames| frames.borrow_mut().push_back(frame));
        Completion { status: io_status, information, times }
    }
}

/// Waits until `done()`.
///
/// While it is not, other CPUs run; when none can, this CPU is idle and lets timers and DPCs run
/// ([`crate::ke::idle`]); when nothing at all can make it true, the run stops with `what()`:
/// whoever waits would wait forever.
pub fn wait_for(done: &dyn Fn() -> bool, what: &dyn Fn() -> String) {
    while !done() {
        let scheduled = crate::sched::active() && crate::sched::current_cpu().is_some();
        // A CPU waiting is idle: as the schedule draws, it lets timers fire and runs DPCs
        // while the others go on, so that a DPC meets their requests at any point.
        if scheduled && crate::sched::choose_below(2) == 0 && crate::ke::idle() {
            continue;
        }
        let others = scheduled && crate::sched::wait_on_other_cpu();
        if !others && !crate::ke::idle() && !done() {
            let left = pended(None);
            let codes: Vec<String> = left
                .iter()
                .map(|(irp, _)| {
                    // SAFETY: a pended IRP is outstanding: its frame is live.
                    let code = unsafe {
                        stack(*irp as *mut ddk::IRP).Parameters.DeviceIoControl.IoControlCode
                    };
                    format!("{code:#010x}")
                })
                .collect();
            record::stop(
                Rule::PendingNeverCompleted,
                None,
                [left.first().map_or(0, |(irp, _)| *irp as u64), left.len() as u64, 0, 0],
                format!(
                    "{}, and nothing left can complete it: no timer set, no DPC queued, no \
                     other CPU that could ({} IRP(s) pended: {})",
                    what(),
                    left.len(),
                    codes.join(", ")
                ),
            );
        }
    }
}

/// Sends one IRP to the driver (`IoCallDriver`) and waits for its completion.
///
/// # Safety
/// As [`start`].
pub unsafe fn send(
    driver: *const ddk::DRIVER_OBJECT,
    device: *mut ddk::DEVICE_OBJECT,
    request: Request,
) -> Completion {
    // SAFETY: the caller's promise.
    unsafe { start(driver, device, request, || ()) }.wait()
}

/// Sends one IRP to the driver (`IoCallDriver`) and applies the I/O verification checks of its
/// dispatch; returns it, completed or pended.
///
/// `handed_over` runs once the IRP holds the file object, before the dispatch routine is called.
///
/// # Safety
/// `driver` must be the loaded driver's object and `device` one of its devices; the buffers
/// the request points at must live until the IRP completes.
pub unsafe fn start(
    driver: *const ddk::DRIVER_OBJECT,
    device: *mut ddk::DEVICE_OBJECT,
    request: Request,
    handed_over: impl FnOnce(),
) -> Sent {
    let major = request.major;
    let file = request.file as usize;
    let mut prepared = prepare(device, request);
    prepared.sent_at = crate::ke::timer::now();
    let frame = Box::into_raw(prepared);
    let irp = frame.cast::<ddk::IRP>();
    outstanding().push(Outstanding {
        irp: irp as usize,
        file,
        major,
        pended: false,
        returned: false,
    });
    // The IRP holds the file object from here on (`IoCallDriver`): the reference the request
    // took when it looked its handle up is the IRP's now.
    handed_over();
    let before = irql::current();
    crate::trace::record(crate::trace::Kind::IrpBegin, u16::from(major));
    // SAFETY: the caller passes the loaded driver's object; DriverEntry filled MajorFunction.
    let routine = unsafe { (*driver).MajorFunction[usize::from(major)] };
    #[expect(clippy::option_if_let_else, reason = "two paths with their own SAFETY arguments")]
    let returned = if let Some(routine) = routine {
        // SAFETY: the bindings are compiled for this host, so their function pointers say "C";
        // the routine is Win64 code of the image, called the Win64 way.
        let routine = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(*mut ddk::DEVICE_OBJECT, *mut ddk::IRP) -> i32,
                Dispatch,
            >(routine)
        };
        DISPATCHING.fetch_add(1, Ordering::SeqCst);
        // SAFETY: a dispatch routine of the loaded driver, with its device and a fresh IRP.
        let returned = unsafe { routine(device, irp) };
        DISPATCHING.fetch_sub(1, Ordering::SeqCst);
        returned
    } else {
        // No handler: the I/O manager completes with STATUS_INVALID_DEVICE_REQUEST.
        // SAFETY: the frame is ours alone: the driver never saw it.
        let frame = unsafe { &mut *frame };
        frame.irp.IoStatus.__bindgen_anon_1.Status = status::INVALID_DEVICE_REQUEST;
        outstanding().retain(|o| o.irp != irp as usize);
        frame.completed_at.store(crate::ke::timer::now(), Ordering::SeqCst);
        frame.completions.store(1, Ordering::SeqCst);
        status::INVALID_DEVICE_REQUEST
    };
    crate::trace::record(crate::trace::Kind::IrpEnd, u16::from(major));
    if let Some(o) = outstanding().iter_mut().find(|o| o.irp == irp as usize) {
        o.returned = true;
    }
    // SAFETY: the frame lives until `wait` retires it.
    unsafe { &(*frame).dispatched_at }.store(crate::ke::timer::now(), Ordering::SeqCst);
    check_irql_and_locks(device, major, before);
    let sent = Sent { frame, major };
    // SAFETY: the frame lives until `wait` retires it; once dispatch has returned, the bed only
    // reads the fields the driver no longer writes (it marked the IRP before returning).
    let marked = unsafe { (*frame).stack.Control } & SL_PENDING_RETURNED != 0;
    let pending = returned == STATUS_PENDING;
    let name = major::name(major);
    let code = |s: i32| u64::from(s.cast_unsigned());
    if pending && !marked {
        record::violation(
            Rule::PendingNotMarked,
            [bed_number(0x20), irp as u64, u64::from(major), 0],
            format!("{name} returned STATUS_PENDING without IoMarkIrpPending"),
        );
    }
    if marked && !pending {
        record::violation(
            Rule::MarkedNotPending,
            [bed_number(0x21), irp as u64, u64::from(major), code(returned)],
            format!("{name} marked its IRP pending and returned {returned:#x}"),
        );
    }
    let after_cleanup = major != major::CLOSE && cleaned_up().contains(&file);
    if after_cleanup {
        record::reached("a request returned from its dispatch after its file object's cleanup");
    }
    if pending {
        if let Some(o) = outstanding().iter_mut().find(|o| o.irp == irp as usize) {
            o.pended = true;
        }
        check_pended_after_cleanup(irp, major, file, after_cleanup);
        return sent;
    }
    match major {
        major::CLEANUP => cleaned_up().push(file),
        major::CLOSE => cleaned_up().retain(|f| *f != file),
        _ => {}
    }
    if !sent.completed() {
        record::violation(
            Rule::IrpNeverCompleted,
            [bed_number(0x18), irp as u64, u64::from(major), code(returned)],
            format!("{name} returned {returned:#x} without completing the IRP"),
        );
        // Completed for it, so that the request returns and the run goes on.
        outstanding().retain(|o| o.irp != irp as usize);
        // SAFETY: as above; the driver returned without keeping the IRP.
        unsafe { &*frame }.completions.store(1, Ordering::SeqCst);
        return sent;
    }
    // SAFETY: completed during the dispatch: the driver no longer writes the frame.
    let seen = unsafe { &*frame };
    // SAFETY: the status union's members overlay one 32-bit value.
    let io_status = unsafe { seen.irp.IoStatus.__bindgen_anon_1.Status };
    if returned != io_status {
        record::violation(
            Rule::StatusMismatch,
            [bed_number(0x19), irp as u64, code(returned), code(io_status)],
            format!("{name} returned {returned:#x}, but IoStatus.Status is {io_status:#x}"),
        );
    }
    sent
}

/// The rule for a request that races its handle's cleanup: once `IRP_MJ_CLEANUP` of the file
/// object has returned, none of its requests may be left queued, so a dispatch routine that
/// returns `STATUS_PENDING` after it with the IRP still cancellable (in the driver's queue) has
/// queued it too late. Windows does not stop: the request waits in the queue until something
/// completes it, and the file object's close, with whatever the driver releases there, waits
/// with it. (An IRP without a cancel routine that is not completed yet is being completed by
/// another path on another CPU, which is legal.)
fn check_pended_after_cleanup(irp: *mut ddk::IRP, major: u8, file: usize, after_cleanup: bool) {
    if after_cleanup && !cancel_routine(irp).load(Ordering::SeqCst).is_null() {
        record::violation(
            Rule::PendedAfterCleanup,
            [irp as u64, file as u64, u64::from(major), 0],
            format!(
                "{} queued (pended, cancellable) after IRP_MJ_CLEANUP of its file object \
                 returned: nothing completes it before its own timeout or a cancel",
                major::name(major)
            ),
        );
    }
}

/// A frame for `request`, recycled when this thread has one.
fn prepare(device: *mut ddk::DEVICE_OBJECT, request: Request) -> Box<Frame> {
    let reused = FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        if frames.len() > QUARANTINE { frames.pop_front() } else { None }
    });
    let mut frame = reused.unwrap_or_default();
    *frame = Frame::default();
    frame.tag.store(IN_FLIGHT, Ordering::SeqCst);
    frame.output_capacity = request.control.as_ref().map_or(0, |c| c.output_len);
    frame.stack.MajorFunction = request.major;
    frame.stack.DeviceObject = device;
    frame.stack.FileObject = request.file;
    if request.major == major::CREATE {
        frame.stack.Parameters.Create = ddk::_IO_STACK_LOCATION__bindgen_ty_1__bindgen_ty_1 {
            Options: request.create_options,
            ..Default::default()
        };
    }
    if let Some(control) = request.control {
        frame.stack.Parameters.DeviceIoControl =
            ddk::_IO_STACK_LOCATION__bindgen_ty_1__bindgen_ty_17 {
                OutputBufferLength: u32::try_from(control.output_len).unwrap_or(u32::MAX),
                InputBufferLength: u32::try_from(control.input_len).unwrap_or(u32::MAX),
                IoControlCode: control.code,
                Type3InputBuffer: control.type3_input,
                ..Default::default()
            };
        frame.irp.AssociatedIrp.SystemBuffer = control.system_buffer;
        frame.irp.UserBuffer = control.user_buffer;
    }
    frame.irp.Type = IO_TYPE_IRP;
    frame.irp.Size =
        u16::try_from(size_of::<ddk::IRP>() + size_of::<ddk::IO_STACK_LOCATION>()).unwrap_or(0);
    frame.irp.StackCount = 1;
    frame.irp.CurrentLocation = 1;
    frame.irp.IoStatus.__bindgen_anon_1.Status = status::UNSUCCESSFUL;
    let stack: *mut ddk::IO_STACK_LOCATION = &raw mut frame.stack;
    frame.irp.Tail.Overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation = stack;
    frame
}

/// I/O verification after a dispatch: the IRQL it returned at and spin locks still held.
fn check_irql_and_locks(device: *mut ddk::DEVICE_OBJECT, major: u8, before: u8) {
    let name = major::name(major);
    let after = irql::current();
    if after != before {
        record::violation(
            Rule::IrqlChangedAcrossDispatch,
            [0x05, device as u64, u64::from(before), u64::from(after)],
            format!("{name}: called at IRQL {before}, returned at IRQL {after}"),
        );
        irql::set(before);
    }
    let held = irql::spin_locks_held();
    if held > 0 {
        record::violation(
            Rule::SpinLockNeverReleased,
            [bed_number(0x1E), u64::from(held), u64::from(major), 0],
            format!("{name}: returned holding {held} spin lock(s)"),
        );
        irql::forget_spin_locks();
    }
}
