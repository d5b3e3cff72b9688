//! What the pending-request scenarios share: the timeouts that decide how a wait may end.
//!
//! A wait that must end some other way than by expiring (signalled, cancelled, closed) asks
//! for [`LONG_WAIT_MS`]: the scenarios end it within milliseconds, so whatever order the
//! processors run in, its timeout cannot pass first. A wait that must expire asks for
//! [`SHORT_WAIT_MS`], and nothing else is done to it.

use pagelock_protocol::WaitRequest;

/// A timeout no scenario waits out: half of `MAX_WAIT_MS`.
pub(super) const LONG_WAIT_MS: u32 = pagelock_protocol::MAX_WAIT_MS / 2;
/// A timeout a scenario waits out: a few of the driver's timer periods.
pub(super) const SHORT_WAIT_MS: u32 = 5 * pagelock_protocol::WAIT_TICK_MS;

/// A `WAIT` of [`LONG_WAIT_MS`] carrying `cookie`.
pub(super) const fn long(cookie: u64) -> WaitRequest {
    WaitRequest::new(LONG_WAIT_MS, cookie)
}

/// A `WAIT` of [`SHORT_WAIT_MS`] carrying `cookie`.
pub(super) const fn short(cookie: u64) -> WaitRequest {
    WaitRequest::new(SHORT_WAIT_MS, cookie)
}

/// How a check shows a wait that ended as `outcome` with `cookie` ([`crate::client::wait_end`]).
pub(super) fn ended(outcome: &str, cookie: u64) -> String {
    format!("{outcome}, cookie {cookie}")
}
