//! The primitive-driver rules for pagelock's INF, checked on any host, in both `InfVerif` modes.
//!
//! `InfVerif`, run by `cargo make` and `cargo wdk build` on Windows, is the authority on INF
//! syntax. This module checks the rules that make `pagelock.inx` a primitive driver package (no
//! device to match; an architecture-decorated `DefaultInstall` section that copies pagelock.sys
//! and adds a demand-start kernel service), so that a change breaking one of them fails `cargo
//! xtask test` on every host, not only where the WDK is installed.
//!
//! The two flows run `InfVerif` in different modes ([`Mode`]): wdk-build 0.6.0's `infverif` task
//! passes `/w` for a WDM or KMDF driver (`rust-driver-makefile.toml`), cargo-wdk 0.2.0 passes
//! `/u` unless `--target-platform` says otherwise (`src/cli.rs`, `src/actions/build/
//! package_task.rs`, `TargetPlatform::as_infverif_flag`). Microsoft's "Using a Universal INF
//! File" lists what `/u` refuses; `/w` checks `/u` as well and adds driver package isolation
//! ("Porting an INF to follow driver package isolation": every file to DIRID 13, the service
//! binary run from there). [`check`] applies the rules of the mode it is given.
//!
//! The parser reads what the rules need: `[sections]`, `key = value` lines and bare values (the
//! files of a file list), `;` comments outside double quotes, comma-separated fields. Section
//! names, keys and `%string%` tokens compare without case. Line continuations are not handled.

pub mod template;

use std::collections::BTreeMap;

/// The driver image the package installs.
const DRIVER_FILE: &str = "pagelock.sys";
/// The kernel service the package adds; the test app starts and stops it by this name.
const SERVICE_NAME: &str = "pagelock";
/// DIRID 13: the package's own directory in the Driver Store.
const DRIVER_STORE_DIRID: u32 = 13;
/// `ServiceBinary` of the service: the driver, run from the Driver Store.
const SERVICE_BINARY: &str = r"%13%\pagelock.sys";
/// Architecture decorations a `DefaultInstall` section may carry: stampinf's placeholder and
/// what it becomes for the targets windows-drivers-rs builds.
const ARCH_DECORATIONS: [&str; 3] = ["nt$arch$", "ntamd64", "ntarm64"];
/// `SERVICE_KERNEL_DRIVER`.
const SERVICE_KERNEL_DRIVER: u32 = 1;
/// `SERVICE_DEMAND_START`.
const SERVICE_DEMAND_START: u32 = 3;
/// The largest `ErrorControl` value (`SERVICE_ERROR_CRITICAL`).
const SERVICE_ERROR_CRITICAL: u32 = 3;

/// Sections a universal INF may not have, as suffixes of the section name (Microsoft's "Using a
/// Universal INF File": `ClassInstall32`, `DDInstall.CoInstallers`, `DDInstall.FactDef`,
/// `DDInstall.LogConfigOverride`).
const NON_UNIVERSAL_SECTIONS: [&str; 4] =
    ["classinstall32", ".coinstallers", ".factdef", ".logconfigoverride"];

/// Directives a universal INF may not use (the same page).
const NON_UNIVERSAL_DIRECTIVES: [&str; 13] = [
    "BitReg",
    "DelFiles",
    "DelProperty",
    "DelReg",
    "DelService",
    "Ini2Reg",
    "LogConfig",
    "ProfileItems",
    "RegisterDlls",
    "RenFiles",
    "UnregisterDlls",
    "UpdateIniFields",
    "UpdateInis",
];

/// The `InfVerif` mode a Windows flow runs the stamped INF through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `/u`, Universal Driver requirements: `cargo wdk build`'s default.
    Universal,
    /// `/w`, Windows Driver requirements (`/u` and driver package isolation): `cargo make` for a
    /// WDM driver, and `cargo wdk build --target-platform windows`.
    Windows,
}

impl Mode {
    /// Both modes, in the order the checks report them.
    pub const ALL: [Self; 2] = [Self::Windows, Self::Universal];

    /// `InfVerif`'s flag for the mode.
    #[must_use]
    pub const fn flag(self) -> &'static str {
        match self {
            Self::Universal => "/u",
            Self::Windows => "/w",
        }
    }

    /// The flow that runs `InfVerif` in this mode.
    #[must_use]
    pub const fn flow(self) -> &'static str {
        match self {
            Self::Universal => "cargo wdk build",
            Self::Windows => "cargo make",
        }
    }
}

