//! The verifier rules, in one table.
//!
//! Each rule has the bugcheck Windows reports for it where
//! Windows has one, or a code of the bed's own (`0xBED0_00xx`) where it has none, and what its
//! four parameters hold. Where the code is Windows' but the bed could not verify Windows' value
//! of parameter 1 (a Driver Verifier sub-code), parameter 1 is the bed's own rule number
//! (`0xBED0_00xx`) and the table says so.
//!
//! A fatal rule stops the run there, as the bugcheck would; the others are recorded and the run
//! goes on, so that one run shows every break it can (the exit status is 1 either way).

use serde::{Deserialize, Serialize};

/// A rule the bed enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// An Mm lock or unlock routine called above `APC_LEVEL` (DDI rule `IrqlMmApcLte`).
    MmAboveApcLevel,
    /// `MmUnlockPagableImageSection` on a section whose lock count is zero. Silent on Windows:
    /// the count wraps to 0xFFFFFFFF, the next lock by handle takes it for "already locked" and
    /// locks nothing, and the section pages out under a driver that believes it locked. The
    /// bed stops at the unlock, where the bug is.
    UnlockAtZero,
    /// A section handle no Mm routine returned.
    UnknownSectionHandle,
    /// `MmLockPagableDataSection` with an address in a resident section. Windows locks that
    /// section without complaint (it finds the section by address and never checks its name),
    /// which keeps nothing pageable: the bed returns the handle too and records the mistake.
    LockOutsidePageableSection,
    /// `MmLockPagableDataSection` with an address inside the image but in no section (the
    /// headers): `MEMORY_MANAGEMENT` (0x1A) with 0x1234.
    LockInNoSection,
    /// `MmLockPagableDataSection` with an address in no loaded image: the kernel's lookup finds
    /// no loader entry and dereferences a null one; the bed reports it with a code of its own.
    LockOutsideEveryImage,
    /// A pageable section still locked once the last handle closed.
    LockedAfterLastClose,
    /// A pageable section still locked at unload.
    LockedAtUnload,
    /// `IofCompleteRequest` on an IRP already completed (or no longer in flight).
    IrpCompletedTwice,
    /// A dispatch routine returned without completing its IRP and without `STATUS_PENDING`.
    IrpNeverCompleted,
    /// A dispatch routine returned a status other than its IRP's `IoStatus.Status`.
    StatusMismatch,
    /// `IoStatus.Information` larger than the output buffer.
    InformationTooLarge,
    /// A dispatch routine returned at an IRQL other than the one it was called at.
    IrqlChangedAcrossDispatch,
    /// Pool still allocated at unload.
    PoolLeakedAtUnload,
    /// A free of an address the pool never handed out.
    BadPoolFree,
    /// `ExFreePoolWithTag` with a tag other than the block's.
    PoolTagMismatch,
    /// A pool allocation of zero bytes.
    ZeroSizeAllocation,
    /// A device object left at unload.
    DeviceLeftAtUnload,
    /// A symbolic link left at unload.
    LinkLeftAtUnload,
    /// A spin lock released by a thread that does not hold it.
    SpinLockNotHeld,
    /// A spin lock still held when the driver returned to the I/O manager.
    SpinLockNeverReleased,
    /// A spin lock acquired again by the thread that holds it (a deadlock on Windows).
    SpinLockAcquiredTwice,
    /// Every emulated CPU waits for one that cannot run (a spin lock whose holder finished or
    /// waits itself): the machine would hang.
    Deadlock,
    /// The running CPU reached no switch point for a long time: driver code waiting on memory
    /// that only another CPU could change, which the scheduler cannot run meanwhile (on real
    /// processors it might progress; on the bed it cannot).
    CpuStuck,
    /// Unlocked pageable memory handed to a kernel routine at `DISPATCH_LEVEL`. The kernel's
    /// instruction faults on an address in a driver image: 0xD3 (`KeBugCheck2` turns 0xA into
    /// 0xD3 only when the faulting instruction is not a driver's).
    PageableMemoryAtDispatch,
    /// Paged-out pageable data touched at `DISPATCH_LEVEL` or above.
    PageFaultAtDispatch,
    /// Paged-out pageable code executed at `DISPATCH_LEVEL` or above. The faulting instruction
    /// is the driver's own, so Windows reports 0xD1, as for data.
    PageableCodeAtDispatch,
    /// `INIT` (freed after `DriverEntry`) touched afterwards.
    DiscardedSectionTouched,
    /// Memory of the image touched after `DriverUnload` returned and the kernel freed it: a
    /// thread still returning into the driver, a timer or a DPC left behind.
    /// `PAGE_FAULT_IN_NONPAGED_AREA` at an address of an unloaded driver, which the kernel
    /// reports as `DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS` (0xCE;
    /// `KeBugCheck2` with `MmLocateUnloadedDriver`).
    UnloadedImageTouched,
    /// Any other access to memory the driver does not own.
    InvalidAccess,
    /// A privileged or GS-relative instruction the bed does not emulate, or a trap.
    UnsupportedInstruction,
    /// The driver called `KeBugCheckEx`.
    DriverBugcheck,
    /// A dispatch routine returned `STATUS_PENDING` without marking the IRP pending
    /// (`IoMarkIrpPending`, `SL_PENDING_RETURNED`).
    PendingNotMarked,
    /// A dispatch routine marked its IRP pending and returned another status (legal only with
    /// `STATUS_PENDING`: the I/O manager then finishes the request in the completion path).
    MarkedNotPending,
    /// `IofCompleteRequest` on an IRP whose cancel routine is still set.
    CompletedWithCancelRoutine,
    /// An IRP of the file object still queued in the driver when its `IRP_MJ_CLEANUP` returned.
    QueuedAfterCleanup,
    /// A request of a file object that was on its way to the driver's queue (in its dispatch
    /// routine) while the file object's `IRP_MJ_CLEANUP` ran, and was queued all the same: still
    /// queued (cancellable) once cleanup returned. Windows does not stop: the request waits
    /// until something completes it, and the file object's close with it.
    PendedAfterCleanup,
    /// A pended IRP that nothing left can complete: its requester would wait forever.
    PendingNeverCompleted,
    /// A timer still set, or a DPC still queued, when the driver unloaded.
    TimerOrDpcAtUnload,
    /// A `KTIMER`, `KDPC`, `IO_CSQ` or spin lock placed in a pageable section: the kernel
    /// touches them at `DISPATCH_LEVEL` whatever the driver has locked.
    ObjectInPageableSection,
    /// A cancel routine returned holding the cancel spin lock.
    CancelLockNotReleased,
    /// A pageable section unlocked to a count of zero while IRPs are pended (the rule of the
    /// reference page of `MmUnlockPagableImageSection`).
    ReleasedWithIrpsOutstanding,
    /// A DPC routine returned at an IRQL other than `DISPATCH_LEVEL`.
    DpcChangedIrql,
    /// A routine called above the highest IRQL it is documented for.
    IrqlTooHigh,
    /// A malformed `UNICODE_STRING` handed to a kernel routine that reads one (`IoCreateDevice`'s
    /// name, `IoCreateSymbolicLink`'s two, `IoDeleteSymbolicLink`'s). Malformed as the kernel
    /// sees it: an odd `Length` or `MaximumLength`, `Length` above `MaximumLength`, or a NULL
    /// `Buffer` behind nonzero lengths (`RtlValidateUnicodeString`: WRK `RTL/NLS.C`, `ReactOS`
    /// `sdk/lib/rtl/unicode.c`); a name of 0xFFFE bytes, which leaves no room for the NUL the
    /// capture appends (`ObpCaptureObjectName`: WRK `OB/OBCREATE.C`, `ReactOS` `ob/oblife.c`);
    /// a link target with `MaximumLength` 0 (`NtCreateSymbolicLinkObject`: WRK `OB/OBLINK.C`,
    /// `ReactOS` `ob/oblink.c`); a buffer in the first 64 KiB or running past its pool block for
    /// the bytes the kernel copies (`Length` of a name, `MaximumLength` of a link target, as
    /// those two routines copy). Windows has no one bugcheck for it: the call fails (an odd
    /// name: `STATUS_OBJECT_NAME_INVALID`; a bad target: `STATUS_INVALID_PARAMETER`), succeeds
    /// on lengths that lie (the name capture never reads `MaximumLength`), reads a neighbour's
    /// pool, or faults. The bed stops at the call, where the bug is. A copy that would fault on
    /// the image (a freed `INIT`) stops with 0x50 instead, as the kernel's does
    /// ([`Rule::DiscardedSectionTouched`], [`Rule::InvalidAccess`]). A `%wZ` argument of
    /// `DbgPrint` is held to its buffer only: the formatter checks no field.
    MalformedUnicodeString,
}

