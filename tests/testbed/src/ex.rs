//! The executive (`Ex`): the pool, with allocations by tag, leak tracking at unload and the
//! checks on frees; and rundown protection (`EX_RUNDOWN_REF`).
//!
//! Blocks come from the C heap (16-byte aligned on `x86_64`, as pool blocks are); blocks the
//! driver asked not to have zeroed are filled with a pattern, so reads of uninitialised pool
//! show.

use std::{
    collections::BTreeMap,
    ffi::c_void,
    sync::{Mutex, atomic::Ordering::SeqCst},
};

use crate::{
    ke::irql,
    record,
    routine::{self, Routine},
    verifier::Rule,
};

/// What the pool remembers of a block.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Bytes.
    pub size: usize,
    /// The tag.
    pub tag: u32,
}

/// Pool blocks the driver holds, by address.
static BLOCKS: Mutex<BTreeMap<usize, Block>> = Mutex::new(BTreeMap::new());

fn blocks() -> std::sync::MutexGuard<'static, BTreeMap<usize, Block>> {
    crate::sched::lock(&BLOCKS)
}

/// Blocks the driver holds now; `None` when the pool's lock is held (the bugcheck path must
/// not wait).
#[must_use]
pub fn outstanding(wait: bool) -> Option<usize> {
    crate::sched::guard(&BLOCKS, wait).map(|b| b.len())
}

/// The pool block holding `address`, if any: its start and size.
#[must_use]
pub fn block_holding(address: usize) -> Option<(usize, usize)> {
    let (start, size) = blocks().range(..=address).next_back().map(|(&s, b)| (s, b.size))?;
    (address - start < size).then_some((start, size))
}

/// The tag as the four characters `!poolused` shows.
#[must_use]
pub fn tag_text(tag: u32) -> String {
    String::from_utf8_lossy(&tag.to_le_bytes()).into_owned()
}

/// `POOL_FLAG_UNINITIALIZED`.
const POOL_FLAG_UNINITIALIZED: u64 = 0x2;
/// What uninitialised pool holds on the bed.
const UNINITIALISED: u8 = 0xA5;

fn allocate(routine: Routine, size: usize, tag: u32, zeroed: bool, kind: u64) -> *mut c_void {
    if routine::enter(routine) {
        return std::ptr::null_mut();
    }
    if size == 0 {
        record::violation(
            Rule::ZeroSizeAllocation,
            [0, u64::from(irql::current()), kind, 0],
            format!("{}(0 bytes, tag {:?})", routine.name(), tag_text(tag)),
        );
        return std::ptr::null_mut();
    }
    // SAFETY: malloc has no preconditions; the result is checked for null.
    let block = unsafe { libc::malloc(size) };
    if block.is_null() {
        return block;
    }
    let fill = if zeroed { 0 } else { UNINITIALISED };
    // SAFETY: `block` holds `size` writable bytes.
    unsafe { std::ptr::write_bytes(block.cast::<u8>(), fill, size) };
    blocks().insert(block as usize, Block { size, tag });
    block
}

/// `ExAllocatePool2`.
pub(crate) extern "win64" fn allocate_pool2(flags: u64, size: usize, tag: u32) -> *mut c_void {
    allocate(Routine::ExAllocatePool2, size, tag, flags & POOL_FLAG_UNINITIALIZED == 0, flags)
}

/// `ExAllocatePoolWithTag`.
pub(crate) extern "win64" fn allocate_pool_with_tag(
    pool_type: u32,
    size: usize,
    tag: u32,
) -> *mut c_void {
    allocate(Routine::ExAllocatePoolWithTag, size, tag, false, u64::from(pool_type))
}

fn free(routine: Routine, block: *mut c_void, tag: Option<u32>) {
    routine::enter(routine);
    let mut pool = blocks();
    let Some(known) = pool.get(&(block as usize)).copied() else {
        drop(pool);
        record::violation(
            Rule::BadPoolFree,
            [0x10, block as u64, 0, 0],
            format!("{}({block:p}): not a pool block (or freed already)", routine.name()),
        );
        return;
    };
    if let Some(tag) = tag.filter(|t| *t != known.tag) {
        drop(pool);
        record::violation(
            Rule::PoolTagMismatch,
            [0x0A, block as u64, u64::from(tag), u64::from(known.tag)],
            format!(
                "{}({block:p}, {:?}) of a block tagged {:?}",
                routine.name(),
                tag_text(tag),
                tag_text(known.tag)
            ),
        );
        return;
    }
    pool.remove(&(block as usize));
    drop(pool);
    // SAFETY: the block came from malloc above and is freed once (removed from the map).
    unsafe { libc::free(block) };
}

/// `ExFreePoolWithTag`.
pub(crate) extern "win64" fn free_pool_with_tag(block: *mut c_void, tag: u32) {
    free(Routine::ExFreePoolWithTag, block, Some(tag));
}

