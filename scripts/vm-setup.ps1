#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Prepares a Windows test VM for pagelock: test signing, the test certificate, Driver Verifier.

.DESCRIPTION
    Run once on a fresh VM (elevated, 64-bit PowerShell), then reboot. The script:
      1. checks that Windows is at least Windows 10 version 2004 (build 19041), the first with
         ExAllocatePool2, which pagelock.sys imports;
      2. checks that Secure Boot is off: with Secure Boot on, Windows refuses to turn test
         signing on;
      3. if BitLocker protects the system volume (Get-BitLockerVolume), suspends it for one
         restart (Suspend-BitLocker -RebootCount 1) before anything changes the boot state: a
         Secure Boot change in the firmware or a bcdedit change is otherwise met at the next
         boot by the BitLocker recovery screen (a VM with a virtual TPM may be encrypted
         without anyone having asked: device encryption). Where it cannot suspend, the script
         stops and prints the command to run. With Secure Boot still on, it suspends before it
         stops, so that turning Secure Boot off costs no recovery key;
      4. turns test signing on (bcdedit /set testsigning on), so that Windows loads a driver
         signed with the package's test certificate;
      5. imports that certificate (WDRLocalTestCert.cer from the package) into the machine's
         Trusted Root Certification Authorities and Trusted Publishers stores;
      6. makes sure Windows writes a memory dump when it bugchecks;
      7. enables Driver Verifier for pagelock.sys: the standard checks, which include force IRQL
         checking, I/O verification and DDI compliance checking, plus code integrity checks
         (what memory integrity, HVCI, would refuse); with -LowResources, the same plus
         systematic low resources simulation (the second pass); with -Extended, the same plus
         the classes that stress the pending and cancel paths (the third pass);
      8. records which pass and which rule classes it configured, for verify.ps1, and says
         that a reboot is needed.

    Every step is safe to repeat. Nothing here changes a machine that is not a test VM on
    purpose: run it on a disposable VM only. To undo: verifier /reset, bcdedit /set testsigning
    off, remove the certificate from both stores, reboot.

.PARAMETER Package
    The driver package folder (pagelock.sys, pagelock.inf, pagelock.cat, WDRLocalTestCert.cer).
    By default the first that exists of: ..\package (the CI artifact layout),
    ..\target\debug\pagelock_package, ..\target\release\pagelock_package (a checkout built with
    cargo make), relative to this script.

.PARAMETER LowResources
    Configure the second pass: Driver Verifier's systematic low resources simulation on top of
    the standard checks. Run verify.ps1 after the reboot as usual.

.PARAMETER Extended
    Configure the third pass: the standard checks plus the rule classes that stress the paths
    of pended and cancelled requests (IOCTL_WAIT, its timer's DPC, the cancel-safe queue,
    cleanup): 20, DDI compliance checking (additional), more DDI rules; 24, kernel
    synchronization delay fuzzing, random delays in threads so that a cancel, the timer's
    completion and cleanup meet in other orders (Microsoft marks it deprecated from build
    19042 on: verify.ps1 reports whether it ran); 35, additional IRQL checking. Always set
    with /ruleclasses. Class 10, force pending I/O requests, is left out: it makes
    IoCallDriver return STATUS_PENDING to its caller, and pagelock calls no lower driver.
    Classes and their IDs as listed on Microsoft's page "Driver Verifier options and rule
    classes" (learn.microsoft.com/windows-hardware/drivers/devtest/driver-verifier-options).

.PARAMETER RuleClasses
    Choose the checks with verifier /ruleclasses (and, for the low-resources pass, DIF mode)
    on Windows 10 too, instead of /flags. Windows 11 always uses /ruleclasses. Use it if the
    low-resources pass reports that no failure was injected.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\scripts\vm-setup.ps1
    Restart-Computer
#>
[CmdletBinding()]
param(
    [string]$Package,
    [switch]$LowResources,
    [switch]$Extended,
    [switch]$RuleClasses
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'common.ps1')

$DriverFile = 'pagelock.sys'
$CertificateFile = 'WDRLocalTestCert.cer'
$MinimumBuild = 19041          # Windows 10 version 2004
$Windows11Build = 22000
$StateDirectory = Join-Path $env:ProgramData 'pagelock'
$StateFile = Join-Path $StateDirectory 'verifier-pass.json'

