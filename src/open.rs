//! Per-open state: the locks one handle holds, owned so that closing cannot forget one.

use pagelock_protocol::MAX_EXTRA_LOCKS;

use crate::{
    kernel::{Status, status},
    sections::{LOCKED_CODE, PAGED_DATA, SectionLocks},
};

/// What one open handle holds: one lock on each lockable section from create to close, plus
/// the extra locks taken with `IOCTL_LOCK`. Lives in nonpaged pool, in the file object.
///
/// INVARIANT: `code.held() == data.held()`, and after [`Open::lock_sections`] succeeded both are
/// at least 1.
pub struct Open {
    code: SectionLocks,
    data: SectionLocks,
}

impl Open {
    /// A state that holds nothing yet; allocate it first, then lock, so a failed allocation
    /// needs no unwinding.
    #[must_use]
    pub const fn new() -> Self {
        Self { code: SectionLocks::none(&LOCKED_CODE), data: SectionLocks::none(&PAGED_DATA) }
    }

    crate::paged_code! {
        /// Locks both sections by handle for this open (and, through `LOCK`, once more each time).
        ///
        /// # Errors
        /// `STATUS_INVALID_DEVICE_STATE` when the handles were never taken; nothing changes.
        pub fn lock_sections(&mut self) -> Result<(), Status> {
            // A deliberately broken variant for the test bed's self-test (never in a product
            // build): opens lock nothing, so the locked work runs from paged-out sections.
            if cfg!(feature = "defect-unlocked-run") {
                return Ok(());
            }
            self.code.add()?;
            if let Err(status) = self.data.add() {
                self.code.remove();
                return Err(status);
            }
            Ok(())
        }
    }

    /// Locks held on each section by this handle.
    #[must_use]
    pub const fn held(&self) -> u32 {
        self.code.held()
    }

    /// Extra locks taken with `LOCK` and not yet released.
    #[must_use]
    pub const fn extra(&self) -> u32 {
        self.code.held().saturating_sub(1)
    }

    crate::paged_code! {
        /// `IOCTL_LOCK`: one more lock on each section.
        ///
        /// # Errors
        /// `STATUS_INVALID_DEVICE_STATE` at the nesting limit; nothing changes.
        pub fn lock_extra(&mut self) -> Result<u32, Status> {
            if self.extra() >= MAX_EXTRA_LOCKS {
                return Err(status::INVALID_DEVICE_STATE);
            }
            self.lock_sections()?;
            Ok(self.extra())
        }
    }

    crate::paged_code! {
        /// `IOCTL_UNLOCK`: releases one extra lock on each section.
        ///
        /// # Errors
        /// `STATUS_INVALID_DEVICE_STATE` when no extra lock is held; nothing changes.
        pub fn unlock_extra(&mut self) -> Result<u32, Status> {
            if self.extra() == 0 {
                return Err(status::INVALID_DEVICE_STATE);
            }
            self.data.remove();
            self.code.remove();
            Ok(self.extra())
        }
    }
}

impl Default for Open {
    fn default() -> Self {
        Self::new()
    }
}
