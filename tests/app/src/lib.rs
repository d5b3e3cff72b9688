//! pagelock's scenario suite, written once against [`device::Device`] and run both against the
//! real kernel on a Windows VM and against the real pagelock.sys on the test bed.

pub mod device;
