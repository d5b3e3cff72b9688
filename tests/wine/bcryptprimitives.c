/*
 * bcryptprimitives.dll for the Wine lane (`cargo xtask wine`).
 *
 * What Wine lacks: Rust's standard library (1.78 and later) imports ProcessPrng from
 * bcryptprimitives.dll to seed its hash maps, and Wine 8 has no such DLL: the exe does not
 * start (status 53, "bcryptprimitives.dll not found"). Windows 10 and later have it.
 *
 * This stand-in sits beside pagelock-test.exe and answers ProcessPrng with RtlGenRandom
 * (advapi32's SystemFunction036), which Wine implements over the host's random source. Where
 * Wine's behaviour ends: nothing of the app's own logic depends on it; only std's seeding.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    /* Windows documents ProcessPrng as never failing. */
    return TRUE;
}
