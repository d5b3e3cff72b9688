//! The memory manager, with real paging.
//!
//! It keeps the image's sections, one handle and one lock count per pageable
//! section, and real paging: a pageable section whose count is zero can be paged out (its
//! pages made inaccessible with `mprotect`), and a fault on it pages it back in.
//!
//! Every lock adds one to the count and every unlock takes one away (the references'
//! "sets the count to one" describes a count at zero; read literally it would reset the locks
//! of other handles). Counts and presence are atomics, and every change of presence happens
//! under one spin lock, so that a page-out racing a lock never leaves a locked section out.
//! All of it is async-signal-safe: the fault handler pages sections in.
//!
//! It owns the `Mm` routines a driver imports (`MmLockPagableDataSection`,
//! `MmLockPagableSectionByHandle`, `MmUnlockPagableImageSection`) and the probe every kernel
//! routine makes of memory it is handed at `DISPATCH_LEVEL` ([`check_resident`]).

use std::{
    ffi::c_void,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use crate::{
    ke::irql::{self, APC_LEVEL, DISPATCH_LEVEL},
    loader::{Image, Residency},
    record,
    routine::{self, Routine},
    verifier::{Rule, bed_number},
};

/// Section handles are fake kernel addresses, never dereferenced.
const HANDLE_BASE: usize = 0xFFFF_F800_5EC7_0000;

/// One section as the memory manager tracks it.
#[derive(Debug)]
pub struct Section {
    /// The PE name.
    pub name: String,
    /// First address.
    pub start: usize,
    /// One past the last address (page-rounded).
    pub end: usize,
    /// Protection when present.
    pub prot: i32,
    /// How it is treated.
    pub residency: Residency,
    /// Lock count.
    pub count: AtomicI64,
    /// Highest lock count since the last [`Mm::reset_peaks`].
    pub peak: AtomicI64,
    /// Accessible now.
    pub present: AtomicBool,
    /// Freed (`INIT` after `DriverEntry`).
    pub discarded: AtomicBool,
    /// Faults that paged it back in.
    pub page_ins: AtomicU64,
    /// Times it was paged out.
    pub page_outs: AtomicU64,
}

impl Section {
    /// Whether `address` lies in this section.
    #[must_use]
    pub const fn contains(&self, address: usize) -> bool {
        address >= self.start && address < self.end
    }

    /// Whether it is pageable.
    #[must_use]
    pub fn pageable(&self) -> bool {
        self.residency == Residency::Pageable
    }

    fn protect(&self, prot: i32) {
        // SAFETY: the range is a section of the image mapping, which lives for the process;
        // only its protection changes.
        let _ = unsafe { libc::mprotect(self.start as *mut c_void, self.end - self.start, prot) };
    }
}

/// The memory manager of one loaded image.
#[derive(Debug)]
pub struct Mm {
    /// The image's sections.
    pub sections: Vec<Section>,
    /// The image's range, headers included.
    image: std::ops::Range<usize>,
    /// Held while a section's presence changes.
    pager: AtomicBool,
    /// The image was freed after `DriverUnload` ([`Mm::free_image`]).
    freed: AtomicBool,
}

/// Holds the pager lock while it lives.
struct PagerGuard<'a>(&'a AtomicBool);

impl Drop for PagerGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Mm {
    /// The memory manager of `image`: every section present, nothing locked.
    #[must_use]
    pub fn new(image: &Image) -> Self {
        let base = image.base.as_ptr() as usize;
        let sections = image
            .sections
            .iter()
            .map(|s| Section {
                name: s.name.clone(),
                start: base + s.rva,
                end: base + s.rva + s.size,
                prot: s.prot,
                residency: s.residency,
                count: AtomicI64::new(0),
                peak: AtomicI64::new(0),
                present: AtomicBool::new(true),
                discarded: AtomicBool::new(false),
                page_ins: AtomicU64::new(0),
                page_outs: AtomicU64::new(0),
            })
            .collect();
        Self {
            sections,
            image: base..base + image.size,
            pager: AtomicBool::new(false),
            freed: AtomicBool::new(false),
        }
    }

