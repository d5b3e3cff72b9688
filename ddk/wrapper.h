/* The kernel headers pagelock's bindings are generated from, as wdk-sys reads them for WDM. */
#include <ntifs.h>
#include <ntddk.h>

/* Routines that mingw-w64's headers lack, or define inline where wdk-sys imports them.
   Signatures as Microsoft documents them. */
typedef ULONG64 POOL_FLAGS;
#define POOL_FLAG_NON_PAGED 0x0000000000000040ULL
#define POOL_FLAG_PAGED 0x0000000000000100ULL
#define POOL_FLAG_UNINITIALIZED 0x0000000000000002ULL

NTKERNELAPI PVOID NTAPI ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
NTKERNELAPI KIRQL NTAPI pagelock_KeGetCurrentIrql(VOID);
NTKERNELAPI KIRQL NTAPI pagelock_KfRaiseIrql(KIRQL NewIrql);
NTKERNELAPI VOID NTAPI pagelock_KeLowerIrql(KIRQL NewIrql);
