//! # pagelock-testbed
//!
//! Runs a real `x86_64` WDM kernel image (a `.sys`) inside a Linux process: the [`loader`] maps
//! it, relocates it and binds its ntoskrnl imports to the emulated kernel's routines
//! ([`exports`]); its own machine code runs natively. The memory manager ([`mm`]) pages unlocked
//! pageable sections out for real (`mprotect`); a fault on one below `DISPATCH_LEVEL` pages it
//! back in, at `DISPATCH_LEVEL` it is a bugcheck ([`fault`]). IRQL is per thread ([`irql`]);
//! the I/O manager ([`io`]) builds IRPs and checks each dispatch; [`pool`] tracks allocations;
//! [`security`] keeps the device's DACL for the access check at create. Rules modelled on
//! Driver Verifier live in one table ([`verifier::TABLE`]). Each run happens in a child process
//! ([`isolate`]), so a driver's bugcheck or crash never takes the caller down; [`session`] holds
//! the runs the command line offers and [`report`] what they return.
//!
//! Limits, stated: page protections are per process, so Force IRQL checking is exact with one
//! thread running driver code at a time; only `METHOD_BUFFERED` control codes are emulated;
//! pended IRPs are not followed after their dispatch returns; a stack overflow in driver code
//! kills the child without a bugcheck report (no alternate signal stack).
//!
//! Linux only: on other hosts the crate is empty (the Windows build compiles the workspace).
#![cfg(target_os = "linux")]

pub mod bed;
pub mod dbgprint;
pub mod device;
pub mod exports;
pub mod fault;
pub mod fuzz;
pub mod io;
pub mod irql;
pub mod isolate;
pub mod kernel;
pub mod loader;
pub mod mm;
pub mod pool;
pub mod report;
pub mod sched;
pub mod security;
pub mod session;
pub mod trace;
pub mod verifier;
