//! What wdk-sys, wdk-alloc and wdk-panic supply to a WDK build comes, in the cross build, from
//! `pagelock-runtime` (shared with the test bed's fixture driver): the panic handler that
//! bugchecks, `_fltused`, the C runtime imports, and the nonpaged-pool allocator, which this
//! driver declares global with its own pool tag.

/// Pool tag of every allocation the driver makes: `PgLk`, as `!poolused` shows it.
const POOL_TAG: u32 = u32::from_le_bytes(*b"PgLk");

#[global_allocator]
static ALLOCATOR: pagelock_runtime::NonPagedPool<POOL_TAG> = pagelock_runtime::NonPagedPool::new();
