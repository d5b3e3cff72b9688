//! The scenario suite's device interface, served in process by the bed, so that the scenarios
//! that run against the real kernel on Windows run against the real driver image here.

use pagelock_test::device::{BadOpen, BadOpenOutcome, Device, Reply, TransportError};

use crate::bed::{Bed, Handle, OpenOptions, Pending};

/// The seed of the schedules the scenario suite's concurrent parts run under.
const SUITE_SEED: u64 = 0x5CED_0001;

/// A device on the bed, opened by name (a device name or a link).
pub struct BedDevice<'a> {
    /// The loaded driver.
    pub bed: &'a Bed,
    /// The name opened.
    pub name: String,
}

impl Device for BedDevice<'_> {
    type Handle = Handle;
    type Pending = Pending;

    fn open(&self) -> Result<Result<Handle, i32>, TransportError> {
        Ok(self.bed.open(&self.name))
    }

    /// Both reach the driver: the bed builds the create IRP as the I/O manager does, with the
    /// name below the device in the file object's `FileName`, or with `FILE_DIRECTORY_FILE` in
    /// its create options, and fails the open with the driver's status.
    fn open_bad(&self, open: BadOpen) -> Result<BadOpenOutcome<Handle>, TransportError> {
        let opened = match open {
            BadOpen::NameBelowDevice => {
                self.bed.open(&format!("{}{}", self.name, BadOpen::NAME_BELOW))
            }
            BadOpen::AsDirectory => self
                .bed
                .open_with(&self.name, OpenOptions { directory: true, ..OpenOptions::default() }),
        };
        Ok(opened.map_or_else(BadOpenOutcome::Refused, BadOpenOutcome::Opened))
    }

    fn open_overlapped(&self) -> Result<Result<Handle, i32>, TransportError> {
        Ok(self.bed.open_overlapped(&self.name))
    }

    fn concurrently(&self, n: usize, work: &(dyn Fn(usize) + Sync)) {
        // On emulated CPUs under the scheduler, with a fixed seed: the suite is reproducible.
        crate::sched::run(n, SUITE_SEED, crate::sched::Policy::Uniform, |cpu| work(cpu as usize));
    }

    fn control(
        &self,
        handle: &Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Reply, TransportError> {
        let (status, output) = self.bed.control(handle, code, input, output_capacity);
        Ok(Reply { status, output })
    }

    fn start(
        &self,
        handle: &Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Pending, TransportError> {
        if !Bed::overlapped(handle) {
            return Err(TransportError(
                "start needs a handle opened for overlapped I/O: a synchronous handle's request \
                 would not return before it completes"
                    .to_owned(),
            ));
        }
        Ok(self.bed.control_overlapped(handle, code, input, output_capacity))
    }

    fn finish(&self, pending: Pending) -> Result<Reply, TransportError> {
        let (status, output) = self.bed.finish(pending);
        Ok(Reply { status, output })
    }

    fn cancel(&self, handle: &Handle) -> Result<(), TransportError> {
        self.bed.cancel_all(handle);
        Ok(())
    }

    fn close(&self, handle: Handle) -> Result<(), TransportError> {
        self.bed.close(handle);
        Ok(())
    }
}
