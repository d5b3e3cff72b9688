//! Generates the kernel bindings from mingw-w64's DDK headers.
//!
//! Two passes, shaped like wdk-sys: types, constants and variables at the crate root, and the
//! kernel routines in `ntddk`, each imported from `ntoskrnl.exe` by name (raw-dylib) when the
//! target is Windows. C types come from `crate::ctypes`, which has Windows widths, so the same
//! layouts hold when the bindings are compiled into a Linux host crate (the test bed).

use std::{env, fs, path::PathBuf};

mod libclang;

/// Where Debian's `mingw-w64-x86-64-dev` installs the headers.
const MINGW_INCLUDE: &str = "/usr/share/mingw-w64/include";

/// Kernel routines the bindings expose, by name (regular expressions).
const FUNCTIONS: &[&str] = &[
    "Dbg(Print|PrintEx|Break)",
    "Ex(AllocatePool2|AllocatePoolWithTag|FreePool|FreePoolWithTag)",
    "Ex(InitializeRundownProtection|AcquireRundownProtection|ReleaseRundownProtection)",
    "ExWaitForRundownProtectionRelease",
    "Io(CreateDevice|DeleteDevice|CreateSymbolicLink|DeleteSymbolicLink|GetCurrentProcess)",
    "IofCompleteRequest",
    "Ke(AcquireSpinLockRaiseToDpc|ReleaseSpinLock|QueryPerformanceCounter|BugCheckEx)",
    "Ke(InitializeTimerEx|SetTimerEx|CancelTimer|InitializeDpc|FlushQueuedDpcs)",
    "IoCsq(Initialize|InitializeEx|InsertIrp|InsertIrpEx|RemoveIrp|RemoveNextIrp)",
    "Mm(LockPagableDataSection|LockPagableSectionByHandle|UnlockPagableImageSection)",
    "Ob(OpenObjectByPointer)",
    "Rtl(InitUnicodeString|CreateSecurityDescriptor|CreateAcl|AddAccessAllowedAce|SetDaclSecurityDescriptor|LengthSid|InitializeSid|SubAuthoritySid)",
    "Zw(SetSecurityObject|Close)",
    "pagelock_(KeGetCurrentIrql|KfRaiseIrql|KeLowerIrql)",
];

/// Types and variables the bindings expose (with everything they reference).
const TYPES: &[&str] = &[
    "_?(IRP|IO_STACK_LOCATION|DRIVER_OBJECT|DEVICE_OBJECT|FILE_OBJECT|UNICODE_STRING)",
    "_?(SECURITY_DESCRIPTOR|ACL|SID|SID_IDENTIFIER_AUTHORITY|ACCESS_ALLOWED_ACE|ACE_HEADER)",
    "(P?)(DRIVER_DISPATCH|DRIVER_UNLOAD|DRIVER_INITIALIZE)",
    "NTSTATUS|PCUNICODE_STRING|KIRQL|KSPIN_LOCK|POOL_FLAGS|POOL_TYPE|LARGE_INTEGER|ACCESS_MASK|HANDLE",
    "SECURITY_INFORMATION|OBJECT_ATTRIBUTES|KPROCESSOR_MODE|POBJECT_TYPE|PEPROCESS|IO_STATUS_BLOCK",
    "_?(KTIMER|KDPC|IO_CSQ|IO_CSQ_IRP_CONTEXT|LIST_ENTRY)|TIMER_TYPE|PKDEFERRED_ROUTINE",
    "P?IO_CSQ_INSERT_IRP_EX",
    "_?EX_RUNDOWN_REF|PEX_RUNDOWN_REF",
];