# Driver Verifier settings. verifier.exe documents two ways to choose checks: /flags (a 32-bit
# mask, the Windows 10 syntax) and /ruleclasses (class numbers, Windows 10 version 1803 and
# later; the syntax Windows 11 documents). /standard cannot be combined with extra options
# everywhere, so the standard set is spelled out:
#   flag      class  check
#   0x00001    1     special pool
#   0x00002    2     force IRQL checking: pageable memory is trimmed whenever the IRQL is raised,
#                    so touching PAGE/PAGELK/PAGEDATA at DISPATCH_LEVEL without a lock bugchecks
#                    at once instead of only when memory runs low
#   0x00008    4     pool tracking: leaks are reported when the driver unloads
#   0x00010    5     I/O verification (enhanced I/O verification, 0x40, comes with it)
#   0x00020    6     deadlock detection (spin lock order)
#   0x00080    8     DMA checking (pagelock does no DMA; part of the standard set)
#   0x00100    9     security checks
#   0x00800   12     miscellaneous checks
#   0x20000   18     DDI compliance checking
# 0x209BB is that sum; Microsoft's documentation names the same mask as the standard flags
# without WDF verification (class 34), which does not apply to a WDM driver. On top of the
# standard set:
#   0x2000000 26     code integrity checks: executable pool, executable page protections or
#                    MDL mappings, and image sections that are writable and executable, not
#                    page aligned, or hold the IAT in executable memory; what memory integrity
#                    (HVCI) refuses (Microsoft's "Code integrity checking" page, which gives the
#                    flag, bit 25). Its class is 26, as the rule-class page lists it now and as
#                    bit 25 makes it; an older version of that page said 22, which is another
#                    class (NDIS/WIFI verification).
# The second pass adds systematic low resources simulation: flag 0x40000 (bit 18) on Windows
# 10; on Windows 11 rule class 19, which needs DIF mode, rule class 36. Microsoft's table marks
# flag 0x40000 deprecated from build 19042 on without naming its replacement there; whether a
# Windows 10 build from 19042 to 19045 still honours it is not verified here, hence
# -RuleClasses, and the check in verify.ps1 that failures were actually injected.
$StandardFlags = 0x209BB -bor 0x2000000
$LowResourcesFlag = 0x40000
$StandardRuleClasses = @(1, 2, 4, 5, 6, 8, 9, 12, 18, 26)
$LowResourcesRuleClasses = @(19, 36)
# The third pass (-Extended): see the parameter's help.
$ExtendedRuleClasses = @(20, 24, 35)

function Stop-Setup([string]$Message) {
    Write-Host "vm-setup: FAIL: $Message" -ForegroundColor Red
    exit 1
}

function Resolve-Package([string]$Requested) {
    if ($Requested) {
        if (-not (Test-Path -LiteralPath $Requested -PathType Container)) {
            Stop-Setup "package folder not found: $Requested"
        }
        return (Resolve-Path -LiteralPath $Requested).Path
    }
    $root = Split-Path -Parent $PSScriptRoot
    $candidates = @(
        (Join-Path $root 'package'),
        (Join-Path $root 'target\debug\pagelock_package'),
        (Join-Path $root 'target\release\pagelock_package')
    )
    foreach ($candidate in $candidates) {
        if (Test-Path -LiteralPath (Join-Path $candidate $DriverFile)) {
            return $candidate
        }
    }
    Stop-Setup ("no driver package found; looked in:`n  " + ($candidates -join "`n  ") +
        "`nBuild one with cargo make, or pass -Package <folder>.")
}

# BitLocker on the system volume: $null when the BitLocker module is absent (editions without
# it) or the volume is not a BitLocker volume, else what Get-BitLockerVolume reports.
function Get-SystemVolumeBitLocker {
    if (-not (Get-Command -Name Get-BitLockerVolume -ErrorAction SilentlyContinue)) {
        return $null
    }
    try {
        return Get-BitLockerVolume -MountPoint $env:SystemDrive -ErrorAction Stop
    } catch {
        return $null
    }
}

