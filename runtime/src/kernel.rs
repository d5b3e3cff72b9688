//! The runtime itself (Windows targets only).

use core::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
    panic::PanicInfo,
};

use pagelock_ddk::{self as sys, ntddk};

/// Bugcheck code of a Rust panic, "RPNC" as wdk-panic spells it.
const RUST_PANIC_BUGCHECK_CODE: u32 = u32::from_be_bytes(*b"RPNC");
/// Pool allocations are aligned to 16 bytes on x64; larger alignments are refused.
const POOL_ALIGNMENT: usize = 16;

/// A global allocator: nonpaged pool through `ExAllocatePool2`, every block tagged `TAG`
/// (four ASCII characters, as `!poolused` shows them: `u32::from_le_bytes(*b"PgLk")`).
pub struct NonPagedPool<const TAG: u32>;

impl<const TAG: u32> NonPagedPool<TAG> {
    /// The allocator.
    #[must_use]
    pub const fn new() -> Self {
        Self
    }
}

impl<const TAG: u32> Default for NonPagedPool<TAG> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: ExAllocatePool2 returns blocks aligned to 16 bytes or NULL, which is what `alloc`
// promises for layouts of alignment <= 16; larger alignments get NULL (allocation failure).
unsafe impl<const TAG: u32> GlobalAlloc for NonPagedPool<TAG> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > POOL_ALIGNMENT {
            return core::ptr::null_mut();
        }
        // SAFETY: callable at IRQL <= DISPATCH_LEVEL for nonpaged pool; size is non-zero.
        unsafe {
            ntddk::ExAllocatePool2(u64::from(sys::POOL_FLAG_NON_PAGED), layout.size() as u64, TAG)
        }
        .cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, with the same tag.
        unsafe { ntddk::ExFreePoolWithTag(ptr.cast(), TAG) }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let (file, file_len, line, column) = info.location().map_or((0, 0, 0, 0), |at| {
        (
            at.file().as_ptr() as u64,
            at.file().len() as u64,
            u64::from(at.line()),
            u64::from(at.column()),
        )
    });
    // SAFETY: KeBugCheckEx is callable at any IRQL and never returns.
    unsafe { ntddk::KeBugCheckEx(RUST_PANIC_BUGCHECK_CODE, file, file_len, line, column) }
}

/// Tells the linker that floating point is in use; wdk-sys defines the same symbol.
///
/// It appears in the image's export directory, as `DriverEntry` does: rustc hands the linker
/// every `#[no_mangle]` item of a cdylib as an export, and both must keep their names (the
/// linker resolves `_fltused`, and `/ENTRY:DriverEntry` names the entry point). The kernel reads
/// a driver's exports only when another image imports from it, and none does; `cargo xtask
/// check-pe` reports the directory's size.
// SAFETY: no other crate of an image that links this one defines `_fltused` (wdk-sys does, and
// is never linked with it); the linker sees one definition.
#[unsafe(no_mangle)]
#[used]
static _fltused: i32 = 0;

// The routines a WDK build takes from ntoskrnl.exe; compiler-generated calls (copies, stack
// probes for frames over 4 KiB) bind to these imports instead of code in the image.
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
#[expect(dead_code, reason = "called by compiler-generated code only")]
unsafe extern "C" {
    fn memcpy(dest: *mut c_void, src: *const c_void, count: usize) -> *mut c_void;
    fn memmove(dest: *mut c_void, src: *const c_void, count: usize) -> *mut c_void;
    fn memset(dest: *mut c_void, value: i32, count: usize) -> *mut c_void;
    fn memcmp(left: *const c_void, right: *const c_void, count: usize) -> i32;
    fn strlen(string: *const u8) -> usize;
    fn __chkstk();
}
