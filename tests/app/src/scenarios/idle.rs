//! idle: with only the querying handle open, every count is what that handle holds.

use pagelock_protocol::{self as protocol, PROTOCOL_VERSION, StateReply, status};

use crate::client::Session;
use crate::device::Device;
use crate::errors::status_text;

use super::recorder::scenario;
use super::state::settled;
use super::{Scenario, Verdict};

/// With only the querying handle open, every section's count is what that handle holds.
pub fn idle<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::Idle, device, |r, device| {
        let probe = r.require("open a handle", Session::open(device))?;
        // A larger output buffer than the reply is fine; the reply is still exactly its size.
        let reply = probe.raw(protocol::IOCTL_QUERY_STATE, &[], 2 * size_of::<StateReply>())?;
        r.eq(
            "QUERY_STATE with a larger output buffer: status",
            status_text(status::SUCCESS),
            status_text(reply.status),
        );
        r.eq(
            "QUERY_STATE with a larger output buffer: reply length",
            size_of::<StateReply>(),
            reply.output.len(),
        );
        let state = r.require("QUERY_STATE", settled(&probe, 1))?;
        r.eq("protocol version of the reply", PROTOCOL_VERSION, state.version);
        r.eq("open handles", 1, state.open_handles);
        r.eq("extra locks of the querying handle", 0, state.caller_extra_locks);
        r.held("only this handle open", &state, 1);
        for section in &state.sections {
            r.eq(
                format!("only this handle open: locks on {} equal what it holds", section.name()),
                section.held_by_caller,
                section.lock_count,
            );
            r.check(
                format!("{}: named, with a size", section.name()),
                "a name and a size > 0",
                format!("{:?}, {} bytes", section.name(), section.size),
                !section.name().is_empty() && section.size > 0,
            );
        }
        probe.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = idle(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_a_lock_is_left_over() {
        let verdict = idle(&Model::with(Fault::StaleLock));
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what.contains("equal what it holds") && c.seen == "2")
        );
    }

    #[test]
    fn fails_when_open_handles_are_miscounted() {
        assert!(!idle(&Model::with(Fault::MiscountsHandles)).passed());
    }
}
