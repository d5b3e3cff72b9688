//! # pagelock-testbed
//!
//! Runs a real `x86_64` WDM kernel image (a `.sys`) inside a Linux process: the [`loader`] maps
//! it, relocates it and binds its ntoskrnl imports through the export table ([`exports`]) to
//! the emulated kernel's routines; its own machine code runs natively.
//!
//! The emulated kernel is laid out by component, as `ReactOS`'s `ntoskrnl` is, each module owning
//! its state and the exported routines of its prefix:
//! - [`mm`]: the memory manager, with real paging: unlocked pageable sections are paged out for
//!   real (`mprotect`); a fault on one below `DISPATCH_LEVEL` pages it back in, at or above it
//!   is a bugcheck;
//! - [`ke`]: IRQL per emulated CPU, spin locks, the traps a driver's instructions take;
//! - [`io`]: devices, links and IRPs, with the checks I/O verification makes around dispatch;
//! - [`ex`]: pool; [`ob`]: kernel handles and object security; [`se`]: the access check;
//!   [`rtl`]: strings and security descriptors; [`kd`]: `DbgPrint`; [`crt`]: `memcpy` and
//!   kin.
//!
//! Below them: [`sched`] (emulated CPUs under a seeded scheduler), [`trace`] (the picture of a
//! run), [`routine`] (each routine's name, call count and fault injection), [`record`] (the
//! rules that fired, the log, the bugcheck) and the rule table ([`verifier::TABLE`]). Above
//! them: [`bed`] loads a driver and drives it, installing the hooks through which the layers
//! below reach up (the bugcheck's report, Force IRQL checking, the watchdog); [`isolate`] runs
//! each run in a child process, so a driver's bugcheck or crash never takes the caller down;
//! [`session`], [`fuzz`] and the command line use them; [`report`] is what they return.
//! `cargo xtask check-layout` keeps the imports between these modules free of cycles.
//!
//! Limits, stated: only `METHOD_BUFFERED` control codes are emulated in full; IRPs have one
//! stack location (no lower drivers, no completion routines); timers run on virtual time, so a
//! timeout says nothing of wall-clock speed; a stack overflow in driver code kills the child
//! without a bugcheck report (no alternate signal stack). The scheduler's limits are in
//! [`sched`].
//!
//! Linux only: on other hosts the crate is empty (the Windows build compiles the workspace).
#![cfg(target_os = "linux")]

pub mod bed;
pub mod crt;
pub mod device;
pub mod ex;
pub mod exports;
pub mod fuzz;
pub mod io;
pub mod isolate;
pub mod kd;
pub mod ke;
pub mod loader;
pub mod mm;
pub mod ob;
pub mod record;
pub mod report;
pub mod routine;
pub mod rtl;
pub mod sched;
pub mod se;
pub mod session;
pub mod trace;
pub mod verifier;
