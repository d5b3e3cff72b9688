//! The ntoskrnl routines pagelock may import, each with the Windows release that introduced
//! it. `check-pe` fails on an import missing from this table or newer than the minimum.

/// A Windows release, ordered by build number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    /// The build number (`[Environment]::OSVersion.Version.Build`).
    pub build: u32,
    /// How people name it.
    pub name: &'static str,
}

/// Windows 2000.
pub const WINDOWS_2000: Release = Release { build: 2195, name: "Windows 2000" };
/// Windows XP (and the first x64 kernels, Server 2003 SP1 / XP x64).
pub const WINDOWS_XP: Release = Release { build: 2600, name: "Windows XP" };
/// Windows 10, version 2004: the first with `ExAllocatePool2`.
pub const WINDOWS_10_2004: Release = Release { build: 19041, name: "Windows 10 2004" };

/// The minimum Windows release pagelock supports (stated in the README).
pub const MINIMUM: Release = WINDOWS_10_2004;

/// Every routine the driver may import from ntoskrnl.exe, with the release that introduced it
/// (as Microsoft's reference pages state under "Requirements").
pub const ROUTINES: &[(&str, Release)] = &[
    ("DbgPrintEx", WINDOWS_XP),
    // Rundown protection: "available in Windows XP and later versions of Windows".
    ("ExAcquireRundownProtection", WINDOWS_XP),
    ("ExAllocatePool2", WINDOWS_10_2004),
    ("ExFreePool", WINDOWS_2000),
    ("ExFreePoolWithTag", WINDOWS_2000),
    ("ExInitializeRundownProtection", WINDOWS_XP),
    ("ExReleaseRundownProtection", WINDOWS_XP),
    ("ExWaitForRundownProtectionRelease", WINDOWS_XP),
    ("IoCreateDevice", WINDOWS_2000),
    ("IoCreateSymbolicLink", WINDOWS_2000),
    // The cancel-safe queue: ntoskrnl exports from Windows XP (Windows 2000 had csq.lib).
    ("IoCsqInitialize", WINDOWS_XP),
    ("IoCsqInitializeEx", WINDOWS_XP),
    ("IoCsqInsertIrp", WINDOWS_XP),
    ("IoCsqInsertIrpEx", WINDOWS_XP),
    ("IoCsqRemoveIrp", WINDOWS_XP),
    ("IoCsqRemoveNextIrp", WINDOWS_XP),
    ("IoDeleteDevice", WINDOWS_2000),
    ("IoDeleteSymbolicLink", WINDOWS_2000),
    ("IofCompleteRequest", WINDOWS_2000),
    ("KeAcquireSpinLockRaiseToDpc", WINDOWS_XP),
    ("KeBugCheckEx", WINDOWS_2000),
    ("KeCancelTimer", WINDOWS_2000),
    // Windows XP SP2 and Server 2003 SP1 (wdm.h: NTDDI_WINXPSP2), the first x64 kernels.
    ("KeFlushQueuedDpcs", WINDOWS_XP),
    ("KeGetCurrentIrql", WINDOWS_2000),
    ("KeInitializeDpc", WINDOWS_2000),
    ("KeInitializeTimerEx", WINDOWS_2000),
    ("KeQueryPerformanceCounter", WINDOWS_2000),
    ("KeReleaseSpinLock", WINDOWS_2000),
    ("KeSetTimerEx", WINDOWS_2000),
    ("MmLockPagableDataSection", WINDOWS_2000),
    ("MmLockPagableSectionByHandle", WINDOWS_2000),
    ("MmUnlockPagableImageSection", WINDOWS_2000),
    ("ObOpenObjectByPointer", WINDOWS_2000),
    ("RtlAddAccessAllowedAce", WINDOWS_2000),
    ("RtlCreateAcl", WINDOWS_2000),
    ("RtlCreateSecurityDescriptor", WINDOWS_2000),
    ("RtlInitializeSid", WINDOWS_2000),
    ("RtlSetDaclSecurityDescriptor", WINDOWS_2000),
    ("RtlSubAuthoritySid", WINDOWS_2000),
    ("ZwClose", WINDOWS_2000),
    ("ZwSetSecurityObject", WINDOWS_XP),
    ("__chkstk", WINDOWS_2000),
    ("memcmp", WINDOWS_2000),
    ("memcpy", WINDOWS_2000),
    ("memmove", WINDOWS_2000),
    ("memset", WINDOWS_2000),
    ("strlen", WINDOWS_2000),
];

/// The three routines of the reference pages; a lockable-section driver must import them.
pub const REQUIRED: [&str; 3] =
    ["MmLockPagableDataSection", "MmLockPagableSectionByHandle", "MmUnlockPagableImageSection"];

/// The release that introduced `routine`, if the table knows it.
#[must_use]
pub fn introduced(routine: &str) -> Option<Release> {
    ROUTINES.iter().find(|(name, _)| *name == routine).map(|(_, release)| *release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in ROUTINES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn nothing_in_the_table_is_newer_than_the_minimum() {
        assert!(ROUTINES.iter().all(|(_, release)| *release <= MINIMUM));
        assert_eq!(introduced("ExAllocatePool2"), Some(WINDOWS_10_2004));
        assert_eq!(introduced("ExAllocatePool3"), None);
    }
}