    fn pager(&self) -> PagerGuard<'_> {
        while self
            .pager
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        PagerGuard(&self.pager)
    }

    /// Whether `address` lies in the image (headers included).
    #[must_use]
    pub fn in_image(&self, address: usize) -> bool {
        self.image.contains(&address)
    }

    /// The first of `len` bytes from `address`, which lies in the image, that cannot be read:
    /// in a section that is freed or not readable, or past the image's end (a paged-out section
    /// is readable: a read below `DISPATCH_LEVEL` pages it in). `None` when all can, or when
    /// `address` is not in the image.
    #[must_use]
    pub fn unreadable(&self, address: usize, len: usize) -> Option<usize> {
        if !self.in_image(address) {
            return None;
        }
        if self.freed() {
            return Some(address);
        }
        let end = address.saturating_add(len);
        let bad = self
            .sections
            .iter()
            .filter(|s| s.start < end && address < s.end)
            .find(|s| s.discarded.load(Ordering::SeqCst) || s.prot & libc::PROT_READ == 0);
        bad.map(|s| s.start.max(address))
            .or_else(|| (end > self.image.end).then_some(self.image.end))
    }

    /// The section holding `address`, with its index.
    #[must_use]
    pub fn section_of(&self, address: usize) -> Option<(usize, &Section)> {
        self.sections.iter().enumerate().find(|(_, s)| s.contains(address))
    }

    /// `address` as `SECTION+0xOFFSET` when it is in the image.
    #[must_use]
    pub fn describe(&self, address: usize) -> String {
        self.section_of(address).map_or_else(
            || format!("{address:#x} (outside the image)"),
            |(_, s)| format!("{}+{:#x}", s.name, address - s.start),
        )
    }

    /// The handle of section `index`, as `MmLockPagableDataSection` returns it.
    #[must_use]
    pub const fn handle(index: usize) -> usize {
        HANDLE_BASE + index * 0x10
    }

    /// The section a handle names.
    #[must_use]
    pub fn by_handle(&self, handle: usize) -> Option<&Section> {
        let offset = handle.checked_sub(HANDLE_BASE)?;
        if offset % 0x10 != 0 {
            return None;
        }
        // Any section: the kernel locks whatever section an address lies in.
        self.sections.get(offset / 0x10)
    }

    /// Adds one lock to `section`, paging it in.
    pub fn lock(&self, section: &Section) {
        let _pager = self.pager();
        let count = section.count.fetch_add(1, Ordering::SeqCst) + 1;
        section.peak.fetch_max(count, Ordering::Relaxed);
        if !section.present.swap(true, Ordering::SeqCst) {
            section.protect(section.prot);
        }
    }

    /// Takes one lock from `section`; false (and no change) when its count is zero.
    pub fn unlock(&self, section: &Section) -> bool {
        let _pager = self.pager();
        section
            .count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c > 0).then(|| c - 1))
            .is_ok()
    }

    /// Pages out every pageable section whose count is zero (async-signal-safe).
    pub fn page_out_unlocked(&self) {
        for section in self.sections.iter().filter(|s| s.pageable()) {
            let _pager = self.pager();
            if section.count.load(Ordering::SeqCst) == 0
                && section.present.swap(false, Ordering::SeqCst)
            {
                section.page_outs.fetch_add(1, Ordering::Relaxed);
                section.protect(libc::PROT_NONE);
            }
        }
    }

    /// Pages `section` back in after a fault on it, unless the image was freed meanwhile
    /// (async-signal-safe).
    pub fn fault_in(&self, section: &Section) {
        let _pager = self.pager();
        if !self.freed() && !section.present.swap(true, Ordering::SeqCst) {
            section.page_ins.fetch_add(1, Ordering::Relaxed);
            section.protect(section.prot);
        }
    }

    /// Frees the trailing run of discardable sections (`INIT`, `.reloc`) once `DriverEntry`
    /// has returned, as the kernel does; nothing else.
    pub fn discard(&self) {
        for section in self.sections.iter().filter(|s| s.residency == Residency::Discardable) {
            let _pager = self.pager();
            section.discarded.store(true, Ordering::SeqCst);
            section.present.store(false, Ordering::SeqCst);
            section.protect(libc::PROT_NONE);
        }
    }

    /// Frees the whole image, headers included, as the kernel does once `DriverUnload` has
    /// returned (`MmUnloadSystemImage`); nothing pages it in again.
    pub fn free_image(&self) {
        let _pager = self.pager();
        self.freed.store(true, Ordering::SeqCst);
        for section in &self.sections {
            section.present.store(false, Ordering::SeqCst);
        }
        // SAFETY: the image mapping, which lives for the process; only its protection changes.
        let _ = unsafe {
            libc::mprotect(
                self.image.start as *mut c_void,
                self.image.end - self.image.start,
                libc::PROT_NONE,
            )
        };
    }

    /// The rule a touch of `address` breaks because the memory is gone: the whole image freed
    /// after `DriverUnload`, or the address's section discarded after `DriverEntry`; None when
    /// neither is the case (async-signal-safe).
    #[must_use]
    pub fn gone(&self, address: usize) -> Option<Rule> {
        if self.freed() && self.in_image(address) {
            Some(Rule::UnloadedImageTouched)
        } else if self.section_of(address).is_some_and(|(_, s)| s.discarded.load(Ordering::SeqCst))
        {
            Some(Rule::DiscardedSectionTouched)
        } else {
            None
        }
    }

    /// Whether the image was freed after `DriverUnload`.
    #[must_use]
    pub fn freed(&self) -> bool {
        self.freed.load(Ordering::SeqCst)
    }

    /// Whether unlocked pageable memory at `address` would be touched (for the rule on
    /// pageable memory handed to kernel routines at `DISPATCH_LEVEL`).
    #[must_use]
    pub fn unlocked_pageable(&self, address: usize) -> Option<&Section> {
        self.section_of(address)
            .map(|(_, s)| s)
            .filter(|s| s.pageable() && s.count.load(Ordering::SeqCst) == 0)
    }

    /// Lock counts of the pageable sections.
    #[must_use]
    pub fn counts(&self) -> Vec<(String, i64)> {
        self.pageable().map(|s| (s.name.clone(), s.count.load(Ordering::SeqCst))).collect()
    }

    /// Highest counts since the last reset.
    #[must_use]
    pub fn peaks(&self) -> Vec<(String, i64)> {
        self.pageable().map(|s| (s.name.clone(), s.peak.load(Ordering::SeqCst))).collect()
    }

    /// Starts a new peak window at the current counts.
    pub fn reset_peaks(&self) {
        for s in self.pageable() {
            s.peak.store(s.count.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    /// The pageable sections.
    pub fn pageable(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(|s| s.pageable())
    }
}

static MM: OnceLock<Mm> = OnceLock::new();
static RELEASED: OnceLock<fn(usize, &Section)> = OnceLock::new();

/// Installs what happens when an unlock takes a section's lock count to zero.
///
/// The layer above checks the reference page's rule: nothing outstanding may need the section
/// then. The hook
/// gets the section's handle and the section.
pub fn on_released(hook: fn(usize, &Section)) {
    let _ = RELEASED.set(hook);
}

/// Installs the memory manager of the loaded image: one image per process (each run is its own
/// child process).
///
/// # Errors
/// When one is already installed.
pub fn install(mm: Mm) -> anyhow::Result<&'static Mm> {
    MM.set(mm)
        .map_err(|_| anyhow::anyhow!("one driver per process: an image is already loaded"))?;
    Ok(get())
}

/// The memory manager, if an image is loaded (the fault handler's view: an atomic load).
#[must_use]
pub fn try_get() -> Option<&'static Mm> {
    MM.get()
}

