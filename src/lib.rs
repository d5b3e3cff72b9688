//! # pagelock
//!
//! A WDM driver whose code and data stay pageable while nobody uses it, and are locked in
//! memory, by handle, exactly while a handle is open.
//!
//! - [`sections`]: where code and data live, and lock values that unlock on drop.
//! - `device`: load (section handles, device, link) and unload.
//! - `dispatch`: create, cleanup, close and device control.
//! - [`ioctl`]: the control codes of `pagelock-protocol`.
//! - [`work`]: the work that runs under the spin lock, from locked sections.
//! - [`pending`]: `WAIT` and `SIGNAL`: the cancel-safe queue, the timer's DPC, and which lock
//!   covers the locked code they run.
//! - [`kernel`]: the kernel boundary, the only module with `unsafe` code.
//!
//! Built for Windows, this is the kernel image; built for any other host, the portable parts
//! compile against in-process stand-ins so their logic can be unit-tested.

#![cfg_attr(target_os = "windows", no_std)]
#![forbid(
    clippy::multiple_unsafe_ops_per_block,
    clippy::undocumented_unsafe_blocks,
    clippy::unnecessary_safety_doc
)]

extern crate alloc;

// The discardable INIT section, declared once: code the driver places in INIT goes to INITX
// (`#[init]`), which the linker merges into this section (`/MERGE:INITX=INIT`). Being
// discardable in the object ("D"), INIT is placed after every other section, the trailing run
// the kernel frees after DriverEntry (MmFreeDriverInitialization frees nothing else). The one
// `int3` makes the object really contain the section. `.pushsection` leaves the assembler in the
// section it was in.
#[cfg(target_os = "windows")]
core::arch::global_asm!(".pushsection INIT,\"xrD\"", "int3", ".popsection");

#[cfg(all(target_os = "windows", feature = "wdk"))]
extern crate wdk_panic;

#[cfg(all(target_os = "windows", feature = "wdk"))]
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;

pub mod kernel;
pub mod sections;
// The checks pagelock-macros' attributes call on entry: `#[paged]` and `#[locked(..)]` expand
// to calls of `crate::placement::assert_pageable_irql` and `crate::placement::assert_locked`.
use sections as placement;

#[cfg(target_os = "windows")]
mod device;
#[cfg(target_os = "windows")]
mod dispatch;
pub mod ioctl;
pub mod open;
pub mod pending;
pub mod work;

#[cfg(test)]
mod tests;
