//! The device interface the scenarios are written against, with one implementation per place
//! the driver runs: the Windows kernel (this crate's `windows` transport) and the test bed
//! (`pagelock-testbed`).

/// What a control request came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The `NTSTATUS` the driver completed the request with (see
    /// `pagelock_protocol::status`). A Windows transport maps the Win32 error of
    /// `DeviceIoControl` back to the status for the statuses the protocol documents.
    pub status: i32,
    /// The bytes the driver returned (`IoStatus.Information` of them), empty on failure.
    pub output: Vec<u8>,
}

/// An open the driver refuses: the device has no namespace and is no directory (the protocol's
/// opening rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadOpen {
    /// A name below the device's, `\\.\PageLock\anything`: the driver sees what follows the
    /// device's name in the file object's `FileName`.
    NameBelowDevice,
    /// The device opened as a directory: `FILE_DIRECTORY_FILE` in the create options. Only the
    /// native `NtCreateFile` can ask for it: `CreateFileW` always asks for a non-directory
    /// (`FILE_NON_DIRECTORY_FILE`), or with `FILE_FLAG_BACKUP_SEMANTICS` for either.
    AsDirectory,
}

impl BadOpen {
    /// Every kind.
    pub const ALL: [Self; 2] = [Self::NameBelowDevice, Self::AsDirectory];

    /// What [`BadOpen::NameBelowDevice`] appends to the device's name.
    pub const NAME_BELOW: &str = r"\anything";

    /// What the open is, for reports.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::NameBelowDevice => "an open of a name below the device",
            Self::AsDirectory => "an open of the device as a directory",
        }
    }

    /// The status the protocol documents for it.
    #[must_use]
    pub const fn expected(self) -> i32 {
        match self {
            Self::NameBelowDevice => pagelock_protocol::status::OBJECT_NAME_NOT_FOUND,
            Self::AsDirectory => pagelock_protocol::status::NOT_A_DIRECTORY,
        }
    }
}

/// What became of a [`BadOpen`].
#[derive(Debug)]
pub enum BadOpenOutcome<H> {
    /// The open failed with this status: on Windows and the test bed, the one the driver
    /// completed `IRP_MJ_CREATE` with.
    Refused(i32),
    /// A handle came back: the driver accepted the open. The handle is the caller's to close.
    Opened(H),
    /// A handle came back from an I/O manager that answers an open without waiting for the
    /// driver's `IRP_MJ_CREATE` (Wine 8's server queues the IRP and returns the handle): whether
    /// the driver refused the open shows only in whether it keeps state for the handle. The
    /// handle is the caller's to close.
    OpenedBeforeTheDriverAnswered(H),
    /// The open cannot reach the driver through this transport, for the reason given.
    NotDelivered(String),
}

/// A failure of the transport itself, not a status from the driver.
#[derive(Debug)]
pub struct TransportError(pub String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransportError {}

/// A way to reach `\Device\PageLock`.
///
/// Shared between threads: the scenarios and the stress run send requests from several at
/// once, on their own handles or on one opened with [`Device::open_overlapped`].
pub trait Device: Sync {
    /// An open handle.
    type Handle: Send + Sync;
    /// A request sent with [`Device::start`] and not finished yet. It owns what the request
    /// needs until it completes (on Windows the `OVERLAPPED`, its event and the output buffer),
    /// so it may be finished from any thread, before or after its handle is closed.
    type Pending: Send;

    /// Opens a handle with read and write access.
    ///
    /// # Errors
    /// `Ok(Err(status))` when the open was refused with an `NTSTATUS` (for example
    /// `STATUS_ACCESS_DENIED`), `Err` when the transport failed.
    fn open(&self) -> Result<Result<Self::Handle, i32>, TransportError>;

    /// Tries `open`, which the driver must refuse, and says what became of it.
    ///
    /// # Errors
    /// When the transport failed.
    fn open_bad(&self, open: BadOpen) -> Result<BadOpenOutcome<Self::Handle>, TransportError>;

    /// Opens a handle for overlapped I/O (`FILE_FLAG_OVERLAPPED`): the I/O manager lets several
    /// requests of one such handle into the driver at once, where a synchronous handle's
    /// requests wait for each other. A transport without the distinction opens an ordinary
    /// handle.
    ///
    /// # Errors
    /// As [`Device::open`].
    fn open_overlapped(&self) -> Result<Result<Self::Handle, i32>, TransportError> {
        self.open()
    }

    /// Runs `work(0)` to `work(n - 1)` at once, one thread each, and returns when all have
    /// finished. A machine runs them on its processors; the test bed on emulated ones, under
    /// its seeded scheduler, which decides where the threads interleave.
    fn concurrently(&self, n: usize, work: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|scope| {
            for i in 0..n {
                scope.spawn(move || work(i));
            }
        });
    }

    /// Sends `code` with `input`, offering `output_capacity` bytes for the reply.
    ///
    /// # Errors
    /// When the transport failed; driver statuses come back in [`Reply::status`].
    fn control(
        &self,
        handle: &Self::Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Reply, TransportError>;

    /// Sends `code` with `input` on a handle opened with [`Device::open_overlapped`] and returns
    /// without waiting for the driver to complete it (`DeviceIoControl` with an `OVERLAPPED`);
    /// [`Device::finish`] waits for its reply. Meant for `WAIT`, which the driver queues; a
    /// request the driver completes at once is simply finished already.
    ///
    /// On Windows a request belongs to the thread that sent it, and is cancelled when that
    /// thread exits (the I/O manager cancels a thread's IRPs as it ends): send it from a thread
    /// that lives until the request is finished.
    ///
    /// The request does not borrow the handle: the handle may be cancelled ([`Device::cancel`])
    /// or closed ([`Device::close`]) while the request is pending, and the request then finishes
    /// with the status the driver completed it with (`STATUS_CANCELLED` for a queued `WAIT`).
    ///
    /// # Errors
    /// When the transport failed, or `handle` was not opened for overlapped I/O (a synchronous
    /// handle's request would not return before it completes).
    fn start(
        &self,
        handle: &Self::Handle,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Self::Pending, TransportError>;

    /// Waits until a request sent with [`Device::start`] has completed; its reply.
    ///
    /// # Errors
    /// When the transport failed; driver statuses come back in [`Reply::status`].
    fn finish(&self, pending: Self::Pending) -> Result<Reply, TransportError>;

    /// Cancels every request of `handle` that is in flight, from whichever thread sent it
    /// (`CancelIoEx(handle, NULL)`): a queued `WAIT` completes with `STATUS_CANCELLED`; a
    /// request that is not in flight any more is left alone, and with nothing in flight this
    /// does nothing.
    ///
    /// # Errors
    /// When the transport failed.
    fn cancel(&self, handle: &Self::Handle) -> Result<(), TransportError>;

    /// Closes a handle (cleanup, then close, reach the driver).
    ///
    /// # Errors
    /// When the transport failed.
    fn close(&self, handle: Self::Handle) -> Result<(), TransportError>;
}
