//! Typed requests over a [`Device`]: a [`Session`] owns one open handle and closes it when it
//! is dropped, so a scenario that stops half-way leaves no handle (and no lock) behind.

use std::fmt;

use pagelock_protocol::zerocopy::IntoBytes;
use pagelock_protocol::{
    self as protocol, BenchReply, BenchRequest, LockReply, PROTOCOL_VERSION, RunReply, RunRequest,
    SignalReply, SignalRequest, SignalScope, StateReply, Versioned, WaitReply, WaitRequest,
};

use crate::device::{Device, Reply, TransportError};
use crate::errors::status_text;

/// Why a typed request did not produce its reply.
#[derive(Debug)]
pub enum Failure {
    /// The transport failed; the driver may never have seen the request.
    Transport(TransportError),
    /// The driver (or the I/O manager) refused the request with this status.
    Status(i32),
    /// The request succeeded but the reply is not the size of its structure.
    ReplySize {
        /// The structure's size.
        expected: usize,
        /// The bytes that came back.
        got: usize,
    },
    /// The reply carries another protocol version.
    Version(u32),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(error) => write!(f, "transport error: {error}"),
            Self::Status(status) => f.write_str(&status_text(*status)),
            Self::ReplySize { expected, got } => {
                write!(f, "a reply of {got} bytes instead of {expected}")
            }
            Self::Version(version) => {
                write!(f, "a reply of protocol version {version} instead of {PROTOCOL_VERSION}")
            }
        }
    }
}

impl std::error::Error for Failure {}

impl From<TransportError> for Failure {
    fn from(error: TransportError) -> Self {
        Self::Transport(error)
    }
}

/// The name of a control code, for reports: one of [`protocol::IOCTLS`], or its value.
#[must_use]
pub fn code_name(code: u32) -> String {
    protocol::IOCTLS
        .iter()
        .find(|&&(known, _)| known == code)
        .map_or_else(|| format!("0x{code:08X}"), |&(_, name)| name.to_owned())
}

/// One open handle on the device.
///
/// # Invariants
/// `handle` is `Some` from [`Session::open`] until [`Session::close`] or drop.
pub struct Session<'d, D: Device + ?Sized> {
    device: &'d D,
    handle: Option<D::Handle>,
}

impl<'d, D: Device + ?Sized> Session<'d, D> {
    /// Opens a handle.
    ///
    /// # Errors
    /// [`Failure::Status`] when the open was refused, [`Failure::Transport`] when the transport
    /// failed.
    pub fn open(device: &'d D) -> Result<Self, Failure> {
        let handle = device.open()?.map_err(Failure::Status)?;
        // INVARIANT: the handle opened just now.
        Ok(Self { device, handle: Some(handle) })
    }

    /// Opens a handle for overlapped I/O, for requests from several threads at once (see
    /// [`Device::open_overlapped`]).
    ///
    /// # Errors
    /// As [`Session::open`].
    pub fn open_overlapped(device: &'d D) -> Result<Self, Failure> {
        let handle = device.open_overlapped()?.map_err(Failure::Status)?;
        // INVARIANT: the handle opened just now.
        Ok(Self { device, handle: Some(handle) })
    }

    const fn handle(&self) -> &D::Handle {
        self.handle.as_ref().expect("a session holds its handle until it is closed")
    }

    /// Sends `code` as it is, for requests built to be wrong.
    ///
    /// # Errors
    /// When the transport failed.
    pub fn raw(
        &self,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<Reply, TransportError> {
        self.device.control(self.handle(), code, input, output_capacity)
    }

    /// Sends `code` with `input` and decodes a reply of type `T`, offering exactly its size.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn request<T: Versioned>(&self, code: u32, input: &[u8]) -> Result<T, Failure> {
        let reply = self.raw(code, input, size_of::<T>())?;
        decode(&reply)
    }