/// `ExFreePool`.
pub(crate) extern "win64" fn free_pool(block: *mut c_void) {
    free(Routine::ExFreePool, block, None);
}

/// Checks at unload: every block the driver still holds is a leak.
pub fn check_at_unload() {
    let leaks: Vec<String> = blocks()
        .iter()
        .map(|(address, b)| format!("{address:#x}: {} bytes, tag {:?}", b.size, tag_text(b.tag)))
        .collect();
    if !leaks.is_empty() {
        record::violation(
            Rule::PoolLeakedAtUnload,
            [0x62, 0, 0, leaks.len() as u64],
            format!("{} block(s) left: {}", leaks.len(), leaks.join("; ")),
        );
    }
}

// ---- Rundown protection ----

/// Set in an `EX_RUNDOWN_REF`'s count once a wait for rundown began (`EX_RUNDOWN_ACTIVE`).
const RUNDOWN_ACTIVE: usize = 1;
/// One reference (`EX_RUNDOWN_COUNT_INC`): references count in twos above the flag.
const RUNDOWN_REFERENCE: usize = 2;

/// The count of the `EX_RUNDOWN_REF` at `rundown`. The kernel's encoding, but for one detail:
/// once a wait begins with references held, Windows keeps a pointer to its wait block in the
/// count; the bed keeps the references, and the waiter polls them on its emulated CPU.
const fn rundown_count<'a>(rundown: *mut usize) -> &'a std::sync::atomic::AtomicUsize {
    // SAFETY: the driver passes its EX_RUNDOWN_REF (one pointer-sized count, aligned), which
    // lives as long as the driver and is only ever touched atomically.
    unsafe { std::sync::atomic::AtomicUsize::from_ptr(rundown) }
}

/// `ExInitializeRundownProtection`: no reference, no wait.
pub(crate) extern "win64" fn initialize_rundown_protection(rundown: *mut usize) {
    routine::enter(Routine::ExInitializeRundownProtection);
    rundown_count(rundown).store(0, std::sync::atomic::Ordering::SeqCst);
}

/// `ExAcquireRundownProtection`: one more reference, unless a wait for rundown has begun.
pub(crate) extern "win64" fn acquire_rundown_protection(rundown: *mut usize) -> u8 {
    routine::enter(Routine::ExAcquireRundownProtection);
    if !irql::at_most(Routine::ExAcquireRundownProtection, irql::DISPATCH_LEVEL) {
        return 0;
    }
    let count = rundown_count(rundown);
    let taken = count.fetch_update(SeqCst, SeqCst, |c| {
        (c & RUNDOWN_ACTIVE == 0).then_some(c + RUNDOWN_REFERENCE)
    });
    u8::from(taken.is_ok())
}

/// `ExReleaseRundownProtection`: one reference less.
pub(crate) extern "win64" fn release_rundown_protection(rundown: *mut usize) {
    routine::enter(Routine::ExReleaseRundownProtection);
    if !irql::at_most(Routine::ExReleaseRundownProtection, irql::DISPATCH_LEVEL) {
        return;
    }
    let before = rundown_count(rundown).fetch_sub(RUNDOWN_REFERENCE, SeqCst);
    if before & RUNDOWN_ACTIVE != 0 {
        // Unload is waiting: from here on it may go on and the image be freed under the
        // caller, whose way back must not wait. The memory manager may trim any page that no
        // lock holds at any moment, and takes them now: a caller that returns through pageable
        // code faults, and unload frees the image while the page is read in.
        crate::mm::get().page_out_unlocked();
    }
}

/// `ExWaitForRundownProtectionRelease`: no reference is granted from now on, and the caller
/// waits until the last one held is released, while the other CPUs run. When none can, the
/// references are never released: the machine would hang.
pub(crate) extern "win64" fn wait_for_rundown_release(rundown: *mut usize) {
    routine::enter(Routine::ExWaitForRundownProtectionRelease);
    if !irql::at_most(Routine::ExWaitForRundownProtectionRelease, irql::APC_LEVEL) {
        return;
    }
    let count = rundown_count(rundown);
    count.fetch_or(RUNDOWN_ACTIVE, SeqCst);
    loop {
        let held = count.load(SeqCst) / RUNDOWN_REFERENCE;
        if held == 0 {
            return;
        }
        let scheduled = crate::sched::active() && crate::sched::current_cpu().is_some();
        if !(scheduled && crate::sched::wait_on_other_cpu()) {
            record::stop(
                Rule::Deadlock,
                None,
                [rundown as u64, held as u64, 0, 0],
                format!(
                    "ExWaitForRundownProtectionRelease waits for {held} reference(s) that \
                     nothing left running can release"
                ),
            );
        }
    }
}