/// The memory manager of the loaded image.
///
/// # Panics
/// Before [`install`]: routines only run once a driver is loaded.
#[must_use]
pub fn get() -> &'static Mm {
    MM.get().expect("the image is loaded before the driver runs")
}

/// Stops the run when `routine` is handed unlocked pageable memory at `DISPATCH_LEVEL` or above.
///
/// Windows may have paged it out, whatever the bed's pages look like right now. The
/// instruction that would fault is the kernel's, so the code is 0xD3.
pub fn check_resident(routine: Routine, address: usize, write: bool) {
    let irql = irql::current();
    if irql < DISPATCH_LEVEL {
        return;
    }
    let mm = get();
    if let Some(section) = mm.unlocked_pageable(address) {
        record::stop(
            Rule::PageableMemoryAtDispatch,
            None,
            [address as u64, u64::from(irql), u64::from(write), routine.address() as u64],
            format!(
                "{} was handed {} (section {} unlocked) at IRQL {irql}",
                routine.name(),
                mm.describe(address),
                section.name
            ),
        );
    }
}

/// Records an object the kernel touches at `DISPATCH_LEVEL` (`what`: a `KTIMER`, `KDPC`,
/// `IO_CSQ` or spin lock) placed in a pageable section: locked or not, it does not belong there.
/// Once per object.
pub fn check_placement(what: &str, address: usize) {
    static REPORTED: std::sync::Mutex<std::collections::BTreeSet<usize>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mm = get();
    if let Some((_, section)) = mm.section_of(address)
        && section.pageable()
        && crate::sched::lock(&REPORTED).insert(address)
    {
        record::violation(
            Rule::ObjectInPageableSection,
            [address as u64, 0, 0, 0],
            format!("{what} at {}, in pageable section {}", mm.describe(address), section.name),
        );
    }
}

