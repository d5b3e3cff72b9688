//! What the commands print: the driver's state as a table or JSON, and bench results.

use std::fmt::Write as _;

use pagelock_protocol::{BenchReply, StateReply};
use serde::Serialize;

/// `numerator / denominator` as a float, for ratios that are printed, never asserted.
#[must_use]
pub fn ratio(numerator: u64, denominator: u64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "tick counts stay far below 2^52, where the conversion is exact"
    )]
    let ratio = numerator as f64 / denominator as f64;
    ratio
}

/// A driver version `major << 16 | minor << 8 | patch` as `major.minor.patch`.
#[must_use]
pub fn version_text(version: u32) -> String {
    format!("{}.{}.{}", (version >> 16) & 0xFF, (version >> 8) & 0xFF, version & 0xFF)
}

/// One lockable section, as `query --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SectionJson {
    /// The PE section name.
    pub name: String,
    /// Size in bytes.
    pub size: u32,
    /// Locks held on it now, over all handles.
    pub lock_count: u32,
    /// How many of those the querying handle holds.
    pub held_by_caller: u32,
}

/// The driver's state, as `query --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateJson {
    /// The protocol version of the reply.
    pub protocol_version: u32,
    /// The driver's version, `major.minor.patch`.
    pub driver_version: String,
    /// Handles open on the device, the querying one included.
    pub open_handles: u32,
    /// Extra locks the querying handle holds (none: it was just opened).
    pub caller_extra_locks: u32,
    /// The lockable sections: code first, then data.
    pub sections: Vec<SectionJson>,
    /// Calls to `MmLockPagableDataSection` since load.
    pub lock_by_address_calls: u64,
    /// Calls to `MmLockPagableSectionByHandle` since load.
    pub lock_by_handle_calls: u64,
    /// Calls to `MmUnlockPagableImageSection` since load.
    pub unlock_calls: u64,
    /// `RUN_LOCKED` requests completed since load.
    pub runs: u64,
}

impl From<&StateReply> for StateJson {
    fn from(state: &StateReply) -> Self {
        Self {
            protocol_version: state.version,
            driver_version: version_text(state.driver_version),
            open_handles: state.open_handles,
            caller_extra_locks: state.caller_extra_locks,
            sections: state
                .sections
                .iter()
                .map(|section| SectionJson {
                    name: section.name().to_owned(),
                    size: section.size,
                    lock_count: section.lock_count,
                    held_by_caller: section.held_by_caller,
                })
                .collect(),
            lock_by_address_calls: state.lock_by_address_calls,
            lock_by_handle_calls: state.lock_by_handle_calls,
            unlock_calls: state.unlock_calls,
            runs: state.runs,
        }
    }
}

/// The state as pretty-printed JSON.
#[must_use]
pub fn state_json(state: &StateReply) -> String {
    serde_json::to_string_pretty(&StateJson::from(state))
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
}

/// The state as a table. The querying handle is the app's own, and its locks are in the counts.
#[must_use]
pub fn state_table(state: &StateReply) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "pagelock {} (protocol {})",
        version_text(state.driver_version),
        state.version
    );
    let _ = writeln!(text, "open handles: {} (this query's own included)", state.open_handles);
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "{:<10} {:>10} {:>7} {:>16}",
        "section", "size", "locks", "held by this one"
    );
    for section in &state.sections {
        let _ = writeln!(
            text,
            "{:<10} {:>10} {:>7} {:>16}",
            section.name(),
            section.size,
            section.lock_count,
            section.held_by_caller
        );
    }
    let _ = writeln!(text);
    let counters = [
        ("MmLockPagableDataSection calls", state.lock_by_address_calls),
        ("MmLockPagableSectionByHandle calls", state.lock_by_handle_calls),
        ("MmUnlockPagableImageSection calls", state.unlock_calls),
        ("RUN_LOCKED runs", state.runs),
    ];
    for (name, value) in counters {
        let _ = writeln!(text, "{name:<36} {value:>10}");
    }
    text
}

/// `BENCH` replies added up, for runs longer than one request may time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchTotals {
    /// Pairs of each kind timed.
    pub iterations: u64,
    /// Ticks for the lock-by-address + unlock pairs.
    pub by_address_ticks: u64,
    /// Ticks for the lock-by-handle + unlock pairs.
    pub by_handle_ticks: u64,
    /// The performance-counter frequency (the last reply's).
    pub frequency: u64,
}