    /// `QUERY_STATE`.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn query(&self) -> Result<StateReply, Failure> {
        self.request(protocol::IOCTL_QUERY_STATE, &[])
    }

    /// `LOCK`: one more lock on every section, held by this handle.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn lock(&self) -> Result<LockReply, Failure> {
        self.request(protocol::IOCTL_LOCK, &[])
    }

    /// `UNLOCK`: releases one extra lock of this handle.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn unlock(&self) -> Result<LockReply, Failure> {
        self.request(protocol::IOCTL_UNLOCK, &[])
    }

    /// `RUN_LOCKED`.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn run_locked(&self, request: &RunRequest) -> Result<RunReply, Failure> {
        self.request(protocol::IOCTL_RUN_LOCKED, request.as_bytes())
    }

    /// `BENCH`.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn bench(&self, request: &BenchRequest) -> Result<BenchReply, Failure> {
        self.request(protocol::IOCTL_BENCH, request.as_bytes())
    }

    /// `WAIT`: returns when the wait expired or was signalled; a cancelled wait is
    /// [`Failure::Status`] with `STATUS_CANCELLED`.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn wait(&self, request: &WaitRequest) -> Result<WaitReply, Failure> {
        self.request(protocol::IOCTL_WAIT, request.as_bytes())
    }

    /// `SIGNAL`: completes the waits `scope` names; how many.
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn signal(&self, scope: SignalScope) -> Result<SignalReply, Failure> {
        self.request(protocol::IOCTL_SIGNAL, SignalRequest::new(scope).as_bytes())
    }

    /// Sends a `WAIT` and returns while it is queued (see [`Device::start`]); the session must
    /// have been opened with [`Session::open_overlapped`]. The wait may be finished after this
    /// session is cancelled or closed.
    ///
    /// # Errors
    /// When the transport failed (or the handle is not overlapped).
    pub fn start_wait(&self, request: &WaitRequest) -> Result<PendingWait<'d, D>, TransportError> {
        let pending = self.device.start(
            self.handle(),
            protocol::IOCTL_WAIT,
            request.as_bytes(),
            size_of::<WaitReply>(),
        )?;
        Ok(PendingWait { device: self.device, pending })
    }

    /// Cancels every request of this handle in flight (`CancelIoEx(handle, NULL)`).
    ///
    /// # Errors
    /// When the transport failed.
    pub fn cancel(&self) -> Result<(), TransportError> {
        self.device.cancel(self.handle())
    }

    /// Closes the handle, reporting a transport failure (dropping the session closes it too,
    /// silently).
    ///
    /// # Errors
    /// When the transport failed.
    pub fn close(mut self) -> Result<(), TransportError> {
        self.handle.take().map_or(Ok(()), |handle| self.device.close(handle))
    }
}

impl<D: Device + ?Sized> Drop for Session<'_, D> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Best effort: this only runs when a caller stopped early, and has no one to tell.
            let _ = self.device.close(handle);
        }
    }
}

/// A `WAIT` sent with [`Session::start_wait`] and not finished yet.
pub struct PendingWait<'d, D: Device + ?Sized> {
    device: &'d D,
    pending: D::Pending,
}

impl<D: Device + ?Sized> PendingWait<'_, D> {
    /// Waits until the `WAIT` ends: its reply when it expired or was signalled,
    /// [`Failure::Status`] with `STATUS_CANCELLED` when it was cancelled (by the caller or the
    /// close of its handle).
    ///
    /// # Errors
    /// See [`Failure`].
    pub fn finish(self) -> Result<WaitReply, Failure> {
        decode(&self.device.finish(self.pending)?)
    }
}

/// How a `WAIT` ended, as a check shows it: `expired`, `signalled` or `cancelled` (with the
/// cookie the reply carried, when it carried one), or why it failed.
#[must_use]
pub fn wait_end(result: &Result<WaitReply, Failure>) -> String {
    match result {
        Ok(reply) => {
            let outcome = protocol::WaitOutcome::from_u32(reply.outcome)
                .map_or("an unknown outcome", protocol::WaitOutcome::name);
            format!("{outcome}, cookie {}", reply.cookie)
        }
        Err(Failure::Status(protocol::status::CANCELLED)) => "cancelled".to_owned(),
        Err(failure) => failure.to_string(),
    }
}

/// Decodes a successful reply of exactly `size_of::<T>()` bytes with the current version.
///
/// # Errors
/// See [`Failure`]; never [`Failure::Transport`].
pub fn decode<T: Versioned>(reply: &Reply) -> Result<T, Failure> {
    if !protocol::status::is_success(reply.status) {
        return Err(Failure::Status(reply.status));
    }
    let value = T::read_from_bytes(&reply.output)
        .map_err(|_| Failure::ReplySize { expected: size_of::<T>(), got: reply.output.len() })?;
    if value.version() == PROTOCOL_VERSION {
        Ok(value)
    } else {
        Err(Failure::Version(value.version()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Model;

    #[test]
    fn a_dropped_session_closes_its_handle() {
        let model = Model::correct();
        {
            let _first = Session::open(&model).expect("open");
            let second = Session::open(&model).expect("open");
            assert_eq!(second.query().expect("query").open_handles, 2);
        }
        let probe = Session::open(&model).expect("open");
        assert_eq!(probe.query().expect("query").open_handles, 1);
        probe.close().expect("close");
    }

    #[test]
    fn replies_of_the_wrong_size_or_version_are_failures() {
        let short = Reply { status: 0, output: vec![1, 0, 0, 0] };
        assert!(matches!(
            decode::<LockReply>(&short),
            Err(Failure::ReplySize { expected: 8, got: 4 })
        ));
        let old = Reply {
            status: 0,
            output: LockReply { version: 0, extra_locks: 1 }.as_bytes().to_vec(),
        };
        assert!(matches!(decode::<LockReply>(&old), Err(Failure::Version(0))));
        let refused = Reply { status: protocol::status::INVALID_DEVICE_STATE, output: vec![] };
        assert!(matches!(decode::<LockReply>(&refused), Err(Failure::Status(_))));
    }

    #[test]
    fn codes_are_named_after_the_protocol() {
        assert_eq!(code_name(protocol::IOCTL_RUN_LOCKED), "RUN_LOCKED");
        assert_eq!(code_name(0x0022_6000), "0x00226000");
    }
}