# Suspends BitLocker on the system volume for the next restart when its protection is on, so
# that the boot-state change about to happen ($Change) does not lead to the recovery screen.
# Stops with the exact command when it cannot.
function Suspend-BitLockerForChange([string]$Change) {
    $volume = Get-SystemVolumeBitLocker
    if (-not $volume) {
        Write-Host '    no BitLocker volume (or no BitLocker module): nothing to suspend'
        return
    }
    $status = "$($volume.VolumeStatus), protection $($volume.ProtectionStatus)"
    if ("$($volume.ProtectionStatus)" -ne 'On') {
        Write-Host "    $env:SystemDrive is $status`: nothing to suspend"
        return
    }
    $command = "Suspend-BitLocker -MountPoint '$env:SystemDrive' -RebootCount 1"
    try {
        Suspend-BitLocker -MountPoint $env:SystemDrive -RebootCount 1 -ErrorAction Stop | Out-Null
    } catch {
        Stop-Setup ("BitLocker protects $env:SystemDrive ($status) and could not be suspended " +
            "($($_.Exception.Message)). $Change would make the next boot ask for the recovery " +
            "key. Run, elevated: $command; or have the recovery key at hand " +
            "((Get-BitLockerVolume $env:SystemDrive).KeyProtector). Then run this script again.")
    }
    Write-Host ("    $env:SystemDrive was $status; suspended until the next restart ($command), " +
        "so that $Change does not ask for the recovery key; protection resumes by itself")
}

if ($LowResources -and $Extended) {
    Stop-Setup ('-LowResources and -Extended are separate passes: configure one, run ' +
        'verify.ps1, then the other')
}

if (-not [Environment]::Is64BitProcess) {
    Stop-Setup 'run this from 64-bit PowerShell (32-bit PowerShell sees a redirected System32)'
}

# 1. Windows version.
Write-Step 'Windows version'
$currentVersionKey = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
$build = [int](Get-RegistryValue $currentVersionKey 'CurrentBuild' 0)
Write-Host "    build $build ($(Get-RegistryValue $currentVersionKey 'DisplayVersion' 'unknown release'))"
if ($build -lt $MinimumBuild) {
    Stop-Setup ("pagelock.sys needs Windows 10 version 2004 (build $MinimumBuild) or later: it " +
        "imports ExAllocatePool2. This is build $build.")
}

# 2. Secure Boot.
Write-Step 'Secure Boot'
try {
    $secureBoot = [bool](Confirm-SecureBootUEFI)
} catch [System.PlatformNotSupportedException] {
    $secureBoot = $false   # legacy BIOS firmware: there is no Secure Boot to turn off
} catch {
    # Some UEFI firmware lacks the variable Confirm-SecureBootUEFI reads; Windows also records
    # the state in the registry. If neither says, bcdedit below fails clearly when it is on.
    $state = Get-RegistryValue 'HKLM:\SYSTEM\CurrentControlSet\Control\SecureBoot\State' 'UEFISecureBootEnabled' 0
    $secureBoot = ($state -eq 1)
}
if ($secureBoot) {
    Suspend-BitLockerForChange 'turning Secure Boot off'
    Stop-Setup ("Secure Boot is on, and Windows does not allow test signing while it is. Turn it " +
        "off in the VM's firmware settings (Hyper-V: VM Settings > Security > clear 'Enable " +
        "Secure Boot', with the VM off; VMware and VirtualBox: the VM's EFI/boot options), then " +
        "run this script again.")
}
Write-Host '    off'

# 3. BitLocker, before bcdedit changes the boot configuration.
Write-Step 'BitLocker'
Suspend-BitLockerForChange 'turning test signing on (bcdedit)'

# 4. Test signing.
Write-Step 'Test signing'
$startOptions = Get-RegistryValue 'HKLM:\SYSTEM\CurrentControlSet\Control' 'SystemStartOptions' ''
$testSigningActive = $startOptions -match '\bTESTSIGNING\b'
$result = Invoke-Tool 'bcdedit.exe' @('/set', 'testsigning', 'on')
if ($result.ExitCode -ne 0) {
    $result.Output | ForEach-Object { Write-Host "    $_" }
    Stop-Setup ('bcdedit /set testsigning on failed (see above). "Protected by Secure Boot ' +
        'policy" means Secure Boot is on: turn it off in the VM''s firmware settings.')
}
if ($testSigningActive) {
    Write-Host '    on, and active in this boot'
} else {
    Write-Host '    turned on; takes effect after the reboot'
}

