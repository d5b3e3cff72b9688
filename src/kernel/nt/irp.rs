//! I/O request packets: reading what was asked, and completing them exactly once.

use core::{ffi::c_void, ptr::NonNull};

use pagelock_macros::paged;

use super::sys::{self, IO_STACK_LOCATION, IRP};
use crate::{
    kernel::{CreateRequest, QueueGate, Status, status},
    open::Open,
};

/// `FILE_OPENED` (wdm.h): the create opened an existing object.
const FILE_OPENED: u64 = 1;
/// `SL_PENDING_RETURNED` (wdm.h): the bit `IoMarkIrpPending` sets in the stack location.
const SL_PENDING_RETURNED: u8 = 0x01;
/// `FILE_DIRECTORY_FILE` (wdm.h), a create option: the caller wants a directory.
const FILE_DIRECTORY_FILE: u32 = 0x0000_0001;
/// The create options of `Parameters.Create.Options`, whose top 8 bits are the disposition.
const CREATE_OPTIONS: u32 = 0x00FF_FFFF;

/// An IRP the I/O manager sent to this driver.
///
/// # Invariants
/// `raw` is an IRP owned by this driver until completed; [`Irp::complete`] consumes the value,
/// so an IRP cannot be completed twice or left uncompleted by safe code.
pub struct Irp {
    raw: NonNull<IRP>,
}

/// The parameters of an `IRP_MJ_DEVICE_CONTROL` request (`METHOD_BUFFERED`).
pub struct Control<'a> {
    /// The control code.
    pub code: u32,
    /// The caller's input, copied into the system buffer by the I/O manager.
    pub input: &'a [u8],
    /// How many reply bytes the caller can take.
    pub output_capacity: usize,
}

impl Irp {
    /// Wraps an IRP handed to a dispatch routine.
    ///
    /// # Safety
    /// `raw` must be an IRP the I/O manager passed to this driver and that it has not completed.
    pub(super) const unsafe fn from_raw(raw: NonNull<IRP>) -> Self {
        // INVARIANT: by the caller's contract, passed to this driver and not yet completed.
        Self { raw }
    }

    /// Hands the IRP over to the queue, which owns it from then on (`queue::queue_wait`).
    pub(super) const fn into_raw(self) -> NonNull<IRP> {
        self.raw
    }

    /// The file object the request came on (null for none).
    #[paged]
    pub(super) fn file_object(&self) -> *mut sys::FILE_OBJECT {
        self.stack().FileObject
    }

    /// The IRP itself.
    const fn irp(&self) -> &IRP {
        // SAFETY: by the invariant the IRP is live and ours until completed.
        unsafe { self.raw.as_ref() }
    }

    /// The system buffer (`METHOD_BUFFERED`), possibly null.
    const fn system_buffer(&self) -> *mut u8 {
        // SAFETY: `AssociatedIrp` is a union of pointers; every member is a plain pointer.
        unsafe { self.irp().AssociatedIrp.SystemBuffer }.cast()
    }

    /// The current stack location, which the I/O manager set up for this driver.
    #[paged]
    fn stack(&self) -> &IO_STACK_LOCATION {
        // SAFETY: `Tail` is the overlay while the IRP is in a driver's hands.
        let overlay = unsafe { &self.irp().Tail.Overlay };
        // SAFETY: the members of this union are pointers laid over each other; the I/O
        // manager fills `CurrentStackLocation` before calling the driver.
        let location = unsafe { overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation };
        // SAFETY: the current stack location is valid and aligned for the whole request.
        unsafe { &*location }
    }

    /// The major function code (`IRP_MJ_*`).
    #[must_use]
    #[paged]
    pub fn major(&self) -> u32 {
        u32::from(self.stack().MajorFunction)
    }

