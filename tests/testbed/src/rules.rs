//! The verifier rules, in one table: each with the bugcheck Windows reports for it where
//! Windows has one (Driver Verifier's codes), or a code of the bed's own (0xBED0_00xx).

use serde::Serialize;

/// A rule the bed enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// An Mm lock routine called above `APC_LEVEL` (DDI rule IrqlMmApcLte).
    MmAboveApcLevel,
    /// `MmUnlockPagableImageSection` on a section whose count is zero.
    UnlockAtZero,
    /// A section handle the memory manager never returned.
    UnknownSectionHandle,
    /// `MmLockPagableDataSection` with an address outside every pageable section.
    LockOutsidePageableSection,
    /// A section still locked after the last handle's close.
    LockedAfterLastClose,
    /// A section still locked at unload.
    LockedAtUnload,
    /// An IRP completed twice.
    IrpCompletedTwice,
    /// A dispatch routine returned without completing its IRP (and without `STATUS_PENDING`).
    IrpNeverCompleted,
    /// A dispatch routine returned a status other than the IRP's `IoStatus.Status`.
    StatusMismatch,
    /// `IoStatus.Information` larger than the output buffer.
    InformationTooLarge,
    /// A dispatch routine returned at an IRQL other than the one it was called at.
    IrqlChangedAcrossDispatch,
    /// Pool still allocated at unload.
    PoolLeakedAtUnload,
    /// A free of memory the pool never handed out, or with the wrong tag.
    BadPoolFree,
    /// A device object left at unload.
    DeviceLeftAtUnload,
    /// A symbolic link left at unload.
    LinkLeftAtUnload,
    /// A spin lock released by a thread that does not hold it.
    SpinLockNotHeld,
    /// A spin lock still held when the driver returned to the I/O manager.
    SpinLockNeverReleased,
    /// Pageable memory that is not locked handed to a kernel routine at `DISPATCH_LEVEL`.
    PageableMemoryAtDispatch,
    /// A page fault on pageable data at `DISPATCH_LEVEL` or above.
    PageFaultAtDispatch,
    /// Pageable code executed at `DISPATCH_LEVEL` or above while paged out.
    PageableCodeAtDispatch,
    /// `INIT` touched after `DriverEntry` returned.
    DiscardedSectionTouched,
    /// The driver called `KeBugCheckEx`.
    DriverBugcheck,
}

/// How Windows (or the bed) reports a rule.
pub struct Report {
    /// The rule.
    pub rule: Rule,
    /// The bugcheck code.
    pub code: u32,
    /// Whether the code is the bed's own (Windows has no bugcheck for this).
    pub bed_own: bool,
    /// What the rule means.
    pub meaning: &'static str,
}

