//! The cancel-safe queue: `IoCsqInitialize(Ex)`, `IoCsqInsertIrp(Ex)`, `IoCsqRemoveIrp` and
//! `IoCsqRemoveNextIrp`, as the kernel implements them over the IRP's cancel routine.
//!
//! The driver owns the queue itself (its list and its lock) and hands the kernel six
//! callbacks in an `IO_CSQ`; the kernel's part is the order in which it calls them, and its own
//! cancel routine, which it sets on every queued IRP. That order is what makes the queue safe:
//! an IRP is inserted before its cancel routine is set, and removed only by whoever clears the
//! cancel routine first (the remover, or `IoCancelIrp`). The bed follows it step for step, so a
//! driver that is correct on the bed is correct on the kernel's queue.

use std::ffi::c_void;

use pagelock_ddk as ddk;
use pagelock_protocol::status;

use crate::{
    io::irp,
    ke::irql::{self, DISPATCH_LEVEL},
    mm, record,
    routine::{self, Routine},
};

/// `IO_CSQ` on x64 (64 bytes): a type and the driver's six callbacks.
#[repr(C)]
pub(crate) struct IoCsq {
    kind: u32,
    insert: usize,
    remove: usize,
    peek_next: usize,
    acquire: usize,
    release: usize,
    complete_canceled: usize,
    reserve: usize,
}

/// `IO_CSQ_IRP_CONTEXT` on x64: what `IoCsqRemoveIrp` finds an IRP by.
#[repr(C)]
pub(crate) struct IrpContext {
    kind: u32,
    irp: *mut ddk::IRP,
    csq: *mut IoCsq,
}

/// `IO_TYPE_CSQ_IRP_CONTEXT`, `IO_TYPE_CSQ`, `IO_TYPE_CSQ_EX`.
const IO_TYPE_CSQ_IRP_CONTEXT: u32 = 1;
const IO_TYPE_CSQ: u32 = 2;
const IO_TYPE_CSQ_EX: u32 = 3;

type Insert = unsafe extern "win64" fn(*mut IoCsq, *mut ddk::IRP);
type InsertEx = unsafe extern "win64" fn(*mut IoCsq, *mut ddk::IRP, *mut c_void) -> i32;
type Remove = unsafe extern "win64" fn(*mut IoCsq, *mut ddk::IRP);
type PeekNext = unsafe extern "win64" fn(*mut IoCsq, *mut ddk::IRP, *mut c_void) -> *mut ddk::IRP;
type Acquire = unsafe extern "win64" fn(*mut IoCsq, *mut u8);
type Release = unsafe extern "win64" fn(*mut IoCsq, u8);
type CompleteCanceled = unsafe extern "win64" fn(*mut IoCsq, *mut ddk::IRP);

/// The driver's `IO_CSQ`, read.
///
/// # Safety
/// `csq` must point at an `IO_CSQ` the driver initialised with `IoCsqInitialize(Ex)`.
const unsafe fn queue<'a>(csq: *mut IoCsq) -> &'a IoCsq {
    // SAFETY: the caller's promise; the kernel only reads it after initialising it.
    unsafe { &*csq }
}

/// Calls the driver's callbacks, each the Win64 way. Every call is Win64 code of the image that
/// the driver stored in its `IO_CSQ`, called with the arguments the kernel passes.
struct Callbacks(*mut IoCsq);

impl Callbacks {
    /// The callbacks of `csq`.
    ///
    /// # Safety
    /// As [`queue`].
    const unsafe fn of(csq: *mut IoCsq) -> Self {
        Self(csq)
    }

    const fn get(&self) -> &IoCsq {
        // SAFETY: `of`'s promise.
        unsafe { queue(self.0) }
    }

    fn acquire(&self) -> u8 {
        let mut irql = 0u8;
        // SAFETY: CsqAcquireLock, stored by IoCsqInitialize(Ex); see the type's docs.
        let acquire = unsafe { std::mem::transmute::<usize, Acquire>(self.get().acquire) };
        // SAFETY: the queue and a KIRQL to fill, as the kernel passes them.
        unsafe { acquire(self.0, &raw mut irql) };
        irql
    }