/// The Mm routines' IRQL rule (DDI rule `IrqlMmApcLte`).
fn mm_irql(routine: Routine) {
    let irql = irql::current();
    if irql > APC_LEVEL {
        record::violation(
            Rule::MmAboveApcLevel,
            [bed_number(0x11), u64::from(irql), routine.address() as u64, 0],
            format!("{} at IRQL {irql}", routine.name()),
        );
    }
}

/// `MmLockPagableDataSection` (and `MmLockPagableCodeSection`, the same routine on x64).
pub(crate) extern "win64" fn lock_pagable_data_section(address: *mut c_void) -> *mut c_void {
    routine::enter(Routine::MmLockPagableDataSection);
    mm_irql(Routine::MmLockPagableDataSection);
    let mm = get();
    // As the kernel: the section that holds the address is locked, whatever its name; the
    // routine never returns NULL.
    let described = || format!("MmLockPagableDataSection({})", mm.describe(address as usize));
    match mm.section_of(address as usize) {
        Some((index, section)) => {
            if !section.pageable() {
                record::violation(
                    Rule::LockOutsidePageableSection,
                    [address as u64, 0, 0, 0],
                    described(),
                );
            }
            mm.lock(section);
            Mm::handle(index) as *mut c_void
        }
        None if mm.in_image(address as usize) => record::stop(
            Rule::LockInNoSection,
            None,
            [0x1234, address as u64, 0, 0],
            format!("{}: in the image but in no section", described()),
        ),
        None => record::stop(
            Rule::LockOutsideEveryImage,
            None,
            [address as u64, 0, 0, 0],
            format!("{}: in no loaded image", described()),
        ),
    }
}

/// `MmLockPagableSectionByHandle`.
pub(crate) extern "win64" fn lock_pagable_section_by_handle(handle: *mut c_void) {
    routine::enter(Routine::MmLockPagableSectionByHandle);
    mm_irql(Routine::MmLockPagableSectionByHandle);
    let mm = get();
    match mm.by_handle(handle as usize) {
        Some(section) => mm.lock(section),
        None => record::violation(
            Rule::UnknownSectionHandle,
            [handle as u64, 0, 0, 0],
            format!("MmLockPagableSectionByHandle({handle:p})"),
        ),
    }
}