/// Every rule.
pub const TABLE: &[Report] = &[
    Report {
        rule: Rule::MmAboveApcLevel,
        code: 0xC4,
        bed_own: false,
        meaning: "Mm lock routine above APC_LEVEL (DDI rule IrqlMmApcLte)",
    },
    Report {
        rule: Rule::UnlockAtZero,
        code: 0xBED0_0001,
        bed_own: true,
        meaning: "section unlocked more often than locked",
    },
    Report {
        rule: Rule::UnknownSectionHandle,
        code: 0xBED0_0002,
        bed_own: true,
        meaning: "section handle the memory manager never returned",
    },
    Report {
        rule: Rule::LockOutsidePageableSection,
        code: 0xBED0_0003,
        bed_own: true,
        meaning: "lock by address outside every pageable section",
    },
    Report {
        rule: Rule::LockedAfterLastClose,
        code: 0xBED0_0004,
        bed_own: true,
        meaning: "section still locked after the last handle closed",
    },
    Report {
        rule: Rule::LockedAtUnload,
        code: 0xBED0_0005,
        bed_own: true,
        meaning: "section still locked at unload",
    },
    Report {
        rule: Rule::IrpCompletedTwice,
        code: 0x44,
        bed_own: false,
        meaning: "MULTIPLE_IRP_COMPLETE_REQUESTS",
    },
    Report {
        rule: Rule::IrpNeverCompleted,
        code: 0xC9,
        bed_own: false,
        meaning: "IRP neither completed nor pended (I/O verification)",
    },
    Report {
        rule: Rule::StatusMismatch,
        code: 0xC9,
        bed_own: false,
        meaning: "dispatch status differs from IoStatus.Status (I/O verification)",
    },
    Report {
        rule: Rule::InformationTooLarge,
        code: 0xC9,
        bed_own: false,
        meaning: "IoStatus.Information exceeds the output buffer (I/O verification)",
    },
    Report {
        rule: Rule::IrqlChangedAcrossDispatch,
        code: 0xC9,
        bed_own: false,
        meaning: "IRQL changed across a dispatch routine (I/O verification)",
    },
    Report {
        rule: Rule::PoolLeakedAtUnload,
        code: 0xC4,
        bed_own: false,
        meaning: "pool allocations left at unload (Verifier 0x62)",
    },
    Report { rule: Rule::BadPoolFree, code: 0xC2, bed_own: false, meaning: "BAD_POOL_CALLER" },
    Report {
        rule: Rule::DeviceLeftAtUnload,
        code: 0xBED0_0006,
        bed_own: true,
        meaning: "device object left at unload",
    },
    Report {
        rule: Rule::LinkLeftAtUnload,
        code: 0xBED0_0007,
        bed_own: true,
        meaning: "symbolic link left at unload",
    },
    Report {
        rule: Rule::SpinLockNotHeld,
        code: 0xC4,
        bed_own: false,
        meaning: "spin lock released by a thread that does not hold it",
    },
    Report {
        rule: Rule::SpinLockNeverReleased,
        code: 0xC4,
        bed_own: false,
        meaning: "spin lock held when returning to the I/O manager",
    },
    Report {
        rule: Rule::PageableMemoryAtDispatch,
        code: 0xD1,
        bed_own: false,
        meaning: "unlocked pageable memory passed to a kernel routine at DISPATCH_LEVEL",
    },
    Report {
        rule: Rule::PageFaultAtDispatch,
        code: 0xD1,
        bed_own: false,
        meaning: "DRIVER_IRQL_NOT_LESS_OR_EQUAL: paged-out data touched at DISPATCH_LEVEL",
    },
    Report {
        rule: Rule::PageableCodeAtDispatch,
        code: 0xD3,
        bed_own: false,
        meaning: "DRIVER_PORTION_MUST_BE_NONPAGED: paged-out code run at DISPATCH_LEVEL",
    },
    Report {
        rule: Rule::DiscardedSectionTouched,
        code: 0x50,
        bed_own: false,
        meaning: "PAGE_FAULT_IN_NONPAGED_AREA: INIT touched after DriverEntry",
    },
    Report {
        rule: Rule::DriverBugcheck,
        code: 0,
        bed_own: false,
        meaning: "the driver called KeBugCheckEx",
    },
];

/// The table entry of `rule`.
#[must_use]
pub fn report(rule: Rule) -> &'static Report {
    TABLE.iter().find(|r| r.rule == rule).expect("every rule is in the table")
}

/// A rule that fired.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Violation {
    /// The rule's id.
    pub rule: String,
    /// The bugcheck code Windows would show.
    pub code: u32,
    /// What happened, with addresses as section + offset.
    pub detail: String,
    /// Whether the run stopped here (a bugcheck) or went on.
    pub fatal: bool,
}

impl Violation {
    /// A violation of `rule`.
    #[must_use]
    pub fn new(rule: Rule, detail: String, fatal: bool) -> Self {
        let id = serde_json::to_value(rule)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Self { rule: id, code: report(rule).code, detail, fatal }
    }
}
