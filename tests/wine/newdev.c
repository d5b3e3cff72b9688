/*
 * newdev.dll for the Wine lane (`cargo xtask wine`), loaded beside pagelock-test.exe with
 * WINEDLLOVERRIDES newdev=n.
 *
 * What Wine lacks: Wine 8's DiInstallDriverW is a stub that returns TRUE and installs nothing,
 * DiUninstallDriverW does not exist (calling it aborts the process), and there is no Driver
 * Store. These two stand-ins do what Windows does for a primitive driver package, with Wine's
 * own setupapi doing the work:
 *
 * - DiInstallDriverW runs the INF's architecture-decorated DefaultInstall section
 *   (SetupInstallFromInfSectionW: its CopyFiles) and its .Services section
 *   (SetupInstallServicesFromInfSectionW: the AddService directive that makes the kernel
 *   service the app starts), then copies the INF beside the files, as the Driver Store keeps
 *   a package's INF in the package's folder.
 * - DiUninstallDriverW undoes it, as Windows 10 version 1903 and later do for a primitive
 *   package (they reverse DefaultInstall and ignore DefaultUninstall): it deletes the services
 *   the .Services section adds, the files its CopyFiles sections copied, and the INF's copy.
 *
 * Where Wine's behaviour ends and this file's begins: the INF is parsed, its directives run,
 * its files copied and its service created by Wine's setupapi and service control manager.
 * There is no Driver Store: no signature or catalog check, no staging, no package folder of
 * its own (see package_folder), and SetupGetInfDriverStoreLocationW is a stub in Wine 8, so
 * `pagelock-test uninstall` needs the INF named.
 */
#include <windows.h>
#include <setupapi.h>
#include <stdio.h>

/* Where the INF's DefaultDestDir (DIRID 13, the package's Driver Store folder on Windows)
 * resolves: Wine 8 does not know DIRID 13 and maps it to C:\windows\system32\unknown, and
 * SetupSetDirectoryIdW refuses to remap a system DIRID (error 87), so the package's folder is
 * that one. */
static BOOL package_folder(HINF hinf, WCHAR *folder, DWORD units)
{
    return SetupGetTargetPathW(hinf, NULL, NULL, folder, units, NULL);
}

static HINF open_inf(const WCHAR *inf, WCHAR *install, DWORD units)
{
    HINF hinf = SetupOpenInfFileW(inf, NULL, INF_STYLE_WIN4, NULL);
    if (hinf == INVALID_HANDLE_VALUE)
        return hinf;
    /* DefaultInstall.NTamd64 on x64, as Windows picks it. */
    if (!SetupDiGetActualSectionToInstallW(hinf, L"DefaultInstall", install, units, NULL, NULL)) {
        DWORD error = GetLastError();
        SetupCloseInfFile(hinf);
        SetLastError(error);
        return INVALID_HANDLE_VALUE;
    }
    return hinf;
}

static BOOL fail(HINF hinf)
{
    DWORD error = GetLastError();
    if (hinf != INVALID_HANDLE_VALUE)
        SetupCloseInfFile(hinf);
    SetLastError(error ? error : ERROR_GEN_FAILURE);
    return FALSE;
}

BOOL WINAPI DiInstallDriverW(HWND parent, const WCHAR *inf, DWORD flags, BOOL *need_reboot)
{
    WCHAR install[MAX_PATH], services[MAX_PATH + 16], folder[MAX_PATH], source[MAX_PATH];
    WCHAR copy[MAX_PATH * 2], *file;
    HINF hinf;
    PVOID queue_context;
    BOOL ok;

    (void)flags;
    if (need_reboot)
        *need_reboot = FALSE;
    if (!GetFullPathNameW(inf, MAX_PATH, source, &file) || !file)
        return FALSE;
    hinf = open_inf(source, install, MAX_PATH);
    if (hinf == INVALID_HANDLE_VALUE)
        return FALSE;
    if (!package_folder(hinf, folder, MAX_PATH))
        return fail(hinf);
    _snwprintf(copy, MAX_PATH * 2, L"%ls\\%ls", folder, file);
    file[0] = 0; /* `source` is now the INF's folder: the source root of its files */
    queue_context = SetupInitDefaultQueueCallback(parent);
    ok = SetupInstallFromInfSectionW(parent, hinf, install, SPINST_ALL, NULL, source,
                                     SP_COPY_NEWER, SetupDefaultQueueCallbackW, queue_context,
                                     NULL, NULL);
    SetupTermDefaultQueueCallback(queue_context);
    if (!ok)
        return fail(hinf);
    _snwprintf(services, MAX_PATH + 16, L"%ls.Services", install);
    if (!SetupInstallServicesFromInfSectionW(hinf, services, 0))
        return fail(hinf);
    SetupCloseInfFile(hinf);
    return CopyFileW(inf, copy, FALSE);
}