/// Where a rule's bugcheck code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Windows reports this code and these parameters.
    Windows,
    /// Windows reports this code; parameter 1 is the bed's rule number (see the module docs).
    WindowsCodeBedParameter,
    /// Windows has no bugcheck for this: the code is the bed's own.
    Bed,
}

/// One row of the rule table.
#[derive(Debug)]
pub struct Entry {
    /// The rule.
    pub rule: Rule,
    /// Its id in reports (kebab case).
    pub id: &'static str,
    /// The bugcheck code.
    pub code: u32,
    /// Where the code comes from.
    pub source: Source,
    /// Whether the run stops here.
    pub fatal: bool,
    /// What the four parameters hold.
    pub parameters: &'static str,
    /// What the rule catches.
    pub meaning: &'static str,
}

macro_rules! table {
    ($($rule:ident $id:literal $code:literal $source:ident $fatal:literal $params:literal $meaning:literal;)*) => {
        /// Every rule.
        pub const TABLE: &[Entry] = &[$(Entry {
            rule: Rule::$rule,
            id: $id,
            code: $code,
            source: Source::$source,
            fatal: $fatal,
            parameters: $params,
            meaning: $meaning,
        },)*];
    };
}

table! {
    MmAboveApcLevel "mm-above-apc-level" 0xC4 WindowsCodeBedParameter false
        "0xBED00011, IRQL, routine's import address, 0"
        "Mm lock/unlock routine called above APC_LEVEL (DDI rule IrqlMmApcLte)";
    UnlockAtZero "unlock-at-zero" 0xBED0_0001 Bed true
        "section handle, 0, 0, 0"
        "section unlocked at lock count 0 (silent on Windows: the count wraps and the next lock by handle locks nothing)";
    UnknownSectionHandle "unknown-section-handle" 0xBED0_0002 Bed false
        "the handle, 0, 0, 0"
        "section handle no Mm routine returned";
    LockOutsidePageableSection "lock-outside-pageable-section" 0xBED0_0003 Bed false
        "the address, 0, 0, 0"
        "lock by address of a resident section (Windows locks it; nothing is gained)";
    LockInNoSection "lock-in-no-section" 0x1A Windows true
        "0x1234, the address, 0, 0"
        "MEMORY_MANAGEMENT: lock by address inside the image but in no section";
    LockOutsideEveryImage "lock-outside-every-image" 0xBED0_0008 Bed true
        "the address, 0, 0, 0"
        "lock by address in no loaded image (Windows dereferences a null loader entry)";
    LockedAfterLastClose "locked-after-last-close" 0xBED0_0004 Bed false
        "section handle, lock count, 0, 0"
        "pageable section still locked after the last handle closed";
    LockedAtUnload "locked-at-unload" 0xBED0_0005 Bed false
        "section handle, lock count, 0, 0"
        "pageable section still locked at unload";
    IrpCompletedTwice "irp-completed-twice" 0x44 Windows true
        "IRP address, 0, 0, 0"
        "MULTIPLE_IRP_COMPLETE_REQUESTS";
    IrpNeverCompleted "irp-never-completed" 0xC9 WindowsCodeBedParameter false
        "0xBED00018, IRP address, major function, returned status"
        "dispatch returned without completing the IRP or STATUS_PENDING (I/O verification)";
    StatusMismatch "status-mismatch" 0xC9 WindowsCodeBedParameter false
        "0xBED00019, IRP address, returned status, IoStatus.Status"
        "dispatch returned a status other than IoStatus.Status (I/O verification)";
    InformationTooLarge "information-too-large" 0xC9 WindowsCodeBedParameter false
        "0xBED0001A, IRP address, Information, output buffer length"
        "IoStatus.Information exceeds the output buffer (I/O verification)";
    IrqlChangedAcrossDispatch "irql-changed-across-dispatch" 0xC9 Windows false
        "0x05, device object, IRQL before, IRQL after"
        "IRQL changed across a dispatch routine (I/O verification)";
    PoolLeakedAtUnload "pool-leaked-at-unload" 0xC4 Windows false
        "0x62, 0 (driver name), 0, outstanding allocations"
        "driver unloaded without freeing its pool";
    BadPoolFree "bad-pool-free" 0xC4 Windows false
        "0x10, the address, 0, 0"
        "free of an address the pool never handed out";
    PoolTagMismatch "pool-tag-mismatch" 0xC2 Windows false
        "0x0A, the address, tag passed, block's tag"
        "BAD_POOL_CALLER: ExFreePoolWithTag with another tag";
    ZeroSizeAllocation "zero-size-allocation" 0xC4 Windows false
        "0x00, IRQL, pool type or flags, 0"
        "pool allocation of zero bytes";
    DeviceLeftAtUnload "device-left-at-unload" 0xBED0_0006 Bed false
        "device object, 0, 0, 0"
        "device object left at unload";
    LinkLeftAtUnload "link-left-at-unload" 0xBED0_0007 Bed false
        "0, 0, 0, 0"
        "symbolic link left at unload";
    SpinLockNotHeld "spin-lock-not-held" 0xC4 WindowsCodeBedParameter false
        "0xBED0001D, lock address, owner's thread id or 0, 0"
        "spin lock released by a thread that does not hold it (DDI rule SpinLockRelease)";
    SpinLockNeverReleased "spin-lock-never-released" 0xC4 WindowsCodeBedParameter false
        "0xBED0001E, locks held, major function (0xFF: a DPC routine), 0"
        "spin lock still held when returning to the I/O manager (DDI rule SpinLock)";
    SpinLockAcquiredTwice "spin-lock-acquired-twice" 0xC4 WindowsCodeBedParameter true
        "0xBED0001F, lock address, 0, 0"
        "spin lock acquired again by its holder: a deadlock (DDI rule SpinLock)";
    Deadlock "deadlock" 0xBED0_0009 Bed true
        "what is waited for (the lock's address), its holder, 0, 0"
        "every emulated CPU waits for one that cannot run: the machine would hang";
    CpuStuck "cpu-stuck" 0xBED0_000A Bed true
        "the CPU, seconds without a switch point, 0, 0"
        "the running CPU reached no switch point for 5 s: driver code waiting on memory another CPU must change";
    PageableMemoryAtDispatch "pageable-memory-at-dispatch" 0xD3 Windows true
        "address, IRQL, 0 read / 1 write, routine's import address"
        "DRIVER_PORTION_MUST_BE_NONPAGED: the kernel touched unlocked pageable memory of the driver at DISPATCH_LEVEL";
    PageFaultAtDispatch "page-fault-at-dispatch" 0xD1 Windows true
        "address, IRQL, 0 read / 1 write, instruction address"
        "DRIVER_IRQL_NOT_LESS_OR_EQUAL: paged-out data touched at DISPATCH_LEVEL";
    PageableCodeAtDispatch "pageable-code-at-dispatch" 0xD1 Windows true
        "address, IRQL, 8 (execute), instruction address"
        "DRIVER_IRQL_NOT_LESS_OR_EQUAL: the driver ran its own paged-out code at DISPATCH_LEVEL";
    DiscardedSectionTouched "discarded-section-touched" 0x50 Windows true
        "address, 0 read / 2 write / 10 execute, instruction address, 0"
        "PAGE_FAULT_IN_NONPAGED_AREA: INIT touched after DriverEntry";
    UnloadedImageTouched "unloaded-image-touched" 0xCE Windows true
        "address, 0 read / 2 write / 10 execute, instruction address, 0"
        "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS: the image touched once unload freed it";
    InvalidAccess "invalid-access" 0x50 Windows true
        "address, 0 read / 2 write / 10 execute, instruction address, 0"
        "PAGE_FAULT_IN_NONPAGED_AREA: memory the driver does not own";
    UnsupportedInstruction "unsupported-instruction" 0x1E Windows true
        "exception code, instruction address, 0, 0"
        "KMODE_EXCEPTION_NOT_HANDLED: privileged/GS instruction not emulated, or a trap";
    DriverBugcheck "driver-bugcheck" 0 Windows true
        "the driver's four parameters"
        "the driver called KeBugCheckEx (the code is the driver's)";
    PendingNotMarked "pending-not-marked" 0xC9 WindowsCodeBedParameter false
        "0xBED00020, IRP address, major function, 0"
        "STATUS_PENDING returned without IoMarkIrpPending (I/O verification)";
    MarkedNotPending "marked-not-pending" 0xC9 WindowsCodeBedParameter false
        "0xBED00021, IRP address, major function, returned status"
        "IRP marked pending but another status returned (I/O verification)";
    CompletedWithCancelRoutine "completed-with-cancel-routine" 0xC9 Windows false
        "0x07, cancel routine, IRP address, 0"
        "IoCompleteRequest while the IRP's cancel routine is still set (I/O verification)";
    QueuedAfterCleanup "queued-after-cleanup" 0xBED0_000B Bed false
        "IRP address, file object, 0, 0"
        "an IRP of the file object still queued when IRP_MJ_CLEANUP returned";
    PendedAfterCleanup "pended-after-cleanup" 0xBED0_0011 Bed false
        "IRP address, file object, major function, 0"
        "a request racing its file object's IRP_MJ_CLEANUP queued all the same (it waits until something completes it)";
    PendingNeverCompleted "pending-never-completed" 0xBED0_000C Bed true
        "IRP address, major function, 0, 0"
        "a pended IRP that nothing left can complete: its requester would wait forever";
    TimerOrDpcAtUnload "timer-or-dpc-at-unload" 0xCE WindowsCodeBedParameter false
        "0xBED00022, KTIMER or KDPC address, 0, 0"
        "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS: a timer set or a DPC queued at unload";
    ObjectInPageableSection "object-in-pageable-section" 0xBED0_000E Bed false
        "object address, 0, 0, 0"
        "KTIMER, KDPC, IO_CSQ or spin lock in a pageable section (the kernel touches it at DISPATCH_LEVEL)";
    CancelLockNotReleased "cancel-lock-not-released" 0xBED0_000F Bed false
        "IRP address, cancel routine, 0, 0"
        "a cancel routine returned holding the cancel spin lock (the next cancel would deadlock)";
    ReleasedWithIrpsOutstanding "released-with-irps-outstanding" 0xBED0_0010 Bed false
        "section handle, pended IRPs, 0, 0"
        "pageable section unlocked to zero while IRPs are pended (MmUnlockPagableImageSection's rule)";
    DpcChangedIrql "dpc-changed-irql" 0xC8 WindowsCodeBedParameter false
        "0xBED00023, DPC routine, IRQL expected, IRQL seen"
        "IRQL_UNEXPECTED_VALUE: a DPC routine returned at another IRQL than DISPATCH_LEVEL";
    IrqlTooHigh "irql-too-high" 0xC4 WindowsCodeBedParameter false
        "0xBED00025, IRQL, highest IRQL documented, 0"
        "routine called above the IRQL it is documented for (DDI rules Irql*)";
    MalformedUnicodeString "malformed-unicode-string" 0xBED0_0012 Bed true
        "UNICODE_STRING address, Length | MaximumLength << 16, Buffer, routine's import address"
        "UNICODE_STRING with odd or inconsistent lengths, or a buffer not there, handed to the kernel (RtlValidateUnicodeString, ObpCaptureObjectName, NtCreateSymbolicLinkObject)";
}

