/*
 * Force-included (clang -include) before wdk-sys's headers when `cargo xtask check-wdk`
 * generates the WDK bindings from mingw-w64's headers: what mingw-w64 10 lacks or declares
 * differently from the WDK. Host-only; nothing here reaches a build made with the real WDK.
 */
#pragma once

/*
 * KeGetCurrentIrql as the ntoskrnl import the driver calls through wdk-sys. mingw-w64 defines
 * it inline on amd64 (reading CR8), which bindgen does not emit; its own declarations are
 * renamed out of the way. KIRQL is UCHAR.
 */
__declspec(dllimport) unsigned char KeGetCurrentIrql(void);
#define KeGetCurrentIrql pagelock_mingw_inline_KeGetCurrentIrql

/* POOL_FLAGS (a ULONG64): wdk-sys's hand-written POOL_FLAG_* constants are of this type. */
typedef unsigned long long POOL_FLAGS;

/* ExAllocatePool2 (Windows 10 2004): wdk-alloc allocates with it. SIZE_T, ULONG on LLP64. */
__declspec(dllimport) void *ExAllocatePool2(POOL_FLAGS Flags, unsigned long long NumberOfBytes,
                                            unsigned long Tag);
