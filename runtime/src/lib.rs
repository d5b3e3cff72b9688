//! # pagelock-runtime
//!
//! What wdk-sys, wdk-alloc and wdk-panic supply to a WDK build, supplied for the cross build
//! (bindings from `pagelock-ddk`) of every kernel image in this workspace, the driver and the
//! test bed's fixture driver:
//! - a panic handler that bugchecks with "RPNC", as wdk-panic does, the panic's location in
//!   the parameters (the file name's address and length, the line, the column);
//! - `_fltused`;
//! - the C runtime routines a WDK build takes from ntoskrnl.exe, as imports;
//! - `NonPagedPool`, a global allocator over `ExAllocatePool2`, for images that allocate
//!   through `alloc` (each declares its own `#[global_allocator]` with its pool tag).
//!
//! An image links it with `use pagelock_runtime as _;` (or names `NonPagedPool`). Built for
//! any host other than Windows, or without its `mingw-ddk` feature, this crate is empty, so that
//! the workspace's host builds, and a build of every member on Windows, compile.

#![no_std]
#![forbid(
    clippy::multiple_unsafe_ops_per_block,
    clippy::undocumented_unsafe_blocks,
    clippy::unnecessary_safety_doc
)]

#[cfg(all(target_os = "windows", feature = "mingw-ddk"))]
mod kernel;

#[cfg(all(target_os = "windows", feature = "mingw-ddk"))]
pub use kernel::NonPagedPool;
