//! Build script of the driver crate.
//!
//! On a Windows host, wdk-build configures the driver build from the WDK it finds (linker
//! flags, libraries), as in windows-drivers-rs's samples. On any other host the crate is
//! cross-built by `cargo xtask build` against `pagelock-ddk` and needs nothing here.

#[cfg(windows)]
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()?;
    // INIT code is emitted into INITX and merged into INIT, which lib.rs declares discardable,
    // so that INIT trails every other section and the kernel frees it after DriverEntry.
    // wdk-build passes no /SECTION for INIT; link.exe is told its attributes explicitly.
    println!("cargo::rustc-cdylib-link-arg=/MERGE:INITX=INIT");
    println!("cargo::rustc-cdylib-link-arg=/SECTION:INIT,ERD");
    // The exception table goes into .rdata, whose resident read-only page it fits in: one page
    // less. Safe for exception dispatch and stack walks: the kernel finds the table through the
    // image's exception directory (which link.exe points at the merged, sorted table), never by
    // section name, and .rdata is resident, so the table is readable at any IRQL.
    println!("cargo::rustc-cdylib-link-arg=/MERGE:.pdata=.rdata");
    Ok(())
}

#[cfg(not(windows))]
fn main() {}
