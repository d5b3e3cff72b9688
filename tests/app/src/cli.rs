//! The command line of `pagelock-test`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::scenarios::Selection;

/// Installs, drives and checks the pagelock driver on Windows.
#[derive(Debug, Parser)]
#[command(name = "pagelock-test", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenario called `name`, for `--skip`.
fn scenario_named(name: &str) -> Result<crate::scenarios::Scenario, String> {
    crate::scenarios::Scenario::from_name(name)
        .ok_or_else(|| format!("no scenario is called `{name}`"))
}

/// What `wait --then` does while the wait is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitEnd {
    /// `SIGNAL` (every handle's waits) from a second handle.
    Signal,
    /// `CancelIoEx` on the wait's handle.
    Cancel,
    /// `CloseHandle` of the wait's handle (its cleanup cancels the wait).
    Close,
}

/// The commands.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Installs the driver package from its INF (`DiInstallDriverW`, as `pnputil /add-driver
    /// /install` does) and starts the `pagelock` service, which loads the driver.
    Install {
        /// The package's INF, for example C:\pagelock\package\pagelock.inf.
        inf: PathBuf,
    },
    /// Stops the `pagelock` service (unloading the driver) and removes the driver package.
    Uninstall {
        /// The package's INF; by default the one in the Driver Store folder the service runs
        /// from.
        inf: Option<PathBuf>,
    },
    /// Starts the `pagelock` service: loads the driver.
    Start,
    /// Stops the `pagelock` service: unloads the driver.
    Stop,
    /// Prints the driver's state (`QUERY_STATE`) as a table.
    Query {
        /// Prints JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Runs the scenario suite against the loaded driver; exits with 0 only if all pass.
    Run {
        /// A scenario (idle, lifecycle, nested-locks, run-locked, many-handles, bad-input,
        /// bench) or all.
        #[arg(long, value_name = "NAME|all", default_value = "all")]
        scenario: Selection,
        /// Lists every check, not only the failed ones.
        #[arg(long, short)]
        verbose: bool,
        /// A scenario to leave out (repeatable).
        #[arg(long, value_name = "NAME", value_parser = scenario_named)]
        skip: Vec<crate::scenarios::Scenario>,
    },
    /// Opens, locks, runs, unlocks and closes handles from several threads, then checks that
    /// every count is back to what the querying handle holds.
    Stress {
        /// Threads, each with its own handles.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: u32,
        /// Open-to-close cycles per thread.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        iterations: u64,
        /// All threads on one handle opened for overlapped I/O, each request waited on: several
        /// requests of one file object in the driver at once.
        #[arg(long)]
        shared: bool,
    },
    /// Sends one WAIT and prints how it ended (expired, signalled or cancelled).
    Wait {
        /// Milliseconds until it expires.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(pagelock_protocol::MAX_WAIT_MS)))]
        timeout_ms: u32,
        /// A value the reply carries back.
        #[arg(long, default_value_t = 0)]
        cookie: u64,
        /// What ends the wait early, while it is queued: a `SIGNAL` from a second handle, a
        /// `CancelIoEx`, or closing its handle. Without it the wait is sent synchronously.
        #[arg(long, value_enum)]
        then: Option<WaitEnd>,
    },
    /// Times lock by address against lock by handle in the driver (BENCH) and prints the ratio.
    Bench {
        /// Lock + unlock pairs of each kind.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        iterations: u64,
    },
}

impl Command {
    /// The command's name, as typed.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Install { .. } => "install",
            Self::Uninstall { .. } => "uninstall",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Query { .. } => "query",
            Self::Run { .. } => "run",
            Self::Stress { .. } => "stress",
            Self::Bench { .. } => "bench",
            Self::Wait { .. } => "wait",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::Scenario;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("pagelock-test").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(
            parse(&["install", r"C:\pagelock\package\pagelock.inf"]).ok(),
            Some(Command::Install { inf: r"C:\pagelock\package\pagelock.inf".into() })
        );
        assert_eq!(parse(&["uninstall"]).ok(), Some(Command::Uninstall { inf: None }));
        assert_eq!(parse(&["start"]).ok(), Some(Command::Start));
        assert_eq!(parse(&["stop"]).ok(), Some(Command::Stop));
        assert_eq!(parse(&["query", "--json"]).ok(), Some(Command::Query { json: true }));
        assert_eq!(
            parse(&["run"]).ok(),
            Some(Command::Run { scenario: Selection::All, verbose: false, skip: vec![] })
        );
        assert_eq!(
            parse(&["run", "--scenario", "bad-input", "-v"]).ok(),
            Some(Command::Run {
                scenario: Selection::One(Scenario::BadInput),
                verbose: true,
                skip: vec![]
            })
        );
        assert_eq!(
            parse(&["stress", "--threads", "8", "--iterations", "10000"]).ok(),
            Some(Command::Stress { threads: 8, iterations: 10_000, shared: false })
        );
        assert_eq!(parse(&["bench"]).ok(), Some(Command::Bench { iterations: 10_000 }));
        assert_eq!(
            parse(&["wait", "--timeout-ms", "250", "--cookie", "7"]).ok(),
            Some(Command::Wait { timeout_ms: 250, cookie: 7, then: None })
        );
        assert_eq!(
            parse(&["wait", "--then", "close"]).ok(),
            Some(Command::Wait { timeout_ms: 100, cookie: 0, then: Some(WaitEnd::Close) })
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["run", "--scenario", "everything"]).is_err());
        assert!(parse(&["stress", "--threads", "0"]).is_err());
        assert!(parse(&["bench", "--iterations", "0"]).is_err());
        assert!(parse(&["wait", "--timeout-ms", "0"]).is_err());
        assert!(parse(&["wait", "--timeout-ms", "60001"]).is_err());
        assert!(parse(&["install"]).is_err());
        assert!(parse(&[]).is_err());
    }
}