/// Checks an INF (or the INX template it is stamped from) against the primitive-driver rules
/// and the rules of `InfVerif`'s `mode`, and returns one message per broken rule; an empty list
/// means the text passes.
#[must_use]
pub fn check(text: &str, mode: Mode) -> Vec<String> {
    let inf = Inf::parse(text);
    let mut problems = Vec::new();
    check_universal(&inf, &mut problems);
    check_version(&inf, &mut problems);
    if let Some(manufacturer) = inf.section("Manufacturer") {
        problems.push(format!(
            "line {}: a primitive driver has no [Manufacturer] section",
            manufacturer.line
        ));
    }
    check_install(&inf, mode, &mut problems);
    check_uninstall(&inf, &mut problems);
    check_source_disks(&inf, &mut problems);
    check_strings(&inf, &mut problems);
    problems
}

/// One line of a section: `key = value`, or a value on its own (a file of a file list).
struct Line {
    /// 1-based line number in the file.
    number: usize,
    /// The key, trimmed, when the line has an `=` outside quotes.
    key: Option<String>,
    /// The value, trimmed, without its comment.
    value: String,
}

impl Line {
    /// The comma-separated fields of the value, trimmed and unquoted.
    fn fields(&self) -> Vec<String> {
        split_outside_quotes(&self.value, ',').iter().map(|field| unquote(field)).collect()
    }

    /// The first field of the value (empty when there is none).
    fn first_field(&self) -> String {
        self.fields().into_iter().next().unwrap_or_default()
    }

    /// The name a file-list line gives: the key if there is one, else the first field.
    fn entry_name(&self) -> String {
        self.key.as_deref().map_or_else(|| self.first_field(), unquote)
    }
}

/// A section: its name as first written, where it starts, and its lines (sections that
/// appear more than once are merged, as Windows does).
struct Section {
    name: String,
    line: usize,
    lines: Vec<Line>,
}

impl Section {
    /// The lines whose key is `key`.
    fn entries<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Line> {
        self.lines.iter().filter(move |line| line.key.as_deref().is_some_and(|k| same(k, key)))
    }

    /// The first line whose key is `key`.
    fn entry(&self, key: &str) -> Option<&Line> {
        self.lines.iter().find(|line| line.key.as_deref().is_some_and(|k| same(k, key)))
    }
}

/// A parsed INF: its sections by lowercase name.
struct Inf {
    sections: BTreeMap<String, Section>,
}

impl Inf {
    fn parse(text: &str) -> Self {
        let mut sections: BTreeMap<String, Section> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (index, raw) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let number = index + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(header) = line.strip_prefix('[') {
                let name = header.split(']').next().unwrap_or_default().trim().to_owned();
                let key = name.to_ascii_lowercase();
                sections.entry(key.clone()).or_insert(Section {
                    name,
                    line: number,
                    lines: Vec::new(),
                });
                current = Some(key);
                continue;
            }
            // Lines before the first section belong to no section; Windows ignores them too.
            let Some(section) = current.as_ref().and_then(|key| sections.get_mut(key)) else {
                continue;
            };
            let (key, value) = find_outside_quotes(line, '=').map_or((None, line), |at| {
                (Some(line[..at].trim().to_owned()), line[at + 1..].trim())
            });
            section.lines.push(Line { number, key, value: value.to_owned() });
        }
        Self { sections }
    }

    /// The section called `name`, compared without case.
    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.get(&name.to_ascii_lowercase())
    }

    /// The sections called `base` or `base.<anything>`.
    fn sections_named(&self, base: &str) -> impl Iterator<Item = &Section> {
        let base = base.to_ascii_lowercase();
        self.sections.iter().filter_map(move |(key, section)| {
            let rest = key.strip_prefix(&base)?;
            (rest.is_empty() || rest.starts_with('.')).then_some(section)
        })
    }

    /// Replaces `%string%` tokens with their `[Strings]` values (unknown tokens stay as written).
    fn expand(&self, text: &str) -> String {
        let mut expanded = text.to_owned();
        for token in tokens(text) {
            if let Some(value) = self.string(token) {
                expanded = expanded.replace(&format!("%{token}%"), &value);
            }
        }
        expanded
    }

    /// The value of `token` in a `[Strings]` section.
    fn string(&self, token: &str) -> Option<String> {
        self.sections_named("Strings")
            .find_map(|strings| strings.entry(token))
            .map(Line::first_field)
    }
}