    /// What an `IRP_MJ_CREATE` asks to open besides the device: a name below it, a directory.
    #[must_use]
    #[paged]
    pub fn create_request(&self) -> CreateRequest {
        let stack = self.stack();
        // SAFETY: the I/O manager fills `Create` for IRP_MJ_CREATE, the request create (its only
        // caller) serves.
        let options = unsafe { stack.Parameters.Create.Options } & CREATE_OPTIONS;
        // SAFETY: as in `context_slot`: the file object of the create, live for the request.
        let file = unsafe { stack.FileObject.as_ref() };
        CreateRequest {
            names_a_file: file.is_some_and(|file| file.FileName.Length != 0),
            directory: options & FILE_DIRECTORY_FILE != 0,
        }
    }

    /// The file object's `FsContext` slot, where the per-open state lives.
    #[expect(
        clippy::needless_pass_by_ref_mut,
        reason = "the slot is reached through raw pointers; `&mut self` is what makes it exclusive"
    )]
    #[paged]
    fn context_slot(&mut self) -> Option<&mut *mut c_void> {
        let file = self.stack().FileObject;
        // SAFETY: for create, cleanup, close and device control the I/O manager passes the
        // file object of the handle, live for the whole request; only this driver's
        // dispatch routine touches its `FsContext`, and `&mut self` keeps it exclusive.
        unsafe { file.as_mut() }.map(|file| &mut file.FsContext)
    }

    /// Stores the per-open state in the file object (`IRP_MJ_CREATE`).
    ///
    /// # Errors
    /// Gives the state back when the request has no file object.
    #[paged]
    pub fn set_open(
        &mut self,
        open: alloc::boxed::Box<Open>,
    ) -> Result<(), alloc::boxed::Box<Open>> {
        match self.context_slot() {
            Some(slot) if slot.is_null() => {
                *slot = alloc::boxed::Box::into_raw(open).cast();
                Ok(())
            }
            _ => Err(open),
        }
    }

    /// Takes the per-open state back out of the file object (`IRP_MJ_CLOSE`).
    #[paged]
    pub fn take_open(&mut self) -> Option<alloc::boxed::Box<Open>> {
        let raw = core::mem::take(self.context_slot()?).cast::<Open>();
        // SAFETY: a non-null `FsContext` was stored by `set_open` from a live `Box<Open>`;
        // the slot is cleared, so the box has exactly one owner again.
        (!raw.is_null()).then(|| unsafe { alloc::boxed::Box::from_raw(raw) })
    }

    /// The per-open state, lent shared (`IRP_MJ_CLEANUP`).
    #[paged]
    pub fn open(&mut self) -> Option<&Open> {
        let slot = self.context_slot()?;
        // SAFETY: as in `control`: a non-null `FsContext` holds the `Box<Open>` stored by
        // `set_open`, alive until close takes it back, which cannot overlap this request.
        unsafe { slot.cast::<Open>().as_ref() }
    }

    /// The handle's [`QueueGate`], as the insert context of the queue (null when the file
    /// object carries no per-open state, which the insert refuses).
    #[paged]
    pub(super) fn queue_gate(&mut self) -> *const QueueGate {
        self.open().map_or(core::ptr::null(), |open| core::ptr::from_ref(open.waits()))
    }

    /// The per-open state and the control request together (`IRP_MJ_DEVICE_CONTROL`).
    ///
    /// The state is only lent shared: other requests of the same handle may be using it on
    /// other processors at the same time (a handle opened for overlapped I/O).
    #[paged]
    pub fn control(&mut self) -> (Option<&Open>, Control<'_>) {
        // SAFETY: the I/O manager fills `DeviceIoControl` for IRP_MJ_DEVICE_CONTROL.
        let params = unsafe { self.stack().Parameters.DeviceIoControl };
        let input_len = params.InputBufferLength as usize;
        let buffer = self.system_buffer();
        let input: &[u8] = if buffer.is_null() || input_len == 0 {
            &[]
        } else {
            // SAFETY: for METHOD_BUFFERED the system buffer holds at least
            // InputBufferLength bytes copied from the caller, and nothing writes it until
            // this borrow ends (`complete` takes `self` by value).
            unsafe { core::slice::from_raw_parts(buffer, input_len) }
        };
        let file = self.stack().FileObject;
        // SAFETY: as in `context_slot`; the state is a different object from the system
        // buffer, so the two borrows do not overlap.
        let file = unsafe { file.as_ref() };
        // SAFETY: a non-null `FsContext` holds the `Box<Open>` stored by `set_open`, which
        // lives until close takes it back, and close never overlaps a request of the file
        // object (each request holds a reference to it). Only shared references are made:
        // the requests of one handle may run at once, and `Open` is `Sync`.
        let open = file.and_then(|file| unsafe { file.FsContext.cast::<Open>().as_ref() });
        let control = Control {
            code: params.IoControlCode,
            input,
            output_capacity: params.OutputBufferLength as usize,
        };
        (open, control)
    }

    /// Completes the request with `status`, copying `reply` to the caller's output buffer
    /// first when the status is a success. Returns `status` for the dispatch routine.
    #[must_use]
    #[paged]
    pub fn complete(self, status: Status, reply: &[u8]) -> Status {
        let information = if status::is_success(status) && !reply.is_empty() {
            let buffer = self.system_buffer();
            // SAFETY: only device control requests carry a reply; their parameters are
            // `DeviceIoControl`.
            let capacity = unsafe { self.stack().Parameters.DeviceIoControl.OutputBufferLength };
            if buffer.is_null() || reply.len() > capacity as usize {
                return self.complete(status::BUFFER_TOO_SMALL, &[]);
            }
            // SAFETY: the system buffer holds at least OutputBufferLength bytes for
            // METHOD_BUFFERED, and no borrow of it is alive (`control`'s ended).
            unsafe { core::ptr::copy_nonoverlapping(reply.as_ptr(), buffer, reply.len()) };
            reply.len() as u64
        } else {
            0
        };
        self.finish(status, information)
    }

    /// Completes a request that the queue refused (`IoCsqInsertIrpEx`) with `status`, and
    /// returns `STATUS_PENDING` for the dispatch routine.
    ///
    /// The `IoCsqInsertIrpEx` of `ReactOS` marks the IRP pending before it calls the insert
    /// callback, and leaves it marked when the callback refuses; Microsoft documents the mark only
    /// for `IoCsqInsertIrp`. Marking it here too (`IoMarkIrpPending` only sets a bit) makes the IRP
    /// marked under either, and a marked IRP's dispatch routine must return `STATUS_PENDING`, even
    /// when it completed the IRP itself.
    #[must_use]
    #[paged]
    pub fn complete_pended(self, status: Status) -> Status {
        let raw = self.raw.as_ptr();
        // SAFETY: the IRP is live and ours until `finish`; a place, nothing read.
        let slot = unsafe {
            &raw const (*raw).Tail.Overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation
        };
        // SAFETY: the members of this union are pointers laid over each other, and the I/O
        // manager set `CurrentStackLocation` before calling the driver.
        let location = unsafe { slot.read() };
        // SAFETY: the location the I/O manager set up for this driver, valid for the whole
        // request; no reference to it is alive here (`stack`'s borrows have ended).
        unsafe { (*location).Control |= SL_PENDING_RETURNED };
        let _ = self.finish(status, 0);
        status::PENDING
    }

    /// Completes a successful `IRP_MJ_CREATE`: the I/O status block's `Information` says
    /// `FILE_OPENED`, what a create of an existing device means.
    #[must_use]
    #[paged]
    pub fn complete_opened(self) -> Status {
        self.finish(status::SUCCESS, FILE_OPENED)
    }

    /// Sets the I/O status block and hands the IRP back to the I/O manager.
    #[paged]
    fn finish(self, status: Status, information: u64) -> Status {
        let raw = self.raw.as_ptr();
        // SAFETY: the IRP is live and owned by this driver until IofCompleteRequest below.
        let io_status = unsafe { &mut (*raw).IoStatus };
        io_status.__bindgen_anon_1.Status = status;
        io_status.Information = information;
        // SAFETY: the IRP is ours to complete, once: `self` is consumed here.
        unsafe { sys::ntddk::IofCompleteRequest(raw, 0) };
        status
    }
}
