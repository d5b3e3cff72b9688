# Helpers shared by vm-setup.ps1 and verify.ps1, dot-sourced by both.

function Write-Step([string]$Message) {
    Write-Host "==> $Message" -ForegroundColor Cyan
}

# A registry value, or $Default when the key or the value does not exist.
function Get-RegistryValue([string]$Path, [string]$Name, $Default) {
    try {
        return Get-ItemPropertyValue -LiteralPath $Path -Name $Name
    } catch {
        return $Default
    }
}

# Runs a console program and returns its exit code and output lines. Windows PowerShell 5.1
# turns a native program's stderr into error records, which $ErrorActionPreference = 'Stop'
# would throw on, so errors are not fatal inside this function; callers check the exit code.
function Invoke-Tool([string]$FilePath, [string[]]$Arguments) {
    $saved = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        $output = @(& $FilePath @Arguments 2>&1 | ForEach-Object { "$_" })
        $code = $LASTEXITCODE
    } finally {
        $ErrorActionPreference = $saved
    }
    [pscustomobject]@{ ExitCode = $code; Output = $output }
}

# Driver Verifier's rule classes by decimal ID, as Microsoft's page "Driver Verifier options and
# rule classes" (learn.microsoft.com/windows-hardware/drivers/devtest/driver-verifier-options)
# lists them today; only those the scripts use or report. Class N is bit N-1 of the /flags mask
# wherever both exist (special pool 0x1 = class 1, force IRQL 0x2 = 2, pool tracking 0x8 = 4,
# systematic low resources 0x40000 = 19, code integrity 0x02000000 = 26: that page and
# code-integrity-checking.md), which is how verify.ps1 reads the Level that verifier /query
# prints. An older version of that page listed code integrity as class 22; its own flag, bit 25,
# and the page as it stands now make it 26 (22 would be NDIS/WIFI verification).
$VerifierRuleClassNames = [ordered]@{
    1  = 'special pool'
    2  = 'force IRQL checking'
    4  = 'pool tracking'
    5  = 'I/O verification'
    6  = 'deadlock detection'
    8  = 'DMA checking'
    9  = 'security checks'
    12 = 'miscellaneous checks'
    18 = 'DDI compliance checking'
    19 = 'systematic low resources simulation'
    20 = 'DDI compliance checking (additional)'
    24 = 'kernel synchronization delay fuzzing'
    26 = 'code integrity checks'
    35 = 'additional IRQL checking'
    36 = 'DIF mode'
}

# "12 (miscellaneous checks)" for each class ID.
function Format-RuleClasses([int[]]$Classes) {
    ($Classes | ForEach-Object {
        $name = $VerifierRuleClassNames[[object]$_]
        if (-not $name) { $name = 'unnamed here' }
        "$_ ($name)"
    }) -join ', '
}

# The rule classes the Level mask in verifier /query output has on (class N = bit N-1), or
# $null when the output has no Level line. Classes above 32 have no bit in that mask.
function Get-LevelRuleClasses([string[]]$QueryOutput) {
    foreach ($line in $QueryOutput) {
        if ($line -match '^\s*Level:\s*(?:0x)?([0-9a-fA-F]+)\s*$') {
            $level = [Convert]::ToUInt32($Matches[1], 16)
            # The comma keeps an empty or one-element array an array for the caller.
            return , @(1..32 | Where-Object { $level -band ([uint32]1 -shl ($_ - 1)) })
        }
    }
    return $null
}
