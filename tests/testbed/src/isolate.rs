//! Runs one session in a child process and brings its report back over a pipe.

use std::{io::Read, os::fd::FromRawFd};

use anyhow::{Result, bail};

use crate::{bed::Report, bugcheck};

/// Runs `session` in a forked child. The child's report comes back whole, or, when the child
/// died without one, an error saying how.
///
/// # Errors
/// When the pipe or fork fails, or the child died without a report.
pub fn isolated(session: impl FnOnce() -> Result<Report>) -> Result<Report> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe failed");
    }
    // SAFETY: the caller is single-threaded here (the CLI forks before starting threads).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed");
    }
    if pid == 0 {
        // SAFETY: the child's copy of the read end is not used.
        unsafe { libc::close(fds[0]) };
        bugcheck::set_report_fd(fds[1]);
        let report = session().unwrap_or_else(|error| Report {
            events: vec![format!("error: {error:#}")],
            bugcheck: None,
            ..Report::default()
        });
        bugcheck::write_report(&serde_json::to_vec(&report).unwrap_or_default());
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the parent's copy of the write end is not used.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end belongs to this function from here on.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes)?;
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if bytes.is_empty() {
        if libc::WIFSIGNALED(status) {
            bail!(
                "the driver's process died of signal {} without a report",
                libc::WTERMSIG(status)
            );
        }
        bail!("the driver's process exited with {} without a report", libc::WEXITSTATUS(status));
    }
    Ok(serde_json::from_slice(&bytes)?)
}