/// How an install or uninstall section (`DefaultInstall...`, `DefaultUninstall...`) is named.
enum Decoration {
    /// Not a section of that family.
    Unrelated,
    /// Decorated for an architecture: the entry point itself (`base` is true) or one of its
    /// subsections such as `.Services`.
    Architecture { base: bool },
    /// Undecorated, or decorated for no particular architecture (`.NT`).
    Missing,
}

/// Classifies `name` against the family `prefix` (`defaultinstall`, `defaultuninstall`).
fn decoration(name: &str, prefix: &str) -> Decoration {
    let lower = name.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix(prefix) else {
        return Decoration::Unrelated;
    };
    if rest.is_empty() {
        return Decoration::Missing;
    }
    let Some(rest) = rest.strip_prefix('.') else {
        return Decoration::Unrelated;
    };
    let mut parts = rest.split('.');
    let platform = parts.next().unwrap_or_default();
    if ARCH_DECORATIONS.contains(&platform) {
        Decoration::Architecture { base: parts.next().is_none() }
    } else {
        Decoration::Missing
    }
}

/// The entry-point sections of a family that are decorated for an architecture; reports the
/// sections of the family that are not.
fn decorated_entry_points<'a>(
    inf: &'a Inf,
    prefix: &str,
    problems: &mut Vec<String>,
) -> Vec<&'a Section> {
    let mut entry_points = Vec::new();
    for section in inf.sections.values() {
        match decoration(&section.name, prefix) {
            Decoration::Unrelated => {}
            Decoration::Architecture { base } => {
                if base {
                    entry_points.push(section);
                }
            }
            Decoration::Missing => problems.push(format!(
                "line {}: [{}] is not decorated for an architecture (write .NT$ARCH$)",
                section.line, section.name
            )),
        }
    }
    entry_points
}

/// No section or directive that Microsoft's "Using a Universal INF File" rules out; `/u` and `/w`
/// both refuse them.
fn check_universal(inf: &Inf, problems: &mut Vec<String>) {
    for section in inf.sections.values() {
        let name = section.name.to_ascii_lowercase();
        if NON_UNIVERSAL_SECTIONS.iter().any(|suffix| name.ends_with(suffix)) {
            problems.push(format!(
                "line {}: [{}] is not allowed in a universal INF (InfVerif /u and /w)",
                section.line, section.name
            ));
        }
        for line in &section.lines {
            let Some(key) = line.key.as_deref() else { continue };
            if NON_UNIVERSAL_DIRECTIVES.iter().any(|directive| same(key, directive)) {
                problems.push(format!(
                    "line {}: {key} is not allowed in a universal INF (InfVerif /u and /w)",
                    line.number
                ));
            }
        }
    }
}

fn check_version(inf: &Inf, problems: &mut Vec<String>) {
    let Some(version) = inf.section("Version") else {
        problems.push("there is no [Version] section".to_owned());
        return;
    };
    match version.entry("Signature") {
        Some(line) if same(&unquote(&line.value), "$WINDOWS NT$") => {}
        Some(line) => problems.push(format!(
            "line {}: [Version] Signature must be \"$WINDOWS NT$\", not {}",
            line.number, line.value
        )),
        None => problems.push("[Version] has no Signature".to_owned()),
    }
    for key in ["Provider", "Class", "ClassGuid"] {
        if version.entry(key).is_none_or(|line| unquote(&line.value).is_empty()) {
            problems.push(format!("[Version] needs a {key}"));
        }
    }
    if let Some(line) = version.entry("ClassGuid") {
        let guid = unquote(&line.value);
        if !guid.is_empty() && !is_guid(&guid) {
            problems
                .push(format!("line {}: [Version] ClassGuid {guid} is not a GUID", line.number));
        }
    }
    if version.entry("PnpLockdown").and_then(|line| number(&line.value)) != Some(1) {
        problems.push("[Version] needs PnpLockdown = 1".to_owned());
    }
}

fn check_install(inf: &Inf, mode: Mode, problems: &mut Vec<String>) {
    let entry_points = decorated_entry_points(inf, "defaultinstall", problems);
    if entry_points.is_empty() {
        problems.push("there is no [DefaultInstall.NT$ARCH$] section".to_owned());
    }
    for install in entry_points {
        check_copy_files(inf, install, mode, problems);
        let services_name = format!("{}.Services", install.name);
        match inf.section(&services_name) {
            Some(services) => check_services(inf, services, mode, problems),
            None => problems.push(format!("there is no [{services_name}] section")),
        }
    }
}

