//! Where the installed driver package is, from the service's binary path.
//!
//! The INF copies `pagelock.sys` to DIRID 13, the package's own folder in the Driver Store, and
//! the service runs it from there; the package's INF sits in the same folder under its original
//! name. So `uninstall` needs no INF argument: the service's `ImagePath` leads to the package.

/// The INF's file name inside its Driver Store folder.
pub const INF_NAME: &str = "pagelock.inf";

/// The full path of `pagelock.inf` next to the service binary `image_path`.
///
/// `image_path` is what `QueryServiceConfigW` reports (`\SystemRoot\...`, `System32\...` relative to the Windows
/// folder, `\??\C:\...`, or `C:\...`); `windows_dir` is the Windows folder (`C:\Windows`).
/// `None` when the path names no folder.
#[must_use]
pub fn package_inf(image_path: &str, windows_dir: &str) -> Option<String> {
    let image = image_path.trim().trim_matches('"');
    let windows_dir = windows_dir.trim_end_matches('\\');
    let full = match (strip_prefix_ignore_case(image, r"\SystemRoot\"), image.strip_prefix(r"\??\"))
    {
        (Some(rest), _) => format!(r"{windows_dir}\{rest}"),
        (None, Some(rest)) => rest.to_owned(),
        (None, None) if image.starts_with('\\') || image.get(1..2) == Some(":") => image.to_owned(),
        (None, None) => format!(r"{windows_dir}\{image}"),
    };
    let (folder, file) = full.rsplit_once('\\')?;
    (!folder.is_empty() && !file.is_empty()).then(|| format!(r"{folder}\{INF_NAME}"))
}

/// Whether a folder path is inside the Driver Store's file repository.
#[must_use]
pub fn in_driver_store(path: &str) -> bool {
    path.to_ascii_lowercase().contains(r"\system32\driverstore\filerepository\")
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = r"System32\DriverStore\FileRepository\pagelock.inf_amd64_3f1c0d2a9b8e7f60";

    #[test]
    fn system_root_paths_resolve_to_the_windows_folder() {
        let image = format!(r"\SystemRoot\{STORE}\pagelock.sys");
        let inf = package_inf(&image, r"C:\Windows").expect("a folder");
        assert_eq!(inf, format!(r"C:\Windows\{STORE}\pagelock.inf"));
        assert!(in_driver_store(&inf));
        let lower = format!(r"\systemroot\{STORE}\pagelock.sys");
        assert_eq!(package_inf(&lower, r"C:\Windows\"), Some(inf));
    }

    #[test]
    fn relative_nt_and_drive_paths_are_understood() {
        let relative = format!(r"{STORE}\pagelock.sys");
        assert_eq!(
            package_inf(&relative, r"D:\Win"),
            Some(format!(r"D:\Win\{STORE}\pagelock.inf"))
        );
        let nt = format!(r"\??\C:\Windows\{STORE}\pagelock.sys");
        assert_eq!(
            package_inf(&nt, r"C:\Windows"),
            Some(format!(r"C:\Windows\{STORE}\pagelock.inf"))
        );
        let drive = format!(r#""C:\Windows\{STORE}\pagelock.sys""#);
        assert_eq!(
            package_inf(&drive, r"C:\Windows"),
            Some(format!(r"C:\Windows\{STORE}\pagelock.inf"))
        );
    }

    #[test]
    fn a_driver_outside_the_store_is_recognised() {
        let inf = package_inf(r"\SystemRoot\System32\drivers\pagelock.sys", r"C:\Windows");
        assert_eq!(inf.as_deref(), Some(r"C:\Windows\System32\drivers\pagelock.inf"));
        assert!(!in_driver_store(inf.as_deref().unwrap_or_default()));
        assert_eq!(package_inf("pagelock.sys", ""), None);
    }
}
