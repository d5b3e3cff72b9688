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