# 5. The package's test certificate.
Write-Step 'Test certificate'
$packagePath = Resolve-Package $Package
Write-Host "    package: $packagePath"
$certificate = Join-Path $packagePath $CertificateFile
if (-not (Test-Path -LiteralPath $certificate)) {
    Stop-Setup "$CertificateFile is missing from $packagePath (cargo make puts it there)"
}
foreach ($store in @('Cert:\LocalMachine\Root', 'Cert:\LocalMachine\TrustedPublisher')) {
    $imported = Import-Certificate -FilePath $certificate -CertStoreLocation $store
    Write-Host "    $($imported.Subject) ($($imported.Thumbprint)) -> $store"
}

# 6. Memory dumps.
Write-Step 'Crash dump settings'
$crashControl = 'HKLM:\SYSTEM\CurrentControlSet\Control\CrashControl'
$dumpKind = Get-RegistryValue $crashControl 'CrashDumpEnabled' 0
if ($dumpKind -eq 0) {
    # 7 = automatic memory dump, Windows' default: %SystemRoot%\MEMORY.DMP plus a minidump.
    Set-ItemProperty -LiteralPath $crashControl -Name CrashDumpEnabled -Value 7 -Type DWord
    Write-Host '    dumps were off; set to automatic memory dump (C:\Windows\MEMORY.DMP)'
} else {
    Write-Host "    on (CrashDumpEnabled = $dumpKind); dumps go to C:\Windows\MEMORY.DMP and C:\Windows\Minidump"
}

# 7. Driver Verifier.
$passName = 'standard'
if ($LowResources) { $passName = 'low-resources' }
if ($Extended) { $passName = 'extended' }
Write-Step "Driver Verifier for $DriverFile ($passName pass)"
$verifier = Join-Path $env:SystemRoot 'System32\verifier.exe'
$classes = $StandardRuleClasses
if ($LowResources) { $classes = $StandardRuleClasses + $LowResourcesRuleClasses }
if ($Extended) { $classes = $StandardRuleClasses + $ExtendedRuleClasses }
if ($build -ge $Windows11Build -or $RuleClasses -or $Extended) {
    $arguments = @('/ruleclasses') + ($classes | ForEach-Object { "$_" }) + @('/driver', $DriverFile)
} else {
    $flags = $StandardFlags
    if ($LowResources) { $flags = $StandardFlags -bor $LowResourcesFlag }
    $arguments = @('/flags', ('0x{0:X}' -f $flags), '/driver', $DriverFile)
}
Write-Host "    rule classes: $(Format-RuleClasses $classes)"
Write-Host "    verifier $($arguments -join ' ')"
$result = Invoke-Tool $verifier $arguments
$result.Output | Where-Object { $_.Trim() } | ForEach-Object { Write-Host "    $_" }
# verifier.exe exits with 0 (success), 1 (error) or 2 (success, reboot needed).
if ($result.ExitCode -ne 0 -and $result.ExitCode -ne 2) {
    Stop-Setup "verifier.exe failed (exit code $($result.ExitCode)); see its output above"
}
$result = Invoke-Tool $verifier @('/querysettings')
$result.Output | Where-Object { $_.Trim() } | ForEach-Object { Write-Host "    $_" }

# 8. State for verify.ps1: which pass and rule classes, configured when. verify.ps1 refuses
# to run until the machine has rebooted after this point, since Verifier settings apply at boot.
New-Item -ItemType Directory -Force -Path $StateDirectory | Out-Null
[pscustomobject]@{
    pass       = $passName
    classes    = @($classes)
    configured = [DateTime]::UtcNow.ToString('o')
    package    = $packagePath
} | ConvertTo-Json | Set-Content -LiteralPath $StateFile -Encoding UTF8

Write-Host ''
Write-Host "vm-setup: OK ($passName pass configured). Reboot now (Restart-Computer), then run scripts\verify.ps1." -ForegroundColor Green
exit 0