impl Rule {
    /// The rule's row in [`TABLE`].
    ///
    /// # Panics
    /// Never: every rule has a row (a unit test checks it).
    #[must_use]
    pub fn entry(self) -> &'static Entry {
        &TABLE[usize::from(self.row())]
    }

    /// The rule's index in [`TABLE`].
    ///
    /// # Panics
    /// Never: every rule has a row (a unit test checks it).
    #[must_use]
    pub fn row(self) -> u16 {
        let row = TABLE.iter().position(|e| e.rule == self).expect("every rule is in the table");
        u16::try_from(row).unwrap_or(u16::MAX)
    }
}

/// A rule that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule's id ([`Entry::id`]).
    pub rule: String,
    /// The bugcheck code Windows (or the bed) reports.
    pub code: u32,
    /// Its four parameters.
    pub parameters: [u64; 4],
    /// What happened, with addresses as section + offset.
    pub detail: String,
    /// Whether the run stopped here.
    pub fatal: bool,
}

impl Violation {
    /// A violation of `rule`. For [`Rule::DriverBugcheck`] the code is `code_override`.
    #[must_use]
    pub fn new(
        rule: Rule,
        code_override: Option<u32>,
        parameters: [u64; 4],
        detail: String,
    ) -> Self {
        let entry = rule.entry();
        Self {
            rule: entry.id.to_owned(),
            code: code_override.unwrap_or(entry.code),
            parameters,
            detail,
            fatal: entry.fatal,
        }
    }
}

/// The bed's own parameter-1 number of a rule whose table row says so.
#[must_use]
pub const fn bed_number(n: u32) -> u64 {
    0xBED0_0000 | n as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_one_row_and_a_unique_id() {
        for (i, entry) in TABLE.iter().enumerate() {
            assert_eq!(entry.rule.entry().id, entry.id);
            assert!(
                TABLE[i + 1..].iter().all(|other| other.id != entry.id && other.rule != entry.rule)
            );
            let id = serde_json::to_value(entry.rule).expect("serialises");
            assert_eq!(id.as_str(), Some(entry.id), "serde name and table id agree");
        }
    }
}