/// The install section copies pagelock.sys, and in `/w` mode everything it copies goes to
/// DIRID 13.
fn check_copy_files(inf: &Inf, install: &Section, mode: Mode, problems: &mut Vec<String>) {
    let isolated = mode == Mode::Windows;
    let mut copied = Vec::new();
    let mut any = false;
    for line in install.entries("CopyFiles") {
        any = true;
        for target in line.fields().into_iter().filter(|target| !target.is_empty()) {
            if let Some(file) = target.strip_prefix('@') {
                if isolated {
                    check_destination(inf, None, line.number, problems);
                }
                copied.push(file.to_ascii_lowercase());
                continue;
            }
            let Some(list) = inf.section(&target) else {
                problems.push(format!(
                    "line {}: CopyFiles names [{target}], which does not exist",
                    line.number
                ));
                continue;
            };
            if isolated {
                check_destination(inf, Some(list), line.number, problems);
            }
            copied.extend(list.lines.iter().map(|file| file.entry_name().to_ascii_lowercase()));
        }
    }
    if !any {
        problems.push(format!("line {}: [{}] has no CopyFiles", install.line, install.name));
    } else if !copied.iter().any(|file| same(file, DRIVER_FILE)) {
        problems.push(format!("[{}] does not copy {DRIVER_FILE}", install.name));
    }
}

/// The files of `list` (or a single `@file` when `list` is None) go to the Driver Store.
fn check_destination(inf: &Inf, list: Option<&Section>, at: usize, problems: &mut Vec<String>) {
    let destinations = inf.section("DestinationDirs");
    let specific = list.and_then(|list| destinations?.entry(&list.name));
    let line = specific.or_else(|| destinations?.entry("DefaultDestDir"));
    let what = list.map_or_else(|| "the file".to_owned(), |list| format!("[{}]", list.name));
    match line.map(|line| (line, number(&line.first_field()))) {
        Some((_, Some(DRIVER_STORE_DIRID))) => {}
        Some((line, _)) => problems.push(format!(
            "line {}: {what} is copied to DIRID {}, not {DRIVER_STORE_DIRID} (the Driver Store)",
            line.number,
            line.first_field()
        )),
        None => problems.push(format!(
            "line {at}: [DestinationDirs] has no entry for {what} and no DefaultDestDir"
        )),
    }
}

/// The services section adds the pagelock kernel service, demand-start, run from the Driver Store
/// in `/w` mode.
fn check_services(inf: &Inf, services: &Section, mode: Mode, problems: &mut Vec<String>) {
    let add = services
        .entries("AddService")
        .find(|line| same(&inf.expand(&line.first_field()), SERVICE_NAME));
    let Some(add) = add else {
        problems
            .push(format!("[{}] has no AddService for the {SERVICE_NAME} service", services.name));
        return;
    };
    let install_name = add.fields().get(2).cloned().unwrap_or_default();
    let Some(install) = inf.section(&install_name).filter(|_| !install_name.is_empty()) else {
        problems.push(format!(
            "line {}: AddService names no existing service-install section ({install_name:?})",
            add.number
        ));
        return;
    };
    let value = |key: &str| install.entry(key).map(Line::first_field);
    let at = install.line;
    if value("ServiceType").as_deref().and_then(number) != Some(SERVICE_KERNEL_DRIVER) {
        problems
            .push(format!("line {at}: [{}] needs ServiceType = 1 (kernel driver)", install.name));
    }
    if value("StartType").as_deref().and_then(number) != Some(SERVICE_DEMAND_START) {
        problems.push(format!("line {at}: [{}] needs StartType = 3 (demand start)", install.name));
    }
    if value("ErrorControl").as_deref().and_then(number).is_none_or(|n| n > SERVICE_ERROR_CRITICAL)
    {
        problems.push(format!("line {at}: [{}] needs an ErrorControl (0 to 3)", install.name));
    }
    let binary = value("ServiceBinary");
    let binary_ok = binary.is_some_and(|binary| {
        same(&binary, SERVICE_BINARY)
            || mode == Mode::Universal && binary.to_ascii_lowercase().ends_with(r"\pagelock.sys")
    });
    if !binary_ok {
        problems
            .push(format!("line {at}: [{}] needs ServiceBinary = {SERVICE_BINARY}", install.name));
    }
}

