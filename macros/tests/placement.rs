//! The attributes on every kind of function they accept: each lands in its section, and each
//! entry check runs (debug builds) before the body.
#![cfg(target_os = "linux")]

use core::{
    cell::Cell,
    ffi::c_void,
    sync::atomic::{AtomicU32, Ordering},
};

use pagelock_macros::{init, locked, paged, resident};

/// A stand-in lockable section: its lock count.
pub struct Section(AtomicU32);

static LOCKED_CODE: Section = Section(AtomicU32::new(0));
/// A section no test locks.
static NEVER_LOCKED: Section = Section(AtomicU32::new(0));

std::thread_local! {
    /// Calls of `assert_pageable_irql` on this thread.
    static PAGEABLE_CHECKS: Cell<u32> = const { Cell::new(0) };
    /// Whether this thread is "above `APC_LEVEL`", which makes the check fail.
    static RAISED: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread is "above `DISPATCH_LEVEL`", which makes the resident check fail.
    static INTERRUPT: Cell<bool> = const { Cell::new(false) };
}

/// What the attributes call.
mod placement {
    use core::cell::Cell;

    use super::{INTERRUPT, Ordering, PAGEABLE_CHECKS, RAISED, Section};

    pub fn assert_pageable_irql() {
        PAGEABLE_CHECKS.with(|checks| checks.set(checks.get() + 1));
        assert!(!RAISED.with(Cell::get), "pageable code above APC_LEVEL");
    }

    pub fn assert_locked(section: &Section) {
        assert!(section.0.load(Ordering::SeqCst) > 0, "lockable code ran unlocked");
    }

    pub fn assert_resident_irql() {
        assert!(!INTERRUPT.with(Cell::get), "resident driver code above DISPATCH_LEVEL");
    }
}

/// A DPC-like routine: resident, never inlined.
#[resident]
fn tick(value: u32) -> u32 {
    value + 1
}

#[init]
fn load() -> u32 {
    LOCKED_CODE.0.load(Ordering::SeqCst) + 7
}

#[paged]
fn generic<T, const N: usize>(values: [T; N]) -> usize
where
    T: Copy,
{
    values.len()
}

struct Device(u32);

impl Device {
    #[paged]
    fn get(&self) -> u32 {
        self.0
    }

    #[locked(LOCKED_CODE)]
    fn get_locked(&mut self) -> u32 {
        self.0
    }

    #[locked(NEVER_LOCKED)]
    fn get_unlocked(&self) -> u32 {
        self.0
    }
}

impl Drop for Device {
    #[paged]
    fn drop(&mut self) {
        self.0 = 0;
    }
}

/// # Safety
/// None needed; `unsafe` only to show it is accepted.
#[paged]
unsafe extern "C" fn callback(value: u32) -> u32 {
    value * 2
}

unsafe extern "C" {
    // Defined by the linker for sections whose names are C identifiers.
    static __start_PAGE: u8;
    static __stop_PAGE: u8;
    static __start_PAGELK: u8;
    static __stop_PAGELK: u8;
    static __start_INITX: u8;
    static __stop_INITX: u8;
}

fn inside(function: *const c_void, start: *const u8, stop: *const u8) -> bool {
    let at = function as usize;
    (start as usize..stop as usize).contains(&at)
}

#[test]
fn each_function_lies_in_its_section() {
    let page = (&raw const __start_PAGE, &raw const __stop_PAGE);
    let pagelk = (&raw const __start_PAGELK, &raw const __stop_PAGELK);
    let initx = (&raw const __start_INITX, &raw const __stop_INITX);
    // (`Drop::drop` has no address to take; `the_pageable_check_runs_on_every_entry` shows
    // that it was placed.)
    let placed: [(*const c_void, (*const u8, *const u8)); 5] = [
        (load as *const c_void, initx),
        (generic::<u8, 2> as *const c_void, page),
        (Device::get as *const c_void, page),
        (Device::get_locked as *const c_void, pagelk),
        (callback as *const c_void, page),
    ];
    for (i, (function, (start, stop))) in placed.into_iter().enumerate() {
        assert!(inside(function, start, stop), "function {i} outside its section");
    }
    let resident = tick as *const c_void;
    for (start, stop) in [page, pagelk, initx] {
        assert!(!inside(resident, start, stop), "the resident function in a placed section");
    }
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "resident driver code above DISPATCH_LEVEL")]
fn the_resident_check_fires_above_dispatch_level() {
    assert_eq!(tick(1), 2);
    INTERRUPT.with(|interrupt| interrupt.set(true));
    let _ = tick(2);
}

#[test]
fn the_bodies_run_unchanged() {
    LOCKED_CODE.0.fetch_add(1, Ordering::SeqCst);
    let mut device = Device(5);
    assert!(load() >= 8);
    assert_eq!(generic([1u8, 2, 3]), 3);
    assert_eq!(device.get() + device.get_locked(), 10);
    // SAFETY: `callback` has no precondition.
    assert_eq!(unsafe { callback(4) }, 8);
    drop(device);
    LOCKED_CODE.0.fetch_sub(1, Ordering::SeqCst);
}

#[test]
#[cfg(debug_assertions)]
fn the_pageable_check_runs_on_every_entry() {
    let checks = || PAGEABLE_CHECKS.with(Cell::get);
    let before = checks();
    let _ = generic([0u8; 4]);
    assert_eq!(checks(), before + 1);
    let device = Device(1);
    let _ = device.get();
    assert_eq!(checks(), before + 2);
    drop(device);
    assert_eq!(checks(), before + 3, "the placed `Drop::drop` checks too");
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "lockable code ran unlocked")]
fn the_locked_check_fires_when_the_section_is_unlocked() {
    let _ = Device(1).get_unlocked();
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "pageable code above APC_LEVEL")]
fn the_pageable_check_fires_above_apc_level() {
    /// Lowers the level again when the panic unwinds.
    struct Lowered;
    impl Drop for Lowered {
        fn drop(&mut self) {
            RAISED.with(|raised| raised.set(false));
        }
    }
    let _lowered = Lowered;
    RAISED.with(|raised| raised.set(true));
    // (Not `callback`: a panic cannot unwind out of an `extern "C"` function.)
    let _ = generic([0u8; 1]);
}
