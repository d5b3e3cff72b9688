//! Build script of the driver crate.
//!
//! On a Windows host, wdk-build configures the driver build from the WDK it finds (linker
//! flags, libraries), as in windows-drivers-rs's samples. On any other host the crate is
//! cross-built by `cargo xtask build` against `pagelock-ddk` and needs nothing here.

#[cfg(windows)]
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}

#[cfg(not(windows))]
fn main() {}
