//! The dispatch routines: create, cleanup, close and device control, all at `PASSIVE_LEVEL`
//! in the calling thread, all in `PAGE`.

use core::sync::atomic::Ordering;

use pagelock_macros::paged;

use pagelock_protocol::{self as protocol, zerocopy::IntoBytes};

use crate::{
    ioctl::{self, OPEN_HANDLES},
    kernel::{self, Irp, Status, major, status, try_box},
    open::Open,
    pending,
};

/// Routes an IRP by major function and completes it.
#[paged]
pub fn dispatch(irp: Irp) -> Status {
    match irp.major() {
        major::CREATE => create(irp),
        major::CLOSE => close(irp),
        major::CLEANUP => cleanup(irp),
        major::DEVICE_CONTROL => device_control(irp),
        _ => irp.complete(status::INVALID_DEVICE_REQUEST, &[]),
    }
}

/// `IRP_MJ_CREATE`: checks what is opened, allocates the per-open state, then locks both
/// sections by handle.
#[paged]
fn create(mut irp: Irp) -> Status {
    // A name below the device, or a directory: refused before anything is allocated or locked.
    if let Err(refused) = crate::open::check_create(irp.create_request()) {
        return irp.complete(refused, &[]);
    }
    let Ok(open) = try_box(Open::new()) else {
        return irp.complete(status::INSUFFICIENT_RESOURCES, &[]);
    };
    // MmLockPagableSectionByHandle at PASSIVE_LEVEL: the cheap path, one lock per section.
    if let Err(status) = open.lock_sections() {
        return irp.complete(status, &[]);
    }
    if irp.set_open(open).is_err() {
        // No file object: `open` dropped with the error, releasing its locks.
        return irp.complete(status::INVALID_PARAMETER, &[]);
    }
    OPEN_HANDLES.fetch_add(1, Ordering::SeqCst);
    irp.complete_opened()
}

/// `IRP_MJ_CLEANUP`: the last handle to the file object was closed. Closes the queue to the
/// handle's waits and cancels those queued (`STATUS_CANCELLED`) before returning, so that none
/// is queued when close releases the handle's locks, which cover the locked code that completes
/// them. Requests of the handle may still be in their dispatch routines on other processors (a
/// handle opened for overlapped I/O): a `WAIT` among them is refused by the queue.
#[paged]
fn cleanup(mut irp: Irp) -> Status {
    let file = kernel::file_of(&irp);
    if let Some(open) = irp.open() {
        let _cancelled = pending::cleanup(file, open.waits());
    }
    irp.complete(status::SUCCESS, &[])
}

/// `IRP_MJ_CLOSE`: releases exactly the locks this open holds and frees its state.
///
/// No IRP of this handle can be outstanding here: the I/O manager sends close only after
/// the last reference to the file object is gone, and every IRP holds one until it is
/// completed; cleanup, which comes first, drained the handle's queued waits. So releasing the
/// sections cannot pull code or data from under a request in flight, nor from under the
/// timer's DPC or the cancel path, which run locked code only for an IRP they still hold.
#[paged]
fn close(mut irp: Irp) -> Status {
    if let Some(open) = irp.take_open() {
        // MmUnlockPagableImageSection at PASSIVE_LEVEL, once per lock held, as `open` drops.
        drop(open);
        OPEN_HANDLES.fetch_sub(1, Ordering::SeqCst);
    }
    irp.complete(status::SUCCESS, &[])
}

/// `IRP_MJ_DEVICE_CONTROL`: `WAIT` and `SIGNAL` (see [`pending`]), the rest in
/// [`ioctl::handle`].
#[paged]
fn device_control(mut irp: Irp) -> Status {
    let file = kernel::file_of(&irp);
    let (open, control) = irp.control();
    let Some(open) = open else {
        return irp.complete(status::INVALID_DEVICE_STATE, &[]);
    };
    let result = match control.code {
        protocol::IOCTL_WAIT => {
            return match pending::check_wait(control.input, control.output_capacity) {
                Ok(request) => pending::wait(irp, request),
                Err(refused) => irp.complete(refused, &[]),
            };
        }
        protocol::IOCTL_SIGNAL => {
            match pending::signal(file, control.input, control.output_capacity) {
                Ok(reply) => return irp.complete(status::SUCCESS, reply.as_bytes()),
                Err(refused) => Err(refused),
            }
        }
        _ => ioctl::handle(open, control.code, control.input, control.output_capacity),
    };
    match result {
        Ok(reply) => irp.complete(status::SUCCESS, reply.as_bytes()),
        Err(status) => irp.complete(status, &[]),
    }
}