/// Constants (plain `#define`s that bindgen turns into items).
const VARS: &[&str] = &[
    "IRP_MJ_.*",
    "IO_NO_INCREMENT",
    "FILE_DEVICE_.*",
    "METHOD_.*",
    "FILE_(ANY|READ|WRITE)_(ACCESS|DATA)",
    "(PASSIVE|APC|DISPATCH|HIGH)_LEVEL",
    "POOL_FLAG_.*",
    "SECURITY_DESCRIPTOR_REVISION",
    "ACL_REVISION",
    "(DACL|OWNER|GROUP)_SECURITY_INFORMATION",
    "GENERIC_(ALL|READ|WRITE|EXECUTE)",
    "(READ|WRITE)_DAC|DELETE|SYNCHRONIZE|FILE_ALL_ACCESS|FILE_GENERIC_(READ|WRITE)",
    "OBJ_KERNEL_HANDLE",
    "SECURITY_(NT_AUTHORITY|LOCAL_SYSTEM_RID|BUILTIN_DOMAIN_RID)",
    "DOMAIN_ALIAS_RID_ADMINS",
    "DO_(DEVICE_INITIALIZING|BUFFERED_IO)",
];

fn builder(header: &str, resource_dir: &str) -> bindgen::Builder {
    bindgen::Builder::default()
        .header(header)
        .clang_arg(format!("-resource-dir={resource_dir}"))
        .clang_args([
            "--target=x86_64-w64-mingw32",
            &format!("-I{MINGW_INCLUDE}"),
            &format!("-I{MINGW_INCLUDE}/ddk"),
            "-D_AMD64_",
            "-DNTDDI_VERSION=0x0A000008",
            "-w",
        ])
        .use_core()
        .rust_target(bindgen::RustTarget::stable(85, 0).expect("known Rust version"))
        .rust_edition(bindgen::RustEdition::Edition2024)
        .generate_comments(false)
        .ctypes_prefix("crate::ctypes")
        .derive_default(true)
        .layout_tests(true)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
}

/// Drops every `unsafe extern "C" { ... }` block (routine declarations) from bindgen's output.
fn without_extern_blocks(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("unsafe extern \"C\" {") {
        kept.push_str(&rest[..start]);
        let end = rest[start..].find("\n}").expect("extern block closes") + start + 2;
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept
}

fn main() {
    // Without the feature the crate is empty (lib.rs) and needs no headers.
    if env::var_os("CARGO_FEATURE_BINDINGS").is_none() {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let header =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("wrapper.h");
    let header = header.to_str().expect("UTF-8 path");
    if !PathBuf::from(MINGW_INCLUDE).join("ddk/ntddk.h").exists() {
        panic!(
            "mingw-w64's DDK headers are missing from {MINGW_INCLUDE}/ddk: \
             install them with `apt-get install mingw-w64-x86-64-dev`"
        );
    }

    let resource_dir = libclang::library()
        .and_then(|library| libclang::resource_dir(&library, libclang::llvm_prefix().as_deref()))
        .unwrap_or_else(|why| {
            panic!(
                "clang's resource headers for bindgen: {why}; `cargo xtask doctor` names the \
                 packages (Debian: libclang1-14 libclang-common-14-dev)"
            )
        });
    let resource_dir = resource_dir.to_str().expect("UTF-8 path");

    // The types pass also follows the routines' signatures, so every type they name exists;
    // their declarations are then dropped here and emitted by the second pass under `ntddk`.
    let mut types = builder(header, resource_dir);
    for f in FUNCTIONS {
        types = types.allowlist_function(f);
    }
    for t in TYPES {
        types = types.allowlist_type(t);
    }
    for v in VARS {
        types = types.allowlist_var(v);
    }
    let text = types.generate().expect("bindgen could not read the DDK headers").to_string();
    fs::write(out.join("types.rs"), without_extern_blocks(&text)).expect("writing types.rs");

    let mut functions = builder(header, resource_dir)
        .allowlist_recursively(false)
        .layout_tests(false)
        .raw_line("use super::*;");
    for f in FUNCTIONS {
        functions = functions.allowlist_function(f);
    }
    let text = functions.generate().expect("bindgen could not read the DDK headers").to_string();
    // Routines that mingw-w64 defines inline are declared under a prefix and imported under
    // their real names, as wdk-sys imports them.
    let text = text.replace("pagelock_", "");
    let windows = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows");
    let text = if windows {
        text.replace(
            "unsafe extern \"C\" {",
            "#[link(name = \"ntoskrnl.exe\", kind = \"raw-dylib\", modifiers = \"+verbatim\")]\nunsafe extern \"C\" {",
        )
    } else {
        text
    };
    fs::write(out.join("ntddk.rs"), text).expect("writing ntddk.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
}