impl BenchTotals {
    /// Adds one reply.
    pub const fn add(&mut self, reply: &BenchReply) {
        self.iterations += reply.iterations as u64;
        self.by_address_ticks += reply.by_address_ticks;
        self.by_handle_ticks += reply.by_handle_ticks;
        self.frequency = reply.frequency;
    }

    /// Nanoseconds per pair for `ticks` over all iterations.
    fn per_pair_ns(&self, ticks: u64) -> f64 {
        ratio(ticks, self.frequency) * 1e9 / ratio(self.iterations, 1)
    }

    /// The result as text: each path's ticks and cost per pair, and their ratio.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "BENCH: {} lock + unlock pairs of each kind, performance counter at {} Hz",
            self.iterations, self.frequency
        );
        if self.frequency == 0 || self.iterations == 0 {
            let _ = writeln!(text, "  no timing: the driver reported no frequency or no pairs");
            return text;
        }
        for (name, ticks) in [
            ("lock by address (MmLockPagableDataSection)", self.by_address_ticks),
            ("lock by handle (MmLockPagableSectionByHandle)", self.by_handle_ticks),
        ] {
            let _ = writeln!(
                text,
                "  {name:<46} {ticks:>12} ticks  {:>10.1} ns per pair",
                self.per_pair_ns(ticks)
            );
        }
        if self.by_handle_ticks == 0 {
            let _ = writeln!(text, "  ratio: undefined (no lock-by-handle ticks)");
        } else {
            let _ = writeln!(
                text,
                "  ratio: lock by address costs {:.1}x lock by handle",
                ratio(self.by_address_ticks, self.by_handle_ticks)
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagelock_protocol::{PROTOCOL_VERSION, SectionState, encode_version};

    fn state() -> StateReply {
        let section = |name: &[u8; 8], size| SectionState {
            name: *name,
            size,
            lock_count: 1,
            held_by_caller: 1,
            reserved: 0,
        };
        StateReply {
            version: PROTOCOL_VERSION,
            driver_version: encode_version(0, 1, 0),
            open_handles: 1,
            caller_extra_locks: 0,
            sections: [section(b"PAGELK\0\0", 4096), section(b"PAGEDATA", 8192)],
            lock_by_address_calls: 2,
            lock_by_handle_calls: 18,
            unlock_calls: 16,
            runs: 5,
        }
    }

    #[test]
    fn the_table_lists_sections_and_counters() {
        let table = state_table(&state());
        assert!(table.starts_with("pagelock 0.1.0 (protocol 1)\nopen handles: 1"));
        assert!(table.contains("PAGELK           4096       1                1\n"), "{table}");
        assert!(table.contains("MmLockPagableSectionByHandle calls           18\n"), "{table}");
    }

    #[test]
    fn json_names_every_field() {
        let json: serde_json::Value = serde_json::from_str(&state_json(&state())).expect("JSON");
        assert_eq!(json["driver_version"], "0.1.0");
        assert_eq!(json["sections"][1]["name"], "PAGEDATA");
        assert_eq!(json["sections"][0]["held_by_caller"], 1);
        assert_eq!(json["runs"], 5);
        assert_eq!(json.as_object().map(serde_json::Map::len), Some(9));
    }

    #[test]
    fn bench_totals_add_up_and_print_the_ratio() {
        let mut totals = BenchTotals::default();
        let reply = BenchReply {
            version: PROTOCOL_VERSION,
            iterations: 10_000,
            by_address_ticks: 4_200_000,
            by_handle_ticks: 100_000,
            frequency: 10_000_000,
        };
        totals.add(&reply);
        totals.add(&reply);
        assert_eq!(totals.iterations, 20_000);
        let text = totals.render();
        assert!(text.contains("42.0x"), "{text}");
        assert!(text.contains("42000.0 ns per pair"), "{text}");
        assert!(text.contains(" 1000.0 ns per pair"), "{text}");
    }

    #[test]
    fn bench_without_ticks_says_so() {
        let totals =
            BenchTotals { iterations: 1, by_address_ticks: 1, by_handle_ticks: 0, frequency: 1 };
        assert!(totals.render().contains("undefined"));
        assert!(BenchTotals::default().render().contains("no timing"));
    }
}
