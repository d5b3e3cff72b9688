//! lifecycle: each open adds one lock per section, each close removes it.

use pagelock_protocol::SECTION_COUNT;

use crate::client::Session;
use crate::device::Device;

use super::recorder::scenario;
use super::state::settled;
use super::{Scenario, Verdict};

/// Each open adds one lock per section and each close removes it; counts return to what the
/// querying handle holds. Opening and closing never locks by address.
pub fn lifecycle<D: Device + ?Sized>(device: &D) -> Verdict {
    const HANDLES: u32 = 3;
    let sections = SECTION_COUNT as u64;
    scenario(Scenario::Lifecycle, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let held = base.sections[0].held_by_caller;
        r.lock_counts("before", &base, held);
        let mut opened = Vec::new();
        for n in 1..=HANDLES {
            let session = r.require(format!("open handle #{n}"), Session::open(device))?;
            let own = r.require(format!("QUERY_STATE on handle #{n}"), session.query())?;
            r.held(&format!("handle #{n}, just opened"), &own, 1);
            r.eq(format!("handle #{n}, just opened: its extra locks"), 0, own.caller_extra_locks);
            opened.push(session);
            let state = r.require("QUERY_STATE", probe.query())?;
            let context = format!("after opening handle #{n}");
            r.lock_counts(&context, &state, held + n);
            r.eq(format!("{context}: open handles"), base.open_handles + n, state.open_handles);
            r.held(&format!("{context}, querying handle"), &state, held);
            r.eq(
                format!("{context}: lock-by-handle calls"),
                base.lock_by_handle_calls + sections * u64::from(n),
                state.lock_by_handle_calls,
            );
        }
        for n in 1..=HANDLES {
            opened.remove(0).close()?;
            let state =
                r.require("QUERY_STATE", settled(&probe, base.open_handles + HANDLES - n))?;
            let context = format!("after closing handle #{n}");
            r.lock_counts(&context, &state, held + HANDLES - n);
            r.eq(
                format!("{context}: open handles"),
                base.open_handles + HANDLES - n,
                state.open_handles,
            );
            r.eq(
                format!("{context}: unlock calls"),
                base.unlock_calls + sections * u64::from(n),
                state.unlock_calls,
            );
        }
        let end = r.require("QUERY_STATE", settled(&probe, base.open_handles))?;
        r.lock_counts("all closed again", &end, held);
        r.eq(
            "opens and closes never lock by address",
            base.lock_by_address_calls,
            end.lock_by_address_calls,
        );
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
        let verdict = lifecycle(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_close_leaks_a_lock() {
        let verdict = lifecycle(&Model::with(Fault::LeakOnClose));
        assert!(!verdict.passed());
        assert!(
            verdict.failures().any(|c| c.what.starts_with("after closing handle #1: locks on"))
        );
    }
}
