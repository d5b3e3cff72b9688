//! many-handles: handles opened and closed in interleaved orders keep every count exact.

use pagelock_protocol::{self as protocol, SECTION_COUNT, StateReply};

use crate::client::Session;
use crate::device::Device;

use super::recorder::{Recorder, Stop, scenario, summarize};
use super::state::{lock_counts, settled};
use super::{Scenario, Verdict};

/// `SplitMix64` as a small deterministic generator for the interleavings.
struct Mix(u64);

impl Mix {
    const fn below(&mut self, n: usize) -> usize {
        self.0 = protocol::splitmix64(self.0);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the remainder is below n, a usize; the modulo bias does not matter for an order"
        )]
        let pick = (self.0 % n as u64) as usize;
        pick
    }
}

/// The handles a many-handles round holds open: (label, session, extra locks it holds).
type Opened<'d, D> = Vec<(u32, Session<'d, D>, u32)>;

/// A count of handles as the protocol reports it.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Several handles, some holding extra locks, opened and closed in interleaved orders: the
/// counts always equal what the open handles hold.
pub fn many_handles<D: Device + ?Sized>(device: &D) -> Verdict {
    const ROUNDS: u64 = 3;
    const HANDLES: u32 = 6;
    scenario(Scenario::ManyHandles, device, |r, device| {
        let probe = r.require("open the querying handle", Session::open(device))?;
        let base = r.require("QUERY_STATE", settled(&probe, 1))?;
        let mut round = Round { probe: &probe, base, label: 0, number: 0, mix: Mix(0) };
        for number in 1..=ROUNDS {
            round.number = number;
            round.mix = Mix(number);
            let mut open: Opened<'_, D> = Vec::new();
            for _ in 0..HANDLES {
                round.open_one(r, device, &mut open)?;
            }
            // Close half in a shuffled order, open two more, close the rest newest first.
            for _ in 0..HANDLES / 2 {
                let (n, session, _) = open.remove(round.mix.below(open.len()));
                session.close()?;
                round.step(r, &open, &format!("closed handle #{n}"))?;
            }
            for _ in 0..2 {
                round.open_one(r, device, &mut open)?;
            }
            while let Some((n, session, _)) = open.pop() {
                session.close()?;
                round.step(r, &open, &format!("closed handle #{n}"))?;
            }
        }
        let end = r.require("QUERY_STATE", probe.query())?;
        r.lock_counts("all closed", &end, base.sections[0].held_by_caller);
        probe.close()?;
        Ok(())
    })
}

/// The bookkeeping of the many-handles scenario.
struct Round<'p, 'd, D: Device + ?Sized> {
    probe: &'p Session<'d, D>,
    base: StateReply,
    label: u32,
    number: u64,
    mix: Mix,
}

impl<'d, D: Device + ?Sized> Round<'_, 'd, D> {
    /// Opens the next handle, takes `label % 3` extra locks on it, and checks the counts.
    fn open_one(
        &mut self,
        r: &mut Recorder,
        device: &'d D,
        open: &mut Opened<'d, D>,
    ) -> Result<(), Stop> {
        self.label += 1;
        let n = self.label;
        let session = r.require(format!("open handle #{n}"), Session::open(device))?;
        let extra = n % 3;
        for _ in 0..extra {
            r.require(format!("LOCK on handle #{n}"), session.lock())?;
        }
        open.push((n, session, extra));
        self.step(r, open, &format!("opened handle #{n} with {extra} extra locks"))
    }

    /// Checks the totals through the querying handle, and what one open handle holds.
    fn step(&mut self, r: &mut Recorder, open: &Opened<'d, D>, what: &str) -> Result<(), Stop> {
        let round = self.number;
        let handles = self.base.open_handles + count(open.len());
        let state = r.require("QUERY_STATE", settled(self.probe, handles))?;
        let locks = self.base.sections[0].lock_count
            + open.iter().map(|(_, _, extra)| 1 + extra).sum::<u32>();
        let seen = lock_counts(&state);
        r.check(
            format!("round {round}, {what}: locks per section and open handles"),
            format!("{} locks, {handles} handles", summarize(&[locks; SECTION_COUNT])),
            format!("{} locks, {} handles", summarize(&seen), state.open_handles),
            seen.iter().all(|&count| count == locks) && state.open_handles == handles,
        );
        if !open.is_empty() {
            let (n, session, extra) = &open[self.mix.below(open.len())];
            let own = r.require(format!("QUERY_STATE on handle #{n}"), session.query())?;
            let held = own.sections.map(|section| section.held_by_caller);
            r.check(
                format!("round {round}, {what}: what handle #{n} holds"),
                format!("{} locks, {extra} extra", summarize(&[1 + extra; SECTION_COUNT])),
                format!("{} locks, {} extra", summarize(&held), own.caller_extra_locks),
                held.iter().all(|&count| count == 1 + extra) && own.caller_extra_locks == *extra,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = many_handles(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_held_counts_are_not_per_handle() {
        let verdict = many_handles(&Model::with(Fault::HeldCountsEveryHandle));
        assert!(!verdict.passed());
        assert!(verdict.failures().all(|c| c.what.contains("holds")));
    }

    #[test]
    fn fails_when_close_keeps_extra_locks() {
        assert!(!many_handles(&Model::with(Fault::ExtraLocksSurviveClose)).passed());
    }
}