    fn release(&self, irql: u8) {
        // SAFETY: CsqReleaseLock; see the type's docs.
        let release = unsafe { std::mem::transmute::<usize, Release>(self.get().release) };
        // SAFETY: the queue and the IRQL its acquire returned.
        unsafe { release(self.0, irql) };
    }

    fn insert(&self, irp: *mut ddk::IRP, context: *mut c_void) -> i32 {
        if self.get().kind == IO_TYPE_CSQ_EX {
            // SAFETY: CsqInsertIrpEx of an IO_CSQ initialised with IoCsqInitializeEx.
            let insert = unsafe { std::mem::transmute::<usize, InsertEx>(self.get().insert) };
            // SAFETY: the queue, the IRP and the caller's insert context.
            unsafe { insert(self.0, irp, context) }
        } else {
            // SAFETY: CsqInsertIrp; see the type's docs.
            let insert = unsafe { std::mem::transmute::<usize, Insert>(self.get().insert) };
            // SAFETY: the queue and the IRP, under the queue's lock.
            unsafe { insert(self.0, irp) };
            status::SUCCESS
        }
    }

    fn remove(&self, irp: *mut ddk::IRP) {
        // SAFETY: CsqRemoveIrp; see the type's docs.
        let remove = unsafe { std::mem::transmute::<usize, Remove>(self.get().remove) };
        // SAFETY: the queue and one of its IRPs, under the queue's lock.
        unsafe { remove(self.0, irp) };
    }

    fn peek_next(&self, irp: *mut ddk::IRP, context: *mut c_void) -> *mut ddk::IRP {
        // SAFETY: CsqPeekNextIrp; see the type's docs.
        let peek = unsafe { std::mem::transmute::<usize, PeekNext>(self.get().peek_next) };
        // SAFETY: the queue, the IRP to start after (or NULL) and the peek context.
        unsafe { peek(self.0, irp, context) }
    }

    fn complete_canceled(&self, irp: *mut ddk::IRP) {
        // SAFETY: CsqCompleteCanceledIrp; see the type's docs.
        let complete =
            unsafe { std::mem::transmute::<usize, CompleteCanceled>(self.get().complete_canceled) };
        // SAFETY: the queue and an IRP just removed from it, outside the queue's lock.
        unsafe { complete(self.0, irp) };
    }
}

/// The IRP's `DriverContext[3]`, where the queue keeps its `IO_CSQ` or the IRP's context.
fn slot<'a>(irp: *mut ddk::IRP) -> &'a mut *mut c_void {
    // SAFETY: a live IRP of the bed's; the queue owns DriverContext[3] while the IRP is queued.
    let irp = unsafe { &mut *irp };
    // SAFETY: the tail's overlay member is the one in use while a driver holds the IRP.
    let overlay = unsafe { &mut irp.Tail.Overlay };
    // SAFETY: the overlay's driver-context member is the one the queue uses (the I/O manager's
    // device-queue member is unused for these IRPs).
    let context = unsafe { &mut overlay.__bindgen_anon_1.__bindgen_anon_1 };
    &mut context.DriverContext[3]
}

/// Whether `held` (an IRP's `DriverContext[3]`) is an `IO_CSQ_IRP_CONTEXT` rather than the
/// `IO_CSQ` itself: both begin with their type.
const fn is_context(held: *mut c_void) -> bool {
    // SAFETY: DriverContext[3] of a queued IRP holds one of the two, set at insert; both start
    // with a ULONG type.
    !held.is_null() && unsafe { held.cast::<u32>().read() } == IO_TYPE_CSQ_IRP_CONTEXT
}

