//! The dispatch routines: create, cleanup, close and device control, all at `PASSIVE_LEVEL`
//! in the calling thread, all in `PAGE`.

use core::sync::atomic::Ordering;

use pagelock_macros::paged;

use crate::{
    ioctl::{self, OPEN_HANDLES},
    kernel::{Irp, Status, major, status, try_box},
    open::Open,
};

/// Routes an IRP by major function and completes it.
#[paged]
pub fn dispatch(irp: Irp) -> Status {
    match irp.major() {
        major::CREATE => create(irp),
        major::CLOSE => close(irp),
        major::CLEANUP => irp.complete(status::SUCCESS, &[]),
        major::DEVICE_CONTROL => device_control(irp),
        _ => irp.complete(status::INVALID_DEVICE_REQUEST, &[]),
    }
}

/// `IRP_MJ_CREATE`: allocates the per-open state, then locks both sections by handle.
#[paged]
fn create(mut irp: Irp) -> Status {
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

/// `IRP_MJ_CLOSE`: releases exactly the locks this open holds and frees its state.
///
/// No IRP of this handle can be outstanding here: the I/O manager sends close only after
/// the last reference to the file object is gone, and every request this driver receives
/// is completed before its dispatch routine returns (none is ever pended or queued). So
/// releasing the sections cannot pull code or data from under a request in flight.
#[paged]
fn close(mut irp: Irp) -> Status {
    if let Some(open) = irp.take_open() {
        // MmUnlockPagableImageSection at PASSIVE_LEVEL, once per lock held, as `open` drops.
        drop(open);
        OPEN_HANDLES.fetch_sub(1, Ordering::SeqCst);
    }
    irp.complete(status::SUCCESS, &[])
}

/// `IRP_MJ_DEVICE_CONTROL`: see [`ioctl::handle`].
#[paged]
fn device_control(mut irp: Irp) -> Status {
    let (open, control) = irp.control();
    let result = open.map_or(Err(status::INVALID_DEVICE_STATE), |open| {
        ioctl::handle(open, control.code, control.input, control.output_capacity)
    });
    match result {
        Ok(reply) => irp.complete(status::SUCCESS, reply.as_bytes()),
        Err(status) => irp.complete(status, &[]),
    }
}
