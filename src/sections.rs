//! The driver's pageable sections: where each function and datum lives, the handles taken at
//! load, and lock values that unlock when they drop.
//!
//! | section    | holds                                         | may run at           |
//! |------------|-----------------------------------------------|----------------------|
//! | `INIT`     | `DriverEntry` and what only it calls          | load, then discarded |
//! | `PAGE`     | dispatch routines, unload                     | `PASSIVE_LEVEL`      |
//! | `PAGELK`   | the work done under the spin lock             | any, while locked    |
//! | `PAGEDATA` | the table and counters that work touches      | any, while locked    |
//!
//! `PAGELK` and `PAGEDATA` are the lockable sections: each open handle holds one lock on each,
//! taken by handle in `IRP_MJ_CREATE` and released in `IRP_MJ_CLOSE`, so an idle driver is
//! entirely pageable. Everything else (the spin lock, these counts, the handles) stays in the
//! ordinary, resident sections. Who holds which lock is counted by the per-open state
//! ([`crate::open::Open`]), which releases what it holds when it drops.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use pagelock_macros::{init, paged};

use crate::kernel::{self, HandleSlot, SectionHandle};

/// `PAGED_CODE()`: pageable code must not run above `APC_LEVEL`. `#[paged]` calls it on entry
/// in debug builds (as `crate::placement::assert_pageable_irql`).
///
/// # Panics
/// Above `APC_LEVEL`.
#[inline]
pub fn assert_pageable_irql() {
    assert!(kernel::current_irql() <= kernel::APC_LEVEL, "pageable code above APC_LEVEL");
}

/// Resident driver code runs at `DISPATCH_LEVEL` or below: the driver has no interrupt service
/// routine. `#[resident]` calls it on entry in debug builds (as
/// `crate::placement::assert_resident_irql`).
///
/// # Panics
/// Above `DISPATCH_LEVEL`.
#[inline]
pub fn assert_resident_irql() {
    assert!(
        kernel::current_irql() <= kernel::DISPATCH_LEVEL,
        "resident driver code above DISPATCH_LEVEL"
    );
}

/// Lockable code must only run while its section is locked. `#[locked(SECTION)]` calls it on
/// entry in debug builds (as `crate::placement::assert_locked`).
///
/// # Panics
/// When the driver holds no lock on `section`.
#[inline]
pub fn assert_locked(section: &LockableSection) {
    assert!(section.lock_count() > 0, "lockable code ran while its section was unlocked");
}

/// The virtual size of section `name` of the image whose headers `headers` holds.
///
/// Only if the image offset `offset` lies inside it; read with `object`'s PE parser (DOS header,
/// NT headers, section table). `None` for headers that do not parse, or no such section there.
#[must_use]
#[init]
pub fn size_in_image(headers: &[u8], name: &[u8; 8], offset: usize) -> Option<u32> {
    use object::{
        LittleEndian as LE,
        pe::{ImageDosHeader, ImageNtHeaders64},
        read::pe::ImageNtHeaders as _,
    };
    let dos = ImageDosHeader::parse(headers).ok()?;
    let mut at = u64::from(dos.nt_headers_offset());
    let (nt, _) = ImageNtHeaders64::parse(headers, &mut at).ok()?;
    let table = nt.sections(headers, at).ok()?;
    table.iter().find_map(|section| {
        let start = section.virtual_address.get(LE) as usize;
        let size = section.virtual_size.get(LE);
        (section.name == *name && (start..start + size as usize).contains(&offset)).then_some(size)
    })
}

/// A lockable section: its handle and the locks the driver holds on it, kept resident.
pub struct LockableSection {
    name: [u8; 8],
    anchor: fn() -> *const c_void,
    handle: HandleSlot,
    size: AtomicU32,
    locks: AtomicU32,
}

/// How often each Mm routine was called since load.
pub struct Counters {
    /// `MmLockPagableDataSection`.
    pub lock_by_address: AtomicU64,
    /// `MmLockPagableSectionByHandle`.
    pub lock_by_handle: AtomicU64,
    /// `MmUnlockPagableImageSection`.
    pub unlock: AtomicU64,
}

/// The Mm call counters.
pub static COUNTERS: Counters = Counters {
    lock_by_address: AtomicU64::new(0),
    lock_by_handle: AtomicU64::new(0),
    unlock: AtomicU64::new(0),
};

/// The lockable code section.
pub static LOCKED_CODE: LockableSection =
    LockableSection::new(*b"PAGELK\0\0", crate::work::code_anchor);
