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
 * - KeInitializeTimerEx, KeSetTimerEx, KeCancelTimer, KeInitializeDpc, KeFlushQueuedDpcs: Wine 8
 *   has them, but runs a timer's DPC on a thread-pool thread at what this shim would call IRQL
 *   0, and its KeSetTimerEx and KeCancelTimer wait for the timer's running callback while
 *   holding Wine's own lock, so a DPC that cancels or re-arms its own timer (legal on Windows,
 *   at DISPATCH_LEVEL) deadlocks; its KeFlushQueuedDpcs is a stub. Here: one worker thread
 *   keeps the armed timers (in the KTIMER's own storage), runs each expired timer's DPC at
 *   DISPATCH_LEVEL outside any lock of its own, re-queues periodic ones, and KeCancelTimer
 *   only dequeues, as on Windows (a DPC already running still runs). KeFlushQueuedDpcs waits
 *   until every DPC started before it has returned. Due times have the resolution of
 *   GetTickCount64 (milliseconds); only relative due times are supported (the driver's).
 * - IoCsqInitialize(Ex), IoCsqInsertIrp(Ex), IoCsqRemoveIrp, IoCsqRemoveNextIrp: Wine 8 has
 *   no Ex routines and stubs the rest but the first (`__wine_stub_` entries: calling one kills
 *   the driver host). Here the cancel-safe
 *   queue follows the documented algorithm (wdm.h; ReactOS ntoskrnl/io/iomgr/csq.c has the
 *   same one): insertion sets the queue's cancel routine, and if the IRP was cancelled
 *   meanwhile takes it back and completes it through the driver's CompleteCanceledIrp; removal
 *   clears the cancel routine and skips IRPs whose cancel routine is already running. Wine's
 *   own IoCancelIrp calls that routine (CancelIoEx and handle close reach it through
 *   winedevice), with the cancel spin lock held, as Windows does.
 *
 * - ExInitializeRundownProtection, ExAcquireRundownProtection, ExReleaseRundownProtection,
 *   ExWaitForRundownProtectionRelease: `__wine_stub_` entries in Wine 8. Here the kernel's
 *   encoding of EX_RUNDOWN_REF (references in twos, bit 0 once a wait began); the wait polls
 *   instead of blocking on a wait block.
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
/* The timers' lock, set up at load (see "Timers and DPCs" below). */
static CRITICAL_SECTION timer_cs;

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reserved;
    if (reason == DLL_PROCESS_ATTACH) {
        InitializeCriticalSection(&timer_cs);
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

/* ---- Timers and DPCs ------------------------------------------------------------------- */

/* The KTIMER's 64 bytes hold this while the shim owns the timer. */
struct shim_timer {
    struct shim_timer *next;
    ULONGLONG due_ms;
    LONG period_ms;
    LONG inserted;
    void *dpc;
};

typedef void (WINAPI *deferred_routine)(void *dpc, void *context, void *arg1, void *arg2);
/* KDPC (x64): DeferredRoutine at 0x18, DeferredContext at 0x20, SystemArgument1/2 after. */
struct shim_dpc {
    BYTE header[0x18];
    deferred_routine routine;
    void *context;
    void *argument1;
    void *argument2;
};

static CONDITION_VARIABLE timer_cv = CONDITION_VARIABLE_INIT;
static struct shim_timer *armed;
static HANDLE worker;
static ULONGLONG dpcs_started, dpcs_done;

static void unlink_timer(struct shim_timer *timer)
{
    for (struct shim_timer **at = &armed; *at; at = &(*at)->next) {
        if (*at == timer) {
            *at = timer->next;
            break;
        }
    }
    timer->next = NULL;
    timer->inserted = 0;
}

static DWORD WINAPI timer_worker(void *unused)
{
    (void)unused;
    EnterCriticalSection(&timer_cs);
    for (;;) {
        struct shim_timer *first = NULL;
        for (struct shim_timer *t = armed; t; t = t->next)
            if (!first || t->due_ms < first->due_ms)
                first = t;
        ULONGLONG now = GetTickCount64();
        if (!first) {
            SleepConditionVariableCS(&timer_cv, &timer_cs, INFINITE);
            continue;
        }
        if (first->due_ms > now) {
            SleepConditionVariableCS(&timer_cv, &timer_cs, (DWORD)(first->due_ms - now));
            continue;
        }
        struct shim_dpc *dpc = first->dpc;
        unlink_timer(first);
        if (first->period_ms > 0) {
            first->due_ms = now + (ULONGLONG)first->period_ms;
            first->inserted = 1;
            first->next = armed;
            armed = first;
        }
        if (!dpc || !dpc->routine)
            continue;
        dpcs_started++;
        LeaveCriticalSection(&timer_cs);
        /* A DPC runs at DISPATCH_LEVEL, outside the shim's lock: it may set or cancel timers. */
        set_irql(DISPATCH_LEVEL);
        dpc->routine(dpc, dpc->context, dpc->argument1, dpc->argument2);
        set_irql(PASSIVE_LEVEL);
        EnterCriticalSection(&timer_cs);
        dpcs_done++;
        WakeAllConditionVariable(&timer_cv);
    }
    return 0;
}

void WINAPI shim_KeInitializeTimerEx(void *timer, int type)
{
    (void)type;
    ZeroMemory(timer, 64);
}

void WINAPI shim_KeInitializeDpc(void *dpc, deferred_routine routine, void *context)
{
    struct shim_dpc *d = dpc;
    ZeroMemory(d, sizeof(*d));
    d->routine = routine;
    d->context = context;
}

BOOLEAN WINAPI shim_KeSetTimerEx(void *timer_, LARGE_INTEGER due, LONG period, void *dpc)
{
    struct shim_timer *timer = timer_;
    /* Relative (negative) due times in 100 ns units; an absolute one is taken as due now. */
    ULONGLONG after = due.QuadPart < 0 ? (ULONGLONG)(-due.QuadPart) / 10000 : 0;
    EnterCriticalSection(&timer_cs);
    BOOLEAN was = (BOOLEAN)timer->inserted;
    if (was)
        unlink_timer(timer);
    timer->due_ms = GetTickCount64() + after;
    timer->period_ms = period;
    timer->dpc = dpc;
    timer->inserted = 1;
    timer->next = armed;
    armed = timer;
    if (!worker)
        worker = CreateThread(NULL, 0, timer_worker, NULL, 0, NULL);
    WakeAllConditionVariable(&timer_cv);
    LeaveCriticalSection(&timer_cs);
    return was;
}

BOOLEAN WINAPI shim_KeCancelTimer(void *timer_)
{
    struct shim_timer *timer = timer_;
    EnterCriticalSection(&timer_cs);
    BOOLEAN was = (BOOLEAN)timer->inserted;
    if (was)
        unlink_timer(timer);
    LeaveCriticalSection(&timer_cs);
    return was;
}

void WINAPI shim_KeFlushQueuedDpcs(void)
{
    EnterCriticalSection(&timer_cs);
    ULONGLONG target = dpcs_started;
    while (dpcs_done < target)
        SleepConditionVariableCS(&timer_cv, &timer_cs, INFINITE);
    LeaveCriticalSection(&timer_cs);
}

/* ---- The cancel-safe queue --------------------------------------------------------------- */

/* x64 offsets (pinned by pagelock-ddk's layout tests against mingw-w64's headers). */
#define IRP_CANCEL(irp) (*(volatile BOOLEAN *)((BYTE *)(irp) + 0x44))
#define IRP_CANCEL_IRQL(irp) (*(KIRQL *)((BYTE *)(irp) + 0x45))
#define IRP_CANCEL_ROUTINE(irp) ((void *volatile *)((BYTE *)(irp) + 0x68))
#define IRP_CSQ_SLOT(irp) (*(void **)((BYTE *)(irp) + 0x78 + 3 * sizeof(void *)))
#define IRP_STACK(irp) (*(BYTE **)((BYTE *)(irp) + 0xB8))
#define SL_PENDING_RETURNED 0x01
#define IO_TYPE_CSQ_IRP_CONTEXT 1
#define IO_TYPE_CSQ 2
#define IO_TYPE_CSQ_EX 3

typedef struct shim_csq shim_csq;
struct shim_csq {
    ULONG type;
    void (WINAPI *insert)(shim_csq *, void *irp);
    void (WINAPI *remove)(shim_csq *, void *irp);
    void *(WINAPI *peek)(shim_csq *, void *irp, void *context);
    void (WINAPI *acquire)(shim_csq *, KIRQL *irql);
    void (WINAPI *release)(shim_csq *, KIRQL irql);
    void (WINAPI *complete_canceled)(shim_csq *, void *irp);
    void *reserved;
};

struct shim_csq_context {
    ULONG type;
    void *irp;
    shim_csq *csq;
};

void WINAPI IoReleaseCancelSpinLock(KIRQL irql);

static void *set_cancel_routine(void *irp, void *routine)
{
    return InterlockedExchangePointer(IRP_CANCEL_ROUTINE(irp), routine);
}

/* The queue that holds `irp`, and its context if it was inserted with one. */
static shim_csq *csq_of(void *irp, struct shim_csq_context **context)
{
    ULONG *slot = IRP_CSQ_SLOT(irp);
    *context = NULL;
    if (slot && *slot == IO_TYPE_CSQ_IRP_CONTEXT) {
        *context = (struct shim_csq_context *)slot;
        return (*context)->csq;
    }
    return (shim_csq *)slot;
}

/* The cancel routine the queue sets on every IRP it holds. Called by IoCancelIrp with the
   cancel spin lock held, which it releases first, as every cancel routine must. */
static void WINAPI csq_cancel_routine(void *device, void *irp)
{
    (void)device;
    IoReleaseCancelSpinLock(IRP_CANCEL_IRQL(irp));
    struct shim_csq_context *context;
    shim_csq *csq = csq_of(irp, &context);
    KIRQL irql;
    csq->acquire(csq, &irql);
    csq->remove(csq, irp);
    if (context)
        context->irp = NULL;
    IRP_CSQ_SLOT(irp) = NULL;
    csq->release(csq, irql);
    csq->complete_canceled(csq, irp);
}

NTSTATUS WINAPI shim_IoCsqInitialize(shim_csq *csq, void *insert, void *remove, void *peek,
                                     void *acquire, void *release, void *complete_canceled)
{
    csq->type = IO_TYPE_CSQ;
    csq->insert = insert;
    csq->remove = remove;
    csq->peek = peek;
    csq->acquire = acquire;
    csq->release = release;
    csq->complete_canceled = complete_canceled;
    csq->reserved = NULL;
    return 0;
}

/* IoCsqInitializeEx: the insert callback returns a status, and may refuse the IRP. */
NTSTATUS WINAPI shim_IoCsqInitializeEx(shim_csq *csq, void *insert, void *remove, void *peek,
                                       void *acquire, void *release, void *complete_canceled)
{
    shim_IoCsqInitialize(csq, insert, remove, peek, acquire, release, complete_canceled);
    csq->type = IO_TYPE_CSQ_EX;
    return 0;
}

/* IoCsqInsertIrpEx: marks the IRP pending (ReactOS's order: before the insert callback, and
   left marked when the callback refuses), inserts it, or returns the callback's refusal with
   nothing queued. */
NTSTATUS WINAPI shim_IoCsqInsertIrpEx(shim_csq *csq, void *irp, struct shim_csq_context *context,
                                      void *insert_context)
{
    KIRQL irql;
    csq->acquire(csq, &irql);
    IRP_STACK(irp)[3] |= SL_PENDING_RETURNED; /* IoMarkIrpPending */
    if (csq->type == IO_TYPE_CSQ_EX) {
        /* The Ex callback was stored in the same slot; void (*)(void) is the cast C allows
           between function types. */
        NTSTATUS (WINAPI *insert_ex)(shim_csq *, void *, void *) =
            (NTSTATUS (WINAPI *)(shim_csq *, void *, void *))(void (*)(void))csq->insert;
        NTSTATUS status = insert_ex(csq, irp, insert_context);
        if (status < 0) {
            csq->release(csq, irql);
            return status;
        }
    } else {
        csq->insert(csq, irp);
    }
    if (context) {
        context->type = IO_TYPE_CSQ_IRP_CONTEXT;
        context->irp = irp;
        context->csq = csq;
        IRP_CSQ_SLOT(irp) = context;
    } else {
        IRP_CSQ_SLOT(irp) = csq;
    }
    set_cancel_routine(irp, (void *)csq_cancel_routine);
    if (IRP_CANCEL(irp) && set_cancel_routine(irp, NULL)) {
        /* Cancelled before the routine was set, and taken back: the queue completes it. */
        csq->remove(csq, irp);
        if (context)
            context->irp = NULL;
        IRP_CSQ_SLOT(irp) = NULL;
        csq->release(csq, irql);
        csq->complete_canceled(csq, irp);
        return 0;
    }
    /* Otherwise, if cancelled, the cancel routine is running and will take it off. */
    csq->release(csq, irql);
    return 0;
}

void WINAPI shim_IoCsqInsertIrp(shim_csq *csq, void *irp, struct shim_csq_context *context)
{
    shim_IoCsqInsertIrpEx(csq, irp, context, NULL);
}

void *WINAPI shim_IoCsqRemoveIrp(shim_csq *csq, struct shim_csq_context *context)
{
    KIRQL irql;
    void *irp = NULL;
    csq->acquire(csq, &irql);
    if (context->irp && set_cancel_routine(context->irp, NULL)) {
        irp = context->irp;
        csq->remove(csq, irp);
        IRP_CSQ_SLOT(irp) = NULL;
        context->irp = NULL;
    }
    csq->release(csq, irql);
    return irp;
}

void *WINAPI shim_IoCsqRemoveNextIrp(shim_csq *csq, void *peek_context)
{
    KIRQL irql;
    csq->acquire(csq, &irql);
    void *irp = csq->peek(csq, NULL, peek_context);
    while (irp && !set_cancel_routine(irp, NULL)) {
        /* Its cancel routine is running: it is being cancelled, leave it to that. */
        irp = csq->peek(csq, irp, peek_context);
    }
    if (irp) {
        struct shim_csq_context *context;
        csq_of(irp, &context);
        csq->remove(csq, irp);
        if (context)
            context->irp = NULL;
        IRP_CSQ_SLOT(irp) = NULL;
    }
    csq->release(csq, irql);
    return irp;
}

/* ---- Rundown protection ---- */

#define RUNDOWN_ACTIVE 1
#define RUNDOWN_REFERENCE 2

void WINAPI shim_ExInitializeRundownProtection(LONG64 *rundown)
{
    InterlockedExchange64(rundown, 0);
}

BOOLEAN WINAPI shim_ExAcquireRundownProtection(LONG64 *rundown)
{
    for (;;) {
        LONG64 count = *(volatile LONG64 *)rundown;
        if (count & RUNDOWN_ACTIVE)
            return FALSE;
        if (InterlockedCompareExchange64(rundown, count + RUNDOWN_REFERENCE, count) == count)
            return TRUE;
    }
}

void WINAPI shim_ExReleaseRundownProtection(LONG64 *rundown)
{
    InterlockedExchangeAdd64(rundown, -RUNDOWN_REFERENCE);
}

void WINAPI shim_ExWaitForRundownProtectionRelease(LONG64 *rundown)
{
    InterlockedOr64(rundown, RUNDOWN_ACTIVE);
    while (*(volatile LONG64 *)rundown != RUNDOWN_ACTIVE)
        Sleep(1);
}