/* Deletes every service an AddService line of `section` adds. */
static BOOL delete_services(HINF hinf, const WCHAR *section)
{
    INFCONTEXT line;
    BOOL more = SetupFindFirstLineW(hinf, section, L"AddService", &line);
    SC_HANDLE manager = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
    if (!manager)
        return FALSE;
    for (; more; more = SetupFindNextMatchLineW(&line, L"AddService", &line)) {
        WCHAR name[256];
        SC_HANDLE service;
        if (!SetupGetStringFieldW(&line, 1, name, 256, NULL))
            continue;
        service = OpenServiceW(manager, name, DELETE);
        if (!service)
            continue; /* already gone */
        if (!DeleteService(service) && GetLastError() != ERROR_SERVICE_MARKED_FOR_DELETE) {
            DWORD error = GetLastError();
            CloseServiceHandle(service);
            CloseServiceHandle(manager);
            SetLastError(error);
            return FALSE;
        }
        CloseServiceHandle(service);
    }
    CloseServiceHandle(manager);
    return TRUE;
}

/* Deletes the files of every section a CopyFiles line of `install` names. */
static BOOL delete_files(HWND parent, HINF hinf, const WCHAR *install)
{
    INFCONTEXT line;
    HSPFILEQ queue = SetupOpenFileQueue();
    PVOID queue_context;
    BOOL ok = TRUE;
    if (queue == INVALID_HANDLE_VALUE)
        return FALSE;
    if (SetupFindFirstLineW(hinf, install, L"CopyFiles", &line)) {
        do {
            DWORD fields = SetupGetFieldCount(&line);
            for (DWORD i = 1; i <= fields && ok; i++) {
                WCHAR section[MAX_PATH];
                if (SetupGetStringFieldW(&line, i, section, MAX_PATH, NULL) && section[0] != L'@')
                    ok = SetupQueueDeleteSectionW(queue, hinf, NULL, section);
            }
        } while (ok && SetupFindNextMatchLineW(&line, L"CopyFiles", &line));
    }
    queue_context = SetupInitDefaultQueueCallback(parent);
    ok = ok && SetupCommitFileQueueW(parent, queue, SetupDefaultQueueCallbackW, queue_context);
    SetupTermDefaultQueueCallback(queue_context);
    SetupCloseFileQueue(queue);
    return ok;
}

BOOL WINAPI DiUninstallDriverW(HWND parent, const WCHAR *inf, DWORD flags, BOOL *need_reboot)
{
    WCHAR install[MAX_PATH], services[MAX_PATH + 16], folder[MAX_PATH], copy[MAX_PATH * 2];
    WCHAR full[MAX_PATH], *file;
    HINF hinf;

    (void)flags;
    if (need_reboot)
        *need_reboot = FALSE;
    if (!GetFullPathNameW(inf, MAX_PATH, full, &file) || !file)
        return FALSE;
    hinf = open_inf(full, install, MAX_PATH);
    if (hinf == INVALID_HANDLE_VALUE)
        return FALSE;
    if (!package_folder(hinf, folder, MAX_PATH))
        return fail(hinf);
    _snwprintf(copy, MAX_PATH * 2, L"%ls\\%ls", folder, file);
    if (GetFileAttributesW(copy) == INVALID_FILE_ATTRIBUTES) {
        SetupCloseInfFile(hinf);
        SetLastError(ERROR_FILE_NOT_FOUND); /* the package is not installed */
        return FALSE;
    }
    _snwprintf(services, MAX_PATH + 16, L"%ls.Services", install);
    if (!delete_services(hinf, services) || !delete_files(parent, hinf, install))
        return fail(hinf);
    SetupCloseInfFile(hinf);
    return DeleteFileW(copy);
}
