//! pagelock's user-mode test app and the scenario suite it shares with the test bed.
//!
//! The suite is written once, against [`device::Device`], and runs in two places: against the
//! real kernel on a Windows VM (this crate's `pagelock-test` program, through
//! `CreateFileW`/`DeviceIoControl`), and against the real pagelock.sys on the test bed.
//!
//! - [`scenarios`]: the named scenarios and their verdicts.
//! - [`client`]: typed requests over a device handle that closes itself.
//! - [`stress`]: many threads opening, locking and closing handles.
//! - [`app`], [`cli`], [`report`], [`errors`], [`paths`]: the program's commands, command line,
//!   output and error reporting, all portable and tested on every host.
//! - `windows` (Windows only): the Win32 calls behind [`app::Host`] and [`device::Device`].

pub mod app;
pub mod cli;
pub mod client;
pub mod device;
pub mod errors;
pub mod paths;
pub mod report;
pub mod scenarios;
pub mod stress;
#[cfg(windows)]
pub mod windows;

#[cfg(test)]
mod fake;
