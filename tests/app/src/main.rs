//! `pagelock-test`: installs, drives and checks the pagelock driver on Windows.
//!
//! Everything but the Win32 calls lives in the library and is tested on every host; on a host
//! that is not Windows the program only says where the scenarios run instead.

use std::process::ExitCode;

use clap::Parser;
use pagelock_test::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run(&cli))
}

#[cfg(windows)]
fn run(cli: &Cli) -> u8 {
    use std::io::IsTerminal;

    let host = pagelock_test::windows::Win32Host::new();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let progress = err.is_terminal();
    pagelock_test::app::App::new(&host, &mut out, &mut err, progress).run(&cli.command)
}

#[cfg(not(windows))]
fn run(cli: &Cli) -> u8 {
    eprintln!("pagelock-test {}: {}", cli.command.name(), pagelock_test::app::NOT_WINDOWS);
    pagelock_test::app::EXIT_NOT_WINDOWS
}
