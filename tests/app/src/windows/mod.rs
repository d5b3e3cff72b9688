//! The Win32 side of `pagelock-test`: the calls behind [`crate::app::Host`] and the transport.
//!
//! Thin on purpose: what to call when, and what to say about it, is decided in [`crate::app`],
//! where it is tested on every host.

mod package;
mod scm;
mod system;
mod transport;

use std::path::Path;

pub use transport::{DeviceHandle, WindowsDevice};

use crate::app::{Change, Host, Removed};
use crate::errors::Win32Error;

/// This machine: its service control manager, driver store and `\\.\PageLock`.
#[derive(Debug, Default)]
pub struct Win32Host {
    device: WindowsDevice,
}

impl Win32Host {
    /// The local machine.
    #[must_use]
    pub const fn new() -> Self {
        Self { device: WindowsDevice }
    }
}

impl Host for Win32Host {
    type Device = WindowsDevice;

    fn is_elevated(&self) -> Result<bool, Win32Error> {
        system::is_elevated()
    }

    fn device(&self) -> &WindowsDevice {
        &self.device
    }

    fn install_package(&self, inf: &Path) -> Result<bool, Win32Error> {
        package::install(inf)
    }

    fn uninstall_package(&self, inf: Option<&Path>) -> Result<Removed, Win32Error> {
        package::uninstall(inf)
    }

    fn start_service(&self) -> Result<Change, Win32Error> {
        scm::start()
    }

    fn stop_service(&self) -> Result<Change, Win32Error> {
        scm::stop()
    }

    fn message(&self, code: u32) -> String {
        system::message(code)
    }
}