/// The cancel routine the queue sets on every IRP it holds (the kernel's
/// `IopCsqCancelRoutine`): releases the cancel spin lock, removes the IRP under the queue's
/// lock, and hands it to the driver's complete-canceled callback.
extern "win64" fn cancel_routine(_device: *mut ddk::DEVICE_OBJECT, irp: *mut ddk::IRP) {
    // SAFETY: a live IRP of the bed's, being cancelled.
    irp::release_cancel_lock(unsafe { (*irp).CancelIrql });
    let held = *slot(irp);
    let csq = if is_context(held) {
        // SAFETY: as above: a context, whose queue and IRP the insert filled.
        let context = unsafe { &mut *held.cast::<IrpContext>() };
        context.irp = std::ptr::null_mut();
        context.csq
    } else {
        held.cast::<IoCsq>()
    };
    // SAFETY: the queue the IRP was inserted into, initialised by the driver.
    let callbacks = unsafe { Callbacks::of(csq) };
    let old = callbacks.acquire();
    callbacks.remove(irp);
    callbacks.release(old);
    callbacks.complete_canceled(irp);
}

fn init(csq: *mut IoCsq, kind: u32, callbacks: [usize; 6]) -> i32 {
    mm::check_placement("IO_CSQ", csq as usize);
    let [insert, remove, peek_next, acquire, release, complete_canceled] = callbacks;
    // SAFETY: the driver passes its IO_CSQ to initialise.
    unsafe {
        csq.write(IoCsq {
            kind,
            insert,
            remove,
            peek_next,
            acquire,
            release,
            complete_canceled,
            reserve: 0,
        });
    }
    status::SUCCESS
}

/// `IoCsqInitialize`.
pub(crate) extern "win64" fn initialize(
    csq: *mut IoCsq,
    insert: usize,
    remove: usize,
    peek_next: usize,
    acquire: usize,
    release: usize,
    complete_canceled: usize,
) -> i32 {
    routine::enter(Routine::IoCsqInitialize);
    init(csq, IO_TYPE_CSQ, [insert, remove, peek_next, acquire, release, complete_canceled])
}

/// `IoCsqInitializeEx`: the insert callback returns a status.
pub(crate) extern "win64" fn initialize_ex(
    csq: *mut IoCsq,
    insert: usize,
    remove: usize,
    peek_next: usize,
    acquire: usize,
    release: usize,
    complete_canceled: usize,
) -> i32 {
    routine::enter(Routine::IoCsqInitializeEx);
    init(csq, IO_TYPE_CSQ_EX, [insert, remove, peek_next, acquire, release, complete_canceled])
}

/// Inserts as the kernel does: under the queue's lock, the IRP marked pending, inserted, and
/// only then given the queue's cancel routine; an IRP cancelled meanwhile is taken back out and
/// completed as cancelled at once.
fn insert(
    csq: *mut IoCsq,
    irp: *mut ddk::IRP,
    context: *mut IrpContext,
    insert_context: *mut c_void,
) -> i32 {
    if !irql::at_most(Routine::IoCsqInsertIrp, DISPATCH_LEVEL) {
        return status::INVALID_DEVICE_STATE;
    }
    // SAFETY: the driver passes its initialised IO_CSQ.
    let callbacks = unsafe { Callbacks::of(csq) };
    let old = callbacks.acquire();
    irp::mark_pending(irp);
    if context.is_null() {
        *slot(irp) = csq.cast();
    } else {
        // SAFETY: the driver passes an IO_CSQ_IRP_CONTEXT to fill, alive while the IRP is queued.
        unsafe { context.write(IrpContext { kind: IO_TYPE_CSQ_IRP_CONTEXT, irp, csq }) };
        *slot(irp) = context.cast();
    }
    let inserted = callbacks.insert(irp, insert_context);
    if inserted != status::SUCCESS {
        *slot(irp) = std::ptr::null_mut();
        callbacks.release(old);
        return inserted;
    }
    irp::set_cancel_routine(irp, cancel_routine as *const () as *mut c_void);
    // SAFETY: a live IRP of the bed's.
    if unsafe { (*irp).Cancel } != 0
        && !irp::set_cancel_routine(irp, std::ptr::null_mut()).is_null()
    {
        // Cancelled before the routine was set, and nobody else took it: ours to finish.
        record::reached("IoCsqInsertIrp inserted an IRP cancelled meanwhile");
        callbacks.remove(irp);
        *slot(irp) = std::ptr::null_mut();
        callbacks.release(old);
        callbacks.complete_canceled(irp);
        return status::SUCCESS;
    }
    callbacks.release(old);
    status::SUCCESS
}