/// The pageable data section.
pub static PAGED_DATA: LockableSection =
    LockableSection::new(*b"PAGEDATA", crate::work::data_anchor);
/// Both, in the order `QUERY_STATE` reports them.
pub static LOCKABLE: [&LockableSection; 2] = [&LOCKED_CODE, &PAGED_DATA];

impl LockableSection {
    const fn new(name: [u8; 8], anchor: fn() -> *const c_void) -> Self {
        Self {
            name,
            anchor,
            handle: HandleSlot::new(),
            size: AtomicU32::new(0),
            locks: AtomicU32::new(0),
        }
    }

    /// The PE section name, NUL-padded.
    #[must_use]
    pub const fn name(&self) -> [u8; 8] {
        self.name
    }

    /// An address inside the section, for `MmLockPagableDataSection`.
    #[must_use]
    pub fn anchor(&self) -> *const c_void {
        (self.anchor)()
    }

    /// The section's size in bytes, read from the image at load.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// Locks the driver holds on the section now.
    #[must_use]
    pub fn lock_count(&self) -> u32 {
        self.locks.load(Ordering::SeqCst)
    }

    /// Takes the section's handle with `MmLockPagableDataSection` and releases it at once, so
    /// the section stays pageable until a handle opens. Called once, from `DriverEntry`.
    ///
    /// # Errors
    /// When the memory manager returns no handle.
    #[init]
    pub fn take_handle(&self, size: u32) -> Result<(), kernel::Status> {
        // PASSIVE_LEVEL, DriverEntry: the one lock by address, only to learn the handle.
        let handle = self.lock_by_address().ok_or(kernel::status::UNSUCCESSFUL)?;
        // Released at once: an idle driver keeps nothing locked.
        self.unlock(handle);
        self.size.store(size, Ordering::Relaxed);
        self.handle.set(handle);
        Ok(())
    }

    /// `MmLockPagableDataSection` (the expensive path): locks the section, returns its handle.
    #[paged]
    pub fn lock_by_address(&self) -> Option<SectionHandle> {
        // PASSIVE_LEVEL: locks the whole section containing the anchor, count + 1.
        // The memory manager's count rises before the driver's, and falls after it, so
        // the driver never believes a section locked that is not.
        let handle = SectionHandle::lock_by_address(self.anchor())?;
        COUNTERS.lock_by_address.fetch_add(1, Ordering::Relaxed);
        self.locks.fetch_add(1, Ordering::SeqCst);
        Some(handle)
    }

    /// `MmLockPagableSectionByHandle` (the cheap path). False before the handle was taken.
    /// The caller owns the lock and gives it back with [`Self::unlock_held`].
    #[paged]
    pub fn lock_by_handle(&self) -> bool {
        let Some(handle) = self.handle.get() else { return false };
        // PASSIVE_LEVEL (create, LOCK, BENCH): count + 1, paging the section in if needed.
        handle.lock();
        COUNTERS.lock_by_handle.fetch_add(1, Ordering::Relaxed);
        self.locks.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// `MmUnlockPagableImageSection` of one lock the driver holds.
    #[paged]
    pub fn unlock(&self, handle: SectionHandle) {
        self.locks.fetch_sub(1, Ordering::SeqCst);
        COUNTERS.unlock.fetch_add(1, Ordering::Relaxed);
        // PASSIVE_LEVEL (close, UNLOCK, load, BENCH): count - 1; at zero the section may
        // be paged out, so nothing of it may run or be touched at DISPATCH_LEVEL after.
        handle.unlock();
    }

    /// Gives back one lock taken with [`Self::lock_by_handle`].
    #[paged]
    pub fn unlock_held(&self) {
        if let Some(handle) = self.handle() {
            self.unlock(handle);
        }
    }

    /// The handle taken at load, if any.
    #[must_use]
    pub fn handle(&self) -> Option<SectionHandle> {
        self.handle.get()
    }

    /// At unload: releases locks that are still held. A correct driver has none by then,
    /// since Windows unloads only after the last handle's close; if some remain, this logs
    /// the bug loudly and releases them, so the section is not locked forever.
    #[paged]
    pub fn release_leftovers(&self) {
        let left = self.lock_count();
        if left == 0 {
            return;
        }
        // The name's last four bytes tell the sections apart (all begin with `PAGE`).
        kernel::log_error(
            c"BUG: section still locked at unload; releasing (locks, name bytes 5 to 8)",
            left,
            u32::from_le_bytes([self.name[4], self.name[5], self.name[6], self.name[7]]),
        );
        if let Some(handle) = self.handle() {
            for _ in 0..left {
                self.unlock(handle);
            }
        }
    }
}
