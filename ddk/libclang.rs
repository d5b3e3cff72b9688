//! Where libclang is and where its resource headers are: one answer for bindgen (this crate's
//! build script) and for the prerequisite check (`cargo xtask doctor`), which includes this
//! file, so that the check and the build can never disagree.

use std::path::{Path, PathBuf};

/// Where clang-sys, and so bindgen, will load libclang from. Asks clang-sys itself (its runtime
/// loader: `LIBCLANG_PATH` alone when set, else `llvm-config --prefix`, the library search
/// variables and the system directories; `-cpp.` libraries skipped, ELF64 only, highest
/// version).
///
/// # Errors
/// clang-sys's own reason when no loadable libclang is found, or the library it loaded lacks
/// libclang's entry points.
pub fn library() -> Result<PathBuf, String> {
    clang_sys::load().map_err(|e| match e.split_once(", set the `LIBCLANG_PATH`") {
        // clang-sys's advice on the variable is for its users, not for a new machine; what it
        // found and refused stays.
        Some((what, rest)) => {
            let what = what.replace("couldn't find any valid shared libraries matching", "no");
            match rest.split_once("(invalid: []") {
                Some(_) => what,
                None => format!("{what} {}", rest.trim_start_matches(|c| c != '(')),
            }
        }
        None => e,
    })?;
    let path = clang_sys::get_library().map(|l| l.path().to_path_buf());
    // A library of the right name that lacks libclang's entry points loads just as well.
    let is_libclang = clang_sys::clang_createIndex::is_loaded();
    let _ = clang_sys::unload();
    let path = path.ok_or("clang-sys loaded no library")?;
    if !is_libclang {
        return Err(format!("{} does not export clang_createIndex", path.display()));
    }
    Ok(path)
}

/// A header that only clang's resource directory holds and mingw-w64's headers include
/// (`malloc.h` includes it); `stddef.h` would not do, mingw ships one of its own.
pub const RESOURCE_HEADER: &str = "include/mm_malloc.h";

/// clang's resource directory (`<lib>/clang/<version>`) for the libclang at `library`: beside
/// the library as found, beside the file it resolves to, or under the LLVM prefix that
/// installed it. libclang computes it from its own path, and Debian's, which lives in the
/// multiarch directory, computes one that does not exist (`/usr/lib/lib/clang/14.0.6`): so the
/// build passes it to clang explicitly (`-resource-dir`).
///
/// # Errors
/// Which directories were searched, when none holds [`RESOURCE_HEADER`].
pub fn resource_dir(library: &Path, llvm_prefix: Option<&Path>) -> Result<PathBuf, String> {
    let mut lib_dirs: Vec<PathBuf> = Vec::new();
    lib_dirs.extend(library.parent().map(Path::to_path_buf));
    if let Ok(real) = library.canonicalize() {
        lib_dirs.extend(real.parent().map(Path::to_path_buf));
    }
    lib_dirs.extend(llvm_prefix.map(|p| p.join("lib")));
    for dir in &lib_dirs {
        let Ok(versions) = std::fs::read_dir(dir.join("clang")) else { continue };
        let mut found: Vec<PathBuf> = versions
            .flatten()
            .map(|v| v.path())
            .filter(|v| v.join(RESOURCE_HEADER).is_file())
            .collect();
        // By version number ("18" above "9"), not by text.
        let version = |p: &PathBuf| -> Vec<u32> {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.split('.').map(|n| n.parse().unwrap_or(0)).collect()
        };
        found.sort_by_key(version);
        if let Some(newest) = found.pop() {
            return Ok(newest);
        }
    }
    let searched: Vec<String> =
        lib_dirs.iter().map(|d| format!("{}/clang/*/{RESOURCE_HEADER}", d.display())).collect();
    Err(format!("no {}", searched.join(", no ")))
}

/// `llvm-config --prefix`, when there is one.
#[must_use]
pub fn llvm_prefix() -> Option<PathBuf> {
    let out = std::process::Command::new("llvm-config").arg("--prefix").output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