/// A `DefaultUninstall` section is only allowed decorated and with `LegacyUninstall = 1`, which
/// makes Windows 10 version 1903 and later ignore it.
fn check_uninstall(inf: &Inf, problems: &mut Vec<String>) {
    for uninstall in decorated_entry_points(inf, "defaultuninstall", problems) {
        if uninstall.entry("LegacyUninstall").and_then(|line| number(&line.value)) != Some(1) {
            problems.push(format!(
                "line {}: [{}] needs LegacyUninstall = 1, or must go",
                uninstall.line, uninstall.name
            ));
        }
    }
}

/// pagelock.sys is listed in `[SourceDisksFiles]`, on a disk that `[SourceDisksNames]` defines.
fn check_source_disks(inf: &Inf, problems: &mut Vec<String>) {
    let disks: Vec<String> = inf
        .sections_named("SourceDisksNames")
        .flat_map(|section| section.lines.iter().filter_map(|line| line.key.clone()))
        .collect();
    if disks.is_empty() {
        problems.push("[SourceDisksNames] defines no disk".to_owned());
    }
    let file = inf.sections_named("SourceDisksFiles").find_map(|section| {
        section.lines.iter().find(|line| same(&line.entry_name(), DRIVER_FILE))
    });
    match file {
        None => problems.push(format!("[SourceDisksFiles] does not list {DRIVER_FILE}")),
        Some(line) => {
            let disk = line.first_field();
            if !disks.iter().any(|defined| same(defined, &disk)) {
                problems.push(format!(
                    "line {}: {DRIVER_FILE} is on disk {disk:?}, which [SourceDisksNames] \
                     does not define",
                    line.number
                ));
            }
        }
    }
}

/// Every `%token%` outside `[Strings]` is defined in `[Strings]`; `%13%`-style DIRIDs and `%%` are
/// not tokens.
fn check_strings(inf: &Inf, problems: &mut Vec<String>) {
    let lines = inf
        .sections
        .iter()
        .filter(|(key, _)| *key != "strings" && !key.starts_with("strings."))
        .flat_map(|(_, section)| &section.lines);
    for line in lines {
        let text = format!("{} {}", line.key.as_deref().unwrap_or_default(), line.value);
        for token in tokens(&text) {
            if inf.string(token).is_none() {
                problems
                    .push(format!("line {}: %{token}% is not defined in [Strings]", line.number));
            }
        }
    }
}

/// The `%name%` tokens of `text`, without the DIRIDs (`%13%`) and the escaped `%%`.
fn tokens(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('%') else {
            break;
        };
        let token = &after[..end];
        if !token.is_empty() && !token.bytes().all(|byte| byte.is_ascii_digit()) {
            found.push(token);
        }
        rest = &after[end + 1..];
    }
    found
}

/// `line` up to its `;` comment, if any (a `;` inside double quotes is text).
fn strip_comment(line: &str) -> &str {
    find_outside_quotes(line, ';').map_or(line, |at| &line[..at])
}

/// The byte offset of the first `wanted` outside double quotes.
fn find_outside_quotes(text: &str, wanted: char) -> Option<usize> {
    let mut quoted = false;
    for (at, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == wanted && !quoted {
            return Some(at);
        }
    }
    None
}

/// `text` split at every `separator` outside double quotes.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = find_outside_quotes(rest, separator) {
        parts.push(&rest[..at]);
        rest = &rest[at + separator.len_utf8()..];
    }
    parts.push(rest);
    parts
}

/// `text` trimmed, without surrounding double quotes, with `""` inside read as `"`.
fn unquote(text: &str) -> String {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .map_or_else(|| text.to_owned(), |inner| inner.replace("\"\"", "\""))
}

/// A number as INF files write them: decimal, or hexadecimal with `0x`.
fn number(text: &str) -> Option<u32> {
    let text = unquote(text);
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .map_or_else(|| text.parse().ok(), |hex| u32::from_str_radix(hex, 16).ok())
}

/// `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` with hexadecimal digits.
fn is_guid(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return false;
    };
    let groups: Vec<&str> = inner.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
            group.len() == len && group.bytes().all(|byte| byte.is_ascii_hexdigit())
        })
}