/// `MmUnlockPagableImageSection`: at a count of zero the kernel's count wraps silently and the
/// next lock locks nothing, so the bed stops the run at once.
pub(crate) extern "win64" fn unlock_pagable_image_section(handle: *mut c_void) {
    routine::enter(Routine::MmUnlockPagableImageSection);
    mm_irql(Routine::MmUnlockPagableImageSection);
    let mm = get();
    match mm.by_handle(handle as usize) {
        Some(section) => {
            let unlocked = mm.unlock(section);
            if unlocked
                && section.count.load(Ordering::SeqCst) == 0
                && let Some(hook) = RELEASED.get()
            {
                hook(handle as usize, section);
            }
            if !unlocked {
                record::stop(
                    Rule::UnlockAtZero,
                    None,
                    [handle as u64, 0, 0, 0],
                    format!(
                        "MmUnlockPagableImageSection({}) with its lock count at 0",
                        section.name
                    ),
                );
            }
        }
        None => record::violation(
            Rule::UnknownSectionHandle,
            [handle as u64, 0, 0, 0],
            format!("MmUnlockPagableImageSection({handle:p})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::ptr::NonNull;

    use super::*;
    use crate::loader::{self, Image};

    /// The memory manager of an image that is never mapped (`unreadable` reads only its table):
    /// `.rdata` at 0x1000, `NOREAD` at 0x2000, `INIT` at 0x3000, one page each, image 0x4000.
    fn unmapped() -> (Mm, usize) {
        let base = 0x7000_0000_0000;
        let section = |name: &str, rva, prot, residency| loader::Section {
            name: name.to_owned(),
            rva,
            size: 0x1000,
            prot,
            residency,
        };
        let sections = vec![
            section(".rdata", 0x1000, libc::PROT_READ, Residency::Resident),
            section("NOREAD", 0x2000, libc::PROT_NONE, Residency::Resident),
            section("INIT", 0x3000, libc::PROT_READ, Residency::Discardable),
        ];
        let image = Image {
            base: NonNull::new(std::ptr::without_provenance_mut(base)).expect("not null"),
            size: 0x4000,
            entry: 0,
            sections,
        };
        (Mm::new(&image), base)
    }

    #[test]
    fn only_bytes_of_a_freed_or_unreadable_section_or_past_the_image_are_unreadable() {
        let (mm, base) = unmapped();
        assert_eq!(mm.unreadable(base + 0x1000, 0x1000), None, "all of .rdata");
        assert_eq!(mm.unreadable(base + 0x3000, 8), None, "INIT before DriverEntry returns");
        assert_eq!(mm.unreadable(base + 0x1FFE, 4), Some(base + 0x2000), "into NOREAD");
        assert_eq!(mm.unreadable(base + 0x3FFE, 4), Some(base + 0x4000), "past the image");
        assert_eq!(mm.unreadable(base - 2, 4), None, "not the image's: not its business");
        mm.sections[2].discarded.store(true, Ordering::SeqCst);
        assert_eq!(mm.unreadable(base + 0x3010, 2), Some(base + 0x3010), "INIT once freed");
        assert_eq!(mm.gone(base + 0x3010), Some(Rule::DiscardedSectionTouched));
        assert_eq!(mm.gone(base + 0x1000), None, ".rdata is there");
    }

    #[test]
    fn once_the_image_is_freed_none_of_it_is_readable_and_no_fault_pages_it_in() {
        let (mm, base) = unmapped();
        assert!(!mm.freed());
        mm.free_image();
        assert!(mm.freed());
        assert_eq!(mm.gone(base + 0x1000), Some(Rule::UnloadedImageTouched));
        assert_eq!(mm.gone(base - 2), None, "not the image's");
        assert_eq!(mm.unreadable(base + 0x1000, 4), Some(base + 0x1000), ".rdata once freed");
        assert_eq!(mm.unreadable(base - 2, 4), None, "not the image's: not its business");
        mm.fault_in(&mm.sections[0]);
        assert!(!mm.sections[0].present.load(Ordering::SeqCst), "a fault paged it back in");
    }
}