/// `IoCsqInsertIrp`.
pub(crate) extern "win64" fn insert_irp(
    csq: *mut IoCsq,
    irp: *mut ddk::IRP,
    context: *mut IrpContext,
) {
    routine::enter(Routine::IoCsqInsertIrp);
    insert(csq, irp, context, std::ptr::null_mut());
}

/// `IoCsqInsertIrpEx`.
pub(crate) extern "win64" fn insert_irp_ex(
    csq: *mut IoCsq,
    irp: *mut ddk::IRP,
    context: *mut IrpContext,
    insert_context: *mut c_void,
) -> i32 {
    routine::enter(Routine::IoCsqInsertIrpEx);
    insert(csq, irp, context, insert_context)
}

/// `IoCsqRemoveIrp`: the IRP of `context`, unless it is being cancelled (then NULL: the cancel
/// path completes it).
pub(crate) extern "win64" fn remove_irp(
    csq: *mut IoCsq,
    context: *mut IrpContext,
) -> *mut ddk::IRP {
    routine::enter(Routine::IoCsqRemoveIrp);
    if !irql::at_most(Routine::IoCsqRemoveIrp, DISPATCH_LEVEL) {
        return std::ptr::null_mut();
    }
    // SAFETY: the driver passes its initialised IO_CSQ.
    let callbacks = unsafe { Callbacks::of(csq) };
    let old = callbacks.acquire();
    // SAFETY: the driver passes the context it inserted the IRP with.
    let mut irp = unsafe { (*context).irp };
    if !irp.is_null() && !take(&callbacks, irp) {
        // Being cancelled: the cancel routine removes and completes it.
        record::reached("IoCsqRemoveIrp met an IRP being cancelled");
        irp = std::ptr::null_mut();
    }
    callbacks.release(old);
    irp
}

/// Takes `irp` off the queue, under the queue's lock, unless it is being cancelled (its cancel
/// routine already cleared: then the cancel path owns it, and this returns false). Clears what
/// the queue kept in the IRP, and the IRP in its context, if it was inserted with one.
fn take(callbacks: &Callbacks, irp: *mut ddk::IRP) -> bool {
    if irp::set_cancel_routine(irp, std::ptr::null_mut()).is_null() {
        return false;
    }
    callbacks.remove(irp);
    let held = std::mem::replace(slot(irp), std::ptr::null_mut());
    if is_context(held) {
        // SAFETY: DriverContext[3] held the IRP's context, set at insert and alive while the
        // IRP is queued.
        unsafe { (*held.cast::<IrpContext>()).irp = std::ptr::null_mut() };
    }
    true
}

/// `IoCsqRemoveNextIrp`: the first IRP the driver's peek finds for `peek_context` that is not
/// being cancelled, removed; NULL when there is none.
pub(crate) extern "win64" fn remove_next_irp(
    csq: *mut IoCsq,
    peek_context: *mut c_void,
) -> *mut ddk::IRP {
    routine::enter(Routine::IoCsqRemoveNextIrp);
    if !irql::at_most(Routine::IoCsqRemoveNextIrp, DISPATCH_LEVEL) {
        return std::ptr::null_mut();
    }
    // SAFETY: the driver passes its initialised IO_CSQ.
    let callbacks = unsafe { Callbacks::of(csq) };
    let old = callbacks.acquire();
    let mut irp = callbacks.peek_next(std::ptr::null_mut(), peek_context);
    while !irp.is_null() {
        if take(&callbacks, irp) {
            break;
        }
        // Being cancelled: skip it, the cancel routine removes it.
        record::reached("IoCsqRemoveNextIrp skipped an IRP being cancelled");
        irp = callbacks.peek_next(irp, peek_context);
    }
    callbacks.release(old);
    irp
}
