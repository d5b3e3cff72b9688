//! `pagelock-testbed`: run a WDM driver image on Linux under the emulated kernel.

#[cfg(target_os = "linux")]
mod cli;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("pagelock-testbed runs on Linux only");
    std::process::exit(2);
}
