/*
 * ntoswine.dll: the kernel routines Wine 8's ntoskrnl.exe lacks, for the Wine lane
 * (`cargo xtask wine`).
 *
 * The lane runs a test copy of pagelock.sys whose import DLL name `ntoskrnl.exe` is renamed to
 * `ntoswine.dll` (same length; only the name and the PE checksum change, no code). Every
 * routine the driver imports that is not defined here is exported by this DLL as a forwarder to
 * Wine's own ntoskrnl.exe or hal.dll; xtask writes that list from the image's imports, so the
 * driver is served by Wine except for these routines:
 *
 * - ExAllocatePool2: missing in Wine 8. Done here over Wine's ExAllocatePoolWithTag, zeroed
 *   unless POOL_FLAG_UNINITIALIZED, as Windows 10 version 2004 and later do.
 * - MmLockPagableDataSection: a stub in Wine 8 that kills the driver host. Here, as in the
 *   Windows kernel (WRK MM/IOSUP.C), it returns the image's own IMAGE_SECTION_HEADER of the
 *   section that contains the address, and bugchecks 0x1A/0x1234 when no loaded image has such
 *   a section. It locks nothing: Wine never pages (its MmLockPagableSectionByHandle and
 *   MmUnlockPagableImageSection, used as they are, are no-ops).
 * - KeGetCurrentIrql: missing on x64 in Wine 8, and Wine keeps no IRQL at all. Here each thread
 *   has an IRQL of its own, PASSIVE_LEVEL until KeAcquireSpinLockRaiseToDpc raises it to
 *   DISPATCH_LEVEL; KeReleaseSpinLock restores the level it is given. Both still take and
 *   release the lock through Wine's routines. Nothing else changes the IRQL, and nothing
 *   enforces it: a page fault at DISPATCH_LEVEL is not caught here.
 *
 * KeQueryPerformanceCounter, which Wine has in hal.dll and not in ntoskrnl.exe, is forwarded
 * there by the generated list.
 *
 * Built with -DPAGELOCK_WINE_IRQL_ZERO, KeGetCurrentIrql answers PASSIVE_LEVEL always, which is
 * what the driver would see of an IRQL Wine does not keep: the lane's negative control, under
 * which the scenario run-locked must fail.
 */
#include <windows.h>

typedef UCHAR KIRQL;
typedef ULONG_PTR KSPIN_LOCK;

#define PASSIVE_LEVEL 0
#define DISPATCH_LEVEL 2

#define POOL_FLAG_UNINITIALIZED 0x0000000000000002ULL
#define POOL_FLAG_PAGED 0x0000000000000100ULL
#define NON_PAGED_POOL_NX 512
#define PAGED_POOL 1

/* Wine's ntoskrnl.exe (import library libntoskrnl.a); RtlPcToFileHeader comes from ntdll. */
PVOID WINAPI ExAllocatePoolWithTag(int pool_type, SIZE_T size, ULONG tag);
KIRQL WINAPI KeAcquireSpinLockRaiseToDpc(KSPIN_LOCK *lock);
void WINAPI KeReleaseSpinLock(KSPIN_LOCK *lock, KIRQL irql);
void WINAPI KeBugCheckEx(ULONG code, ULONG_PTR p1, ULONG_PTR p2, ULONG_PTR p3, ULONG_PTR p4);

static DWORD irql_slot = TLS_OUT_OF_INDEXES;

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reserved;
    if (reason == DLL_PROCESS_ATTACH) {
        irql_slot = TlsAlloc();
        return irql_slot != TLS_OUT_OF_INDEXES;
    }
    return TRUE;
}

static KIRQL current_irql(void)
{
    return (KIRQL)(ULONG_PTR)TlsGetValue(irql_slot);
}

static void set_irql(KIRQL irql)
{
    TlsSetValue(irql_slot, (LPVOID)(ULONG_PTR)irql);
}

KIRQL WINAPI shim_KeGetCurrentIrql(void)
{
#ifdef PAGELOCK_WINE_IRQL_ZERO
    return PASSIVE_LEVEL;
#else
    return current_irql();
#endif
}

KIRQL WINAPI shim_KeAcquireSpinLockRaiseToDpc(KSPIN_LOCK *lock)
{
    KIRQL old = current_irql();
    KeAcquireSpinLockRaiseToDpc(lock);
    set_irql(DISPATCH_LEVEL);
    return old;
}

void WINAPI shim_KeReleaseSpinLock(KSPIN_LOCK *lock, KIRQL irql)
{
    KeReleaseSpinLock(lock, irql);
    set_irql(irql);
}

PVOID WINAPI shim_ExAllocatePool2(ULONGLONG flags, SIZE_T size, ULONG tag)
{
    int type = (flags & POOL_FLAG_PAGED) ? PAGED_POOL : NON_PAGED_POOL_NX;
    PVOID memory = ExAllocatePoolWithTag(type, size, tag);
    if (memory && !(flags & POOL_FLAG_UNINITIALIZED))
        ZeroMemory(memory, size);
    return memory;
}

PVOID WINAPI shim_MmLockPagableDataSection(PVOID address)
{
    PVOID base = NULL;
    if (RtlPcToFileHeader(address, &base) && base) {
        IMAGE_DOS_HEADER *dos = base;
        IMAGE_NT_HEADERS *nt = (IMAGE_NT_HEADERS *)((BYTE *)base + dos->e_lfanew);
        IMAGE_SECTION_HEADER *section = IMAGE_FIRST_SECTION(nt);
        ULONG_PTR rva = (ULONG_PTR)address - (ULONG_PTR)base;
        for (WORD i = 0; i < nt->FileHeader.NumberOfSections; i++, section++) {
            ULONG size = section->Misc.VirtualSize ? section->Misc.VirtualSize
                                                   : section->SizeOfRawData;
            if (rva >= section->VirtualAddress && rva < (ULONG_PTR)section->VirtualAddress + size)
                return section;
        }
    }
    /* MEMORY_MANAGEMENT: no section of a loaded image contains the address. */
    KeBugCheckEx(0x1A, 0x1234, (ULONG_PTR)address, 0, 0);
    return NULL;
}
