//! Isolation: each driver run happens in a forked child process.
//!
//! So a bugcheck or a crash
//! of the driver never takes the caller down. The child sends one message back over a pipe
//! (JSON): its result, the report of the bugcheck that stopped it, or why it could not run.

use std::{
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    panic::AssertUnwindSafe,
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::report::Report;

/// Where this child writes its message, or -1 when the process is not an isolated child.
static CHANNEL: AtomicI32 = AtomicI32::new(-1);

/// What came back from an isolated run.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The session ran to its end.
    Finished(T),
    /// A bugcheck stopped it: the report up to that point.
    Stopped(Box<Report>),
    /// The session could not run (a load error, for example).
    Failed(String),
    /// The child died without a message, or did not finish in time.
    Died(String),
}

#[derive(Serialize, Deserialize)]
enum Message<T> {
    Finished(T),
    Stopped(Box<Report>),
    Failed(String),
}

/// How long an isolated run may take before it is killed as hung.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_mins(5);

/// Runs `session` in a forked child and returns what it sent back.
///
/// Call it from a single-threaded process (the CLI does, before any thread starts): the child
/// of a multi-threaded process may find a lock held by a thread that no longer exists.
///
/// # Errors
/// When the pipe or the fork fails, or the child's message cannot be read.
pub fn run<T: Serialize + DeserializeOwned>(
    session: impl FnOnce() -> Result<T>,
    timeout: Duration,
) -> Result<Outcome<T>> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned here alone.
    let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write_end = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    // SAFETY: fork has no memory-safety preconditions; see the doc comment on threads.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(read_end);
        child(session, write_end);
    }
    drop(write_end);
    let mut pipe = std::fs::File::from(read_end);
    let bytes = read_with_deadline(&mut pipe, Instant::now() + timeout);
    let timed_out = bytes.is_none();
    if timed_out {
        // SAFETY: signals the child forked above, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    let bytes = bytes.unwrap_or_default();
    if timed_out {
        return Ok(Outcome::Died(format!(
            "the run did not finish within {} s and was killed (a hang: a deadlock, an endless loop?)",
            timeout.as_secs()
        )));
    }
    if bytes.is_empty() {
        let how = if libc::WIFSIGNALED(status) {
            format!("died of signal {}", libc::WTERMSIG(status))
        } else {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        };
        return Ok(Outcome::Died(format!("the driver's process {how} without a report")));
    }
    Ok(match serde_json::from_slice(&bytes)? {
        Message::Finished(value) => Outcome::Finished(value),
        Message::Stopped(report) => Outcome::Stopped(report),
        Message::Failed(message) => Outcome::Failed(message),
    })
}

/// The child: runs the session, sends its message, and ends without unwinding into the
/// parent's code.
fn child<T: Serialize>(session: impl FnOnce() -> Result<T>, channel: OwnedFd) -> ! {
    use std::os::fd::IntoRawFd;
    CHANNEL.store(channel.into_raw_fd(), Ordering::SeqCst);
    let message = match std::panic::catch_unwind(AssertUnwindSafe(session)) {
        Ok(Ok(value)) => Message::Finished(value),
        Ok(Err(error)) => Message::Failed(format!("{error:#}")),
        Err(_) => Message::Failed("the bed panicked (see stderr)".to_owned()),
    };
    send(&message);
    // SAFETY: ends the child at once, without the parent's exit handlers or buffers.
    unsafe { libc::_exit(0) }
}

/// Reads until end of file, or gives up (`None`) at `deadline`.
fn read_with_deadline(pipe: &mut std::fs::File, deadline: Instant) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&raw mut poll, 1, millis) };
        if ready == 0 {
            return None;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Some(bytes);
        }
        match pipe.read(&mut buffer) {
            Ok(0) | Err(_) => return Some(bytes),
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
}

fn send<T: Serialize>(message: &Message<T>) {
    let bytes = serde_json::to_vec(message).unwrap_or_default();
    let fd = CHANNEL.load(Ordering::SeqCst);
    let mut rest = bytes.as_slice();
    while fd >= 0 && !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer; `fd` is this child's end of the pipe.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        rest = &rest[n..];
    }
}

/// Ends the run that a bugcheck stopped, with its `report`: sends it to the parent and ends the
/// child. Outside an isolated child it prints the report and ends the process with status 1.
pub fn stopped(report: Report) -> ! {
    if CHANNEL.load(Ordering::SeqCst) >= 0 {
        send(&Message::<()>::Stopped(Box::new(report)));
    } else {
        eprint!("{}", report.render());
    }
    // SAFETY: ends the process at once: the driver's state is not to be trusted any more.
    unsafe { libc::_exit(1) }
}

/// Runs a session that produces a report, folding a bugcheck's report in: the shape most
/// callers want.
///
/// # Errors
/// When the session could not run (its message), or the child died without a report.
pub fn isolated(session: impl FnOnce() -> Result<Report>) -> Result<Report> {
    match run(session, DEFAULT_TIMEOUT)? {
        Outcome::Finished(report) => Ok(report),
        Outcome::Stopped(report) => Ok(*report),
        Outcome::Failed(message) | Outcome::Died(message) => bail!(message),
    }
}