/// Case-insensitive equality, as INF names and keys compare.
const fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::{Mode, check};

    /// The template `cargo make` and `cargo wdk build` stamp into pagelock.inf.
    const INX: &str = include_str!("../../pagelock.inx");

    /// The problems `check` finds in `text` in `/w` mode (`cargo make`'s), asserting that one
    /// of them mentions `needle`.
    #[track_caller]
    fn assert_reported(text: &str, needle: &str) {
        assert_reported_in(text, Mode::Windows, needle);
    }

    /// [`assert_reported`] in `InfVerif`'s `mode`.
    #[track_caller]
    fn assert_reported_in(text: &str, mode: Mode, needle: &str) {
        let problems = check(text, mode);
        assert!(
            problems.iter().any(|problem| problem.contains(needle)),
            "expected a problem mentioning {needle:?}, got {problems:#?}"
        );
    }

    /// The template with the one `old` text replaced; a mutation that no longer applies to the
    /// template fails here instead of testing nothing.
    #[track_caller]
    fn replaced(old: &str, new: &str) -> String {
        assert_eq!(INX.matches(old).count(), 1, "{old:?} should occur once in pagelock.inx");
        INX.replacen(old, new, 1)
    }

    /// The template with the value of `key` in `[section]` set to `value`, or that line removed
    /// when `value` is None. Panics unless exactly one line matches.
    #[track_caller]
    fn edited(section: &str, key: &str, value: Option<&str>) -> String {
        edited_in(INX, section, key, value)
    }

    /// [`edited`], applied to `text` instead of the template.
    #[track_caller]
    fn edited_in(text: &str, section: &str, key: &str, value: Option<&str>) -> String {
        let mut current = String::new();
        let mut matched = 0;
        let mut out = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[') {
                current = name.trim_end_matches(']').to_owned();
            }
            let line_key = trimmed.split('=').next().unwrap_or_default().trim();
            if current.eq_ignore_ascii_case(section)
                && trimmed.contains('=')
                && line_key.eq_ignore_ascii_case(key)
            {
                matched += 1;
                if let Some(value) = value {
                    out.push(format!("{key} = {value}"));
                }
                continue;
            }
            out.push(line.to_owned());
        }
        assert_eq!(matched, 1, "[{section}] {key} should occur once");
        out.join("\n")
    }

    /// `check` in both modes finds nothing in `text`.
    #[track_caller]
    fn assert_passes(text: &str) {
        for mode in Mode::ALL {
            assert_eq!(check(text, mode), Vec::<String>::new(), "InfVerif {}", mode.flag());
        }
    }

    #[test]
    fn pagelock_inx_passes_in_both_modes() {
        assert_passes(INX);
    }

    #[test]
    fn non_universal_directives_are_reported_in_both_modes() {
        let text = format!("{INX}\n[PageLock.Extra]\nRegisterDlls = Whatever\n");
        for mode in Mode::ALL {
            assert_reported_in(&text, mode, "RegisterDlls is not allowed in a universal INF");
        }
        let text = replaced("CopyFiles = PageLock.CopyFiles", "DelFiles = PageLock.CopyFiles");
        assert_reported_in(&text, Mode::Universal, "DelFiles is not allowed");
    }

    #[test]
    fn non_universal_sections_are_reported_in_both_modes() {
        let text = format!("{INX}\n[DefaultInstall.NT$ARCH$.CoInstallers]\nAddReg = X\n");
        for mode in Mode::ALL {
            assert_reported_in(&text, mode, "CoInstallers] is not allowed in a universal INF");
        }
        let text = format!("{INX}\n[ClassInstall32]\nAddReg = X\n");
        assert_reported_in(&text, Mode::Universal, "[ClassInstall32] is not allowed");
    }

    #[test]
    fn package_isolation_is_checked_in_windows_mode_only() {
        let text = edited("DestinationDirs", "PageLock.CopyFiles", Some("12"));
        assert_reported_in(&text, Mode::Windows, "copied to DIRID 12, not 13");
        assert_eq!(check(&text, Mode::Universal), Vec::<String>::new());
        let text = edited("PageLock.Service", "ServiceBinary", Some(r"%12%\pagelock.sys"));
        assert_reported_in(&text, Mode::Windows, r"ServiceBinary = %13%\pagelock.sys");
        assert_eq!(check(&text, Mode::Universal), Vec::<String>::new());
    }

    #[test]
    fn the_modes_are_the_flows_flags() {
        assert_eq!((Mode::Windows.flag(), Mode::Windows.flow()), ("/w", "cargo make"));
        assert_eq!((Mode::Universal.flag(), Mode::Universal.flow()), ("/u", "cargo wdk build"));
    }

    #[test]
    fn the_stamped_inf_passes() {
        let stamped = edited("Version", "DriverVer", Some("11/23/2026,12.34.56.789"))
            .replace("$ARCH$", "amd64");
        assert_passes(&stamped);
    }

    #[test]
    fn the_inf_stamped_for_arm64_passes() {
        let stamped = edited("Version", "DriverVer", Some("11/23/2026,12.34.56.789"))
            .replace("$ARCH$", "arm64");
        assert!(stamped.contains("[DefaultInstall.NTarm64]"));
        assert_passes(&stamped);
    }

    #[test]
    fn sections_keys_and_tokens_compare_without_case() {
        assert_passes(&INX.to_ascii_lowercase());
        assert_passes(&INX.to_ascii_uppercase());
    }

    #[test]
    fn comments_end_lines_except_inside_quotes() {
        let text = edited("PageLock.Service", "Description", Some("\"a; %Nowhere%\""));
        assert_reported(&text, "%Nowhere% is not defined");
        let text =
            edited("PageLock.Service", "Description", Some("%ServiceDescription% ; %Nowhere%"));
        assert_passes(&text);
    }

    #[test]
    fn a_missing_version_section_is_reported() {
        assert_reported(&replaced("[Version]", "[Versions]"), "no [Version] section");
    }

    #[test]
    fn a_wrong_signature_is_reported() {
        let text = edited("Version", "Signature", Some("\"$CHICAGO$\""));
        assert_reported(&text, "Signature must be \"$WINDOWS NT$\"");
        assert_reported(&edited("Version", "Signature", None), "has no Signature");
    }

    #[test]
    fn a_missing_provider_is_reported() {
        assert_reported(&edited("Version", "Provider", None), "needs a Provider");
        assert_reported(&edited("Version", "Provider", Some("\"\"")), "needs a Provider");
    }

    #[test]
    fn a_missing_class_is_reported() {
        assert_reported(&edited("Version", "Class", None), "needs a Class");
    }

    #[test]
    fn a_missing_or_malformed_class_guid_is_reported() {
        assert_reported(&edited("Version", "ClassGuid", None), "needs a ClassGuid");
        let text = edited("Version", "ClassGuid", Some("{4d36e97d-e325-11ce-bfc1}"));
        assert_reported(&text, "is not a GUID");
    }

    #[test]
    fn pnp_lockdown_must_be_one() {
        assert_reported(&edited("Version", "PnpLockdown", None), "PnpLockdown = 1");
        assert_reported(&edited("Version", "PnpLockdown", Some("0")), "PnpLockdown = 1");
    }

    #[test]
    fn a_manufacturer_section_is_reported() {
        let text = format!("{INX}\n[Manufacturer]\n%ProviderName% = Models,NT$ARCH$\n");
        assert_reported(&text, "no [Manufacturer] section");
    }

    #[test]
    fn a_missing_default_install_is_reported() {
        let text = replaced("[DefaultInstall.NT$ARCH$]", "[Install.NT$ARCH$]");
        assert_reported(&text, "no [DefaultInstall.NT$ARCH$] section");
    }

    #[test]
    fn an_undecorated_default_install_is_reported() {
        let text = replaced("[DefaultInstall.NT$ARCH$]", "[DefaultInstall]");
        assert_reported(&text, "[DefaultInstall] is not decorated");
        let text = replaced("[DefaultInstall.NT$ARCH$]", "[DefaultInstall.NT]");
        assert_reported(&text, "[DefaultInstall.NT] is not decorated");
        let text = format!("{INX}\n[DefaultInstall.Services]\nAddService = pagelock,,X\n");
        assert_reported(&text, "[DefaultInstall.Services] is not decorated");
    }

    #[test]
    fn the_stamped_decoration_is_accepted() {
        let text = INX.replace("NT$ARCH$", "NTamd64");
        assert_passes(&text);
    }

    #[test]
    fn a_missing_copy_files_is_reported() {
        assert_reported(&edited("DefaultInstall.NT$ARCH$", "CopyFiles", None), "has no CopyFiles");
    }

    #[test]
    fn copy_files_must_name_an_existing_section() {
        let text = edited("DefaultInstall.NT$ARCH$", "CopyFiles", Some("Missing.CopyFiles"));
        assert_reported(&text, "names [Missing.CopyFiles], which does not exist");
    }

    #[test]
    fn copy_files_must_copy_the_driver() {
        let text =
            replaced("[PageLock.CopyFiles]\npagelock.sys", "[PageLock.CopyFiles]\nother.sys");
        assert_reported(&text, "does not copy pagelock.sys");
    }

    #[test]
    fn copied_files_must_go_to_the_driver_store() {
        let text = edited("DestinationDirs", "PageLock.CopyFiles", Some("12"));
        assert_reported(&text, "copied to DIRID 12, not 13");
    }

    #[test]
    fn the_default_destination_applies_without_a_specific_one() {
        let text = edited("DestinationDirs", "PageLock.CopyFiles", None);
        assert_passes(&text);
        let text = edited_in(&text, "DestinationDirs", "DefaultDestDir", Some("12"));
        assert_reported(&text, "copied to DIRID 12, not 13");
        let text = edited_in(&text, "DestinationDirs", "DefaultDestDir", None);
        assert_reported(&text, "has no entry for [PageLock.CopyFiles] and no DefaultDestDir");
    }

    #[test]
    fn a_missing_services_section_is_reported() {
        let text = replaced("[DefaultInstall.NT$ARCH$.Services]", "[Services]");
        assert_reported(&text, "no [DefaultInstall.NT$ARCH$.Services] section");
    }

    #[test]
    fn the_service_must_be_called_pagelock() {
        let text = edited(
            "DefaultInstall.NT$ARCH$.Services",
            "AddService",
            Some("other,, PageLock.Service"),
        );
        assert_reported(&text, "no AddService for the pagelock service");
    }

    #[test]
    fn add_service_must_name_its_install_section() {
        let text = edited("DefaultInstall.NT$ARCH$.Services", "AddService", Some("pagelock,,"));
        assert_reported(&text, "names no existing service-install section");
    }

    #[test]
    fn the_service_must_be_a_kernel_driver() {
        let text = edited("PageLock.Service", "ServiceType", Some("2"));
        assert_reported(&text, "ServiceType = 1");
    }

    #[test]
    fn the_service_must_be_demand_start() {
        let text = edited("PageLock.Service", "StartType", Some("1"));
        assert_reported(&text, "StartType = 3");
    }

    #[test]
    fn the_service_needs_an_error_control() {
        assert_reported(&edited("PageLock.Service", "ErrorControl", None), "ErrorControl");
        assert_reported(&edited("PageLock.Service", "ErrorControl", Some("7")), "ErrorControl");
    }

    #[test]
    fn the_service_binary_must_be_in_the_driver_store() {
        let text = edited("PageLock.Service", "ServiceBinary", Some(r"%12%\pagelock.sys"));
        assert_reported(&text, r"ServiceBinary = %13%\pagelock.sys");
    }

    #[test]
    fn source_disks_files_must_list_the_driver() {
        let text = edited("SourceDisksFiles", "pagelock.sys", None);
        assert_reported(&text, "[SourceDisksFiles] does not list pagelock.sys");
    }

    #[test]
    fn the_source_disk_must_be_defined() {
        let text = edited("SourceDisksFiles", "pagelock.sys", Some("2,,"));
        assert_reported(&text, "which [SourceDisksNames] does not define");
        assert_reported(&edited("SourceDisksNames", "1", None), "defines no disk");
    }

    #[test]
    fn a_default_uninstall_without_legacy_uninstall_is_reported() {
        let text = format!("{INX}\n[DefaultUninstall.NT$ARCH$]\nDelFiles = PageLock.CopyFiles\n");
        assert_reported(&text, "needs LegacyUninstall = 1");
    }

    #[test]
    fn an_undecorated_default_uninstall_is_reported() {
        let text = format!("{INX}\n[DefaultUninstall]\nLegacyUninstall = 1\n");
        assert_reported(&text, "[DefaultUninstall] is not decorated");
    }

    #[test]
    fn a_legacy_default_uninstall_passes() {
        let text = format!("{INX}\n[DefaultUninstall.NT$ARCH$]\nLegacyUninstall = 1\n");
        assert_passes(&text);
    }

    #[test]
    fn an_undefined_string_token_is_reported() {
        let text = edited("Strings", "ProviderName", None);
        assert_reported(&text, "%ProviderName% is not defined in [Strings]");
        let text = edited("PageLock.Service", "DisplayName", Some("%Nowhere%"));
        assert_reported(&text, "%Nowhere% is not defined in [Strings]");
    }

    #[test]
    fn dirids_and_escaped_percents_are_not_tokens() {
        let text = edited("PageLock.Service", "Description", Some("\"100%% %13% ok\""));
        assert_passes(&text);
    }
}
