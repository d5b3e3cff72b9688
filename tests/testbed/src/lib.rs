//! # pagelock-testbed
//!
//! Runs a real x86_64 WDM kernel image (a `.sys`) inside a Linux process: the loader maps it,
//! relocates it and binds its ntoskrnl imports to an emulated kernel; its own machine code runs
//! natively. The memory manager pages unlocked pageable sections out for real (`mprotect`), a
//! fault on one below `DISPATCH_LEVEL` pages it back in, at `DISPATCH_LEVEL` it is a bugcheck;
//! rules modelled on Driver Verifier watch every call (see [`rules::TABLE`]). Each run happens
//! in a child process, so a driver's bugcheck or crash never takes the caller down.
//!
//! Limits, stated: page protections are per process, so Force IRQL checking is exact with one
//! thread running driver code at a time; a fault handler that reports a bugcheck formats its
//! report, which is safe here only because the child ends right after.
#![cfg(target_os = "linux")]

pub mod bed;
pub mod bugcheck;
pub mod device;
pub mod image;
pub mod io;
pub mod isolate;
pub mod kernel;
pub mod rules;
