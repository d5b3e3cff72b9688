//! Kernel-image checks (`check-pe`) and the fixups that make an lld-link image match what
//! link.exe /DRIVER produces: section flags, then the checksum.

use std::{mem::offset_of, path::Path};

use anyhow::{Context, Result};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use object::{
    LittleEndian as LE, Object,
    pe::{
        IMAGE_DIRECTORY_ENTRY_DEBUG, IMAGE_DIRECTORY_ENTRY_EXCEPTION, IMAGE_DIRECTORY_ENTRY_EXPORT,
        IMAGE_DIRECTORY_ENTRY_IAT, IMAGE_DIRECTORY_ENTRY_IMPORT,
        IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE, IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
        IMAGE_DLLCHARACTERISTICS_NX_COMPAT, IMAGE_FILE_MACHINE_AMD64, IMAGE_SCN_CNT_CODE,
        IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_DISCARDABLE, IMAGE_SCN_MEM_EXECUTE,
        IMAGE_SCN_MEM_NOT_PAGED, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE, IMAGE_SUBSYSTEM_NATIVE,
        ImageOptionalHeader64, ImageRuntimeFunctionEntry, ImageSectionHeader,
    },
    pod,
    read::pe::{ImageNtHeaders, PeFile64},
};

use crate::routines;

const PAGE_SIZE: u64 = 4096;

/// The footprint budget of pagelock.sys (release build).
#[derive(Clone, Copy)]
pub struct Budget {
    /// Most resident pages when idle.
    pub resident_pages: u64,
    /// Most bytes of resident code (`.text`).
    pub resident_code: u64,
    /// Least share, in percent, of the driver's code bytes that are pageable or discardable.
    pub pageable_code_percent: u64,
}

/// Resident code of the release image: the DPC routine, the queue's callbacks that run with no
/// handle's lock behind them, the spin lock's acquire and release, the completion path and the
/// panic handler (518 bytes when the budget became 4 pages), and the performance counter's
/// reading, which the DPC makes to expire waits at the first tick at or after their timeout
/// (32 bytes), and the dispatch trampoline with the release of its rundown reference (96
/// bytes): once the reference is released, unload may free the image, so the way back to the
/// I/O manager must not fault on a trimmed page. Code that must be resident is added only with
/// a reason; raise this figure in the same change, with that reason.
pub const RESIDENT_CODE_BYTES: u64 = 614;

/// pagelock's own budget: with W^X, as HVCI demands, 4 pages is the floor (the headers, one
/// executable page, one read-only page, one writable page).
pub const PAGELOCK_BUDGET: Budget =
    Budget { resident_pages: 4, resident_code: RESIDENT_CODE_BYTES, pageable_code_percent: 90 };

/// HVCI maps each page of a kernel image either writable or executable, never both: a section
/// must start on a page of its own (Driver Verifier's code-integrity check 0x2004).
const HVCI_SECTION_ALIGNMENT: u32 = 0x1000;

/// Names of the checks the tests refer to.
mod rule {
    pub const NX_COMPAT: &str = "NX compatible (HVCI)";
    pub const DYNAMIC_BASE: &str = "dynamic base (HVCI)";
    pub const FORCE_INTEGRITY: &str = "FORCE_INTEGRITY: signature checked at load (HVCI)";
    pub const NO_WX: &str = "no writable and executable section (HVCI)";
    pub const ALIGNMENT: &str = "section alignment a multiple of 0x1000 (HVCI)";
    pub const IMPORTS_NX: &str = "import directory in no executable section (HVCI)";
    pub const IAT_NX: &str = "import address table in no executable section (HVCI)";
    pub const EXCEPTION_TABLE: &str = "exception table sorted, in one resident read-only section";
    pub const BUDGET_PAGES: &str = "budget: resident image";
    pub const BUDGET_CODE: &str = "budget: resident code";
    pub const BUDGET_PAGEABLE: &str = "budget: code pageable or discardable";
}

/// One section as the checks see it.
struct Section {
    name: String,
    header_offset: usize,
    rva: u64,
    virtual_size: u64,
    characteristics: u32,
    /// One of the trailing run of discardable sections, which is what the kernel frees after
    /// `DriverEntry` (`MmFreeDriverInitialization` walks the table backwards while the sections
    /// are discardable). A discardable section anywhere else stays resident.
    discarded: bool,
}

impl Section {
    const fn has(&self, flags: u32) -> bool {
        self.characteristics & flags == flags
    }
    fn pageable(&self) -> bool {
        self.name.starts_with("PAGE")
    }
    const fn discarded(&self) -> bool {
        self.discarded
    }
    fn resident(&self) -> bool {
        !self.pageable() && !self.discarded()
    }
    const fn code(&self) -> bool {
        self.has(IMAGE_SCN_CNT_CODE)
    }
    const fn pages(&self) -> u64 {
        self.virtual_size.div_ceil(PAGE_SIZE)
    }
    fn place(&self) -> &'static str {
        if self.pageable() {
            "pageable"
        } else if self.discarded() {
            "discarded"
        } else {
            "resident"
        }
    }
}

fn sections(data: &[u8]) -> Result<Vec<Section>> {
    let pe = PeFile64::parse(data).context("not a 64-bit PE image")?;
    let base = data.as_ptr() as usize;
    let mut sections: Vec<Section> = pe
        .section_table()
        .iter()
        .map(|s| Section {
            name: String::from_utf8_lossy(s.raw_name()).trim_end_matches('\0').to_owned(),
            header_offset: std::ptr::from_ref(s) as usize - base,
            rva: u64::from(s.virtual_address.get(LE)),
            virtual_size: u64::from(s.virtual_size.get(LE)),
            characteristics: s.characteristics.get(LE),
            discarded: false,
        })
        .collect();
    mark_trailing_discardable(&mut sections);
    Ok(sections)
}

/// Marks the trailing run of discardable sections, the only ones the kernel frees.
fn mark_trailing_discardable(sections: &mut [Section]) {
    for section in sections.iter_mut().rev() {
        if !section.has(IMAGE_SCN_MEM_DISCARDABLE) {
            break;
        }
        section.discarded = true;
    }
}

/// Offset of the optional header in the file.
fn optional_header_offset(data: &[u8]) -> Result<usize> {
    let pe = PeFile64::parse(data).context("not a 64-bit PE image")?;
    let optional = std::ptr::from_ref(pe.nt_headers().optional_header()) as usize;
    Ok(optional - data.as_ptr() as usize)
}

/// Offset of the optional header's `CheckSum` field in the file.
fn checksum_offset(data: &[u8]) -> Result<usize> {
    Ok(optional_header_offset(data)? + offset_of!(ImageOptionalHeader64, check_sum))
}

/// The PE checksum as `CheckSumMappedFile` computes it: a 16-bit one's-complement style sum
/// of the file with the checksum field taken as zero, plus the file length.
#[must_use]
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in data.chunks(2).enumerate() {
        let at = i * 2;
        if at >= checksum_offset && at < checksum_offset + 4 {
            continue;
        }
        let word = u64::from(chunk[0]) | chunk.get(1).map_or(0, |&b| u64::from(b) << 8);
        sum += word;
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum = (sum & 0xFFFF) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "a 16-bit sum plus a length below 4 GiB")]
    let total = (sum as u32).wrapping_add(data.len() as u32);
    total
}

/// Marks resident sections `IMAGE_SCN_MEM_NOT_PAGED`, as link.exe /DRIVER does, then writes
/// the checksum. (`INIT` is discardable from the objects already, see lib.rs: a flag set here
/// would move nothing, and the kernel frees only the trailing run of discardable sections.)
///
/// # Errors
/// When the file cannot be read, parsed or written.
pub fn fix_up(path: &Path) -> Result<()> {
    let mut data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    fix_up_image(&mut data).with_context(|| format!("fixing up {}", path.display()))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// [`fix_up`] of an image in memory.
fn fix_up_image(data: &mut [u8]) -> Result<()> {
    for section in sections(data)? {
        let extra = if section.resident() { IMAGE_SCN_MEM_NOT_PAGED } else { 0 };
        let at = section.header_offset + offset_of!(ImageSectionHeader, characteristics);
        data[at..at + 4].copy_from_slice(&(section.characteristics | extra).to_le_bytes());
    }
    let at = checksum_offset(data)?;
    let sum = pe_checksum(data, at);
    data[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The result of `check-pe`.
pub struct Report {
    /// (check, passed, detail) rows.
    pub checks: Vec<(String, bool, String)>,
    /// The footprint, as printable rows.
    pub footprint: Vec<(String, String)>,
}

impl Report {
    /// Whether every check passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(_, ok, _)| *ok)
    }

    /// The report as two tables.
    #[must_use]
    pub fn render(&self) -> String {
        let mut checks = Table::new();
        checks.load_preset(UTF8_FULL_CONDENSED).set_header(["check", "result", "detail"]);
        for (name, ok, detail) in &self.checks {
            checks.add_row([name.as_str(), if *ok { "pass" } else { "FAIL" }, detail.as_str()]);
        }
        let mut footprint = Table::new();
        footprint.load_preset(UTF8_FULL_CONDENSED).set_header(["footprint", "value"]);
        for (name, value) in &self.footprint {
            footprint.add_row([name, value]);
        }
        format!("{checks}\n{footprint}")
    }
}

/// Checks a kernel image; `budget` adds the footprint limits.
///
/// # Errors
/// When the file cannot be read or is not a 64-bit PE image.
pub fn check(path: &Path, budget: Option<Budget>) -> Result<Report> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    check_image(&data, budget).with_context(|| format!("checking {}", path.display()))
}

/// [`check`] of an image in memory.
#[expect(clippy::too_many_lines, reason = "one list of checks reads best in one place")]
fn check_image(data: &[u8], budget: Option<Budget>) -> Result<Report> {
    let pe = PeFile64::parse(data).context("not a 64-bit PE image")?;
    let nt = pe.nt_headers();
    let optional = nt.optional_header();
    let sections = sections(data)?;
    let mut checks = Vec::new();
    let mut add = |name: &str, ok: bool, detail: String| checks.push((name.to_owned(), ok, detail));

    let machine = nt.file_header.machine.get(LE);
    add("machine AMD64", machine == IMAGE_FILE_MACHINE_AMD64, format!("{machine:#06x}"));
    let subsystem = optional.subsystem.get(LE);
    add("subsystem NATIVE", subsystem == IMAGE_SUBSYSTEM_NATIVE, subsystem.to_string());
    let stored = optional.check_sum.get(LE);
    let computed = pe_checksum(data, checksum_offset(data)?);
    add(
        "checksum valid",
        stored != 0 && stored == computed,
        format!("stored {stored:#x}, computed {computed:#x}"),
    );
    let entry = u64::from(optional.address_of_entry_point.get(LE));
    let entry_ok = entry != 0
        && pe.section_table().iter().any(|s| {
            let start = u64::from(s.virtual_address.get(LE));
            s.characteristics.get(LE) & IMAGE_SCN_MEM_EXECUTE != 0
                && (start..start + u64::from(s.virtual_size.get(LE))).contains(&entry)
        });
    add("entry point in code", entry_ok, format!("rva {entry:#x}"));

    let imports = pe.imports().context("reading the import table")?;
    let libraries: std::collections::BTreeSet<String> =
        imports.iter().map(|i| String::from_utf8_lossy(i.library()).to_lowercase()).collect();
    add(
        "imports only from ntoskrnl.exe / hal.dll",
        libraries.iter().all(|l| l == "ntoskrnl.exe" || l == "hal.dll"),
        libraries.iter().cloned().collect::<Vec<_>>().join(", "),
    );
    let names: Vec<String> =
        imports.iter().map(|i| String::from_utf8_lossy(i.name()).into_owned()).collect();
    let missing: Vec<&str> =
        routines::REQUIRED.iter().copied().filter(|r| !names.iter().any(|n| n == r)).collect();
    add("imports the three Mm routines", missing.is_empty(), format!("missing: {missing:?}"));
    let mut unknown = Vec::new();
    let mut too_new = Vec::new();
    let mut newest = routines::WINDOWS_2000;
    for name in &names {
        match routines::introduced(name) {
            None => unknown.push(name.as_str()),
            Some(release) if release > routines::MINIMUM => too_new.push(name.as_str()),
            Some(release) => newest = newest.max(release),
        }
    }
    add("every import in the routine table", unknown.is_empty(), format!("unknown: {unknown:?}"));
    add(
        "no import newer than the minimum Windows",
        too_new.is_empty(),
        format!(
            "newest {} (minimum {}); too new: {too_new:?}",
            newest.name,
            routines::MINIMUM.name
        ),
    );

    let paged_code: Vec<&Section> = sections
        .iter()
        .filter(|s| {
            s.pageable()
                && s.has(IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_MEM_READ)
                && !s.has(IMAGE_SCN_MEM_WRITE)
        })
        .collect();
    add(
        "pageable code section (PAGE*, code, execute, read)",
        !paged_code.is_empty(),
        paged_code.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
    );
    let pagedata = sections.iter().find(|s| s.name == "PAGEDATA");
    add(
        "PAGEDATA section (data, read, write, no execute)",
        pagedata.is_some_and(|s| {
            s.has(IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ | IMAGE_SCN_MEM_WRITE)
                && !s.has(IMAGE_SCN_MEM_EXECUTE)
        }),
        pagedata.map_or_else(|| "absent".into(), |s| format!("{:#010x}", s.characteristics)),
    );
    let init = sections.iter().find(|s| s.name == "INIT");
    add(
        "INIT discarded (in the trailing run of discardable sections)",
        init.is_some_and(Section::discarded),
        init.map_or_else(
            || "absent".into(),
            |s| {
                let trailing: Vec<&str> =
                    sections.iter().filter(|s| s.discarded()).map(|s| s.name.as_str()).collect();
                format!("{:#010x}; freed after DriverEntry: {trailing:?}", s.characteristics)
            },
        ),
    );
    let mut names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let mut twice: Vec<&str> = names.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    twice.dedup();
    add("no two sections with one name", twice.is_empty(), format!("repeated: {twice:?}"));
    let paged_resident: Vec<&str> = sections
        .iter()
        .filter(|s| s.resident() && !s.has(IMAGE_SCN_MEM_NOT_PAGED))
        .map(|s| s.name.as_str())
        .collect();
    add(
        "resident sections marked not-paged",
        paged_resident.is_empty(),
        format!("without the flag: {paged_resident:?}"),
    );
    let (ok, detail) = exception_table(&pe, data, &sections);
    add(rule::EXCEPTION_TABLE, ok, detail);
    hvci(&pe, &sections, &mut add);

    // Footprint.
    let header_bytes = u64::from(optional.size_of_headers.get(LE));
    let resident = || sections.iter().filter(|s| s.resident());
    let resident_pages =
        header_bytes.div_ceil(PAGE_SIZE) + resident().map(Section::pages).sum::<u64>();
    let resident_bytes = header_bytes + resident().map(|s| s.virtual_size).sum::<u64>();
    let pageable_bytes: u64 =
        sections.iter().filter(|s| s.pageable()).map(|s| s.virtual_size).sum();
    let code_bytes: u64 = sections.iter().filter(|s| s.code()).map(|s| s.virtual_size).sum();
    let resident_code: u64 = resident().filter(|s| s.code()).map(|s| s.virtual_size).sum();
    let movable_code = code_bytes - resident_code;
    let percent = (movable_code * 100).checked_div(code_bytes).unwrap_or(0);
    let directory =
        |index: usize| optional_directory(&pe, index).map_or(0, |(_, size)| u64::from(size));
    let read_only = resident().filter(|s| !s.has(IMAGE_SCN_MEM_WRITE) && !s.code());
    let (read_only_pages, read_only_bytes) =
        read_only.fold((0, 0), |(pages, bytes), s| (pages + s.pages(), bytes + s.virtual_size));
    let mut footprint = vec![
        (
            "resident image (idle)".to_owned(),
            format!("{resident_pages} pages, {resident_bytes} bytes"),
        ),
        ("resident code (.text etc.)".to_owned(), format!("{resident_code} bytes")),
        (
            "resident read-only data".to_owned(),
            format!(
                "{read_only_pages} page{}, {read_only_bytes} bytes ({} bytes left in the last)",
                if read_only_pages == 1 { "" } else { "s" },
                (read_only_pages * PAGE_SIZE).saturating_sub(read_only_bytes)
            ),
        ),
        ("pageable (PAGE*)".to_owned(), format!("{pageable_bytes} bytes")),
        (
            "code pageable or discardable".to_owned(),
            format!("{percent}% ({movable_code} of {code_bytes} bytes)"),
        ),
        (
            "import directory and IAT (resident)".to_owned(),
            format!(
                "{} bytes",
                directory(IMAGE_DIRECTORY_ENTRY_IMPORT) + directory(IMAGE_DIRECTORY_ENTRY_IAT)
            ),
        ),
        (
            "exception table, the merged .pdata (resident)".to_owned(),
            format!("{} bytes", directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)),
        ),
        // DriverEntry and _fltused: rustc exports a cdylib's `export_name` and `no_mangle` items
        // (src/kernel/nt/mod.rs, runtime/src/kernel.rs).
        (
            "export directory (resident)".to_owned(),
            format!("{} bytes", directory(IMAGE_DIRECTORY_ENTRY_EXPORT)),
        ),
        // The debug directory and its CodeView record (the PDB's name and signature).
        (
            "debug directory (resident)".to_owned(),
            format!("{} bytes", directory(IMAGE_DIRECTORY_ENTRY_DEBUG)),
        ),
        ("  (headers)".to_owned(), format!("{header_bytes} bytes, resident")),
    ];
    for s in &sections {
        footprint.push((
            format!("  {}", s.name),
            format!("{} bytes, {}, {:#010x}", s.virtual_size, s.place(), s.characteristics),
        ));
    }
    if let Some(budget) = budget {
        add(
            rule::BUDGET_PAGES,
            resident_pages <= budget.resident_pages,
            format!("{resident_pages} pages (at most {})", budget.resident_pages),
        );
        add(
            rule::BUDGET_CODE,
            resident_code <= budget.resident_code,
            format!("{resident_code} bytes (at most {})", budget.resident_code),
        );
        add(
            rule::BUDGET_PAGEABLE,
            percent >= budget.pageable_code_percent,
            format!("{percent}% (at least {}%)", budget.pageable_code_percent),
        );
    }
    Ok(Report { checks, footprint })
}

/// The checks HVCI (memory integrity) makes of a driver image: what Driver Verifier's
/// code-integrity checks report (a section writable and executable, 0x2003; a section alignment
/// that is not a multiple of a page, 0x2004; the import table in an executable section, 0x2005)
/// and the DLL characteristics that wdk-build's link.exe arguments set (`/NXCOMPAT`,
/// `/DYNAMICBASE`, `/INTEGRITYCHECK`).
fn hvci(pe: &PeFile64<'_>, sections: &[Section], add: &mut impl FnMut(&str, bool, String)) {
    let optional = pe.nt_headers().optional_header();
    let dll = optional.dll_characteristics.get(LE);
    let flag = |name: &str, bit: u16| {
        let set = dll & bit == bit;
        (set, format!("{dll:#06x}: {name} {}", if set { "set" } else { "clear" }))
    };
    let (ok, detail) = flag("NX_COMPAT", IMAGE_DLLCHARACTERISTICS_NX_COMPAT);
    add(rule::NX_COMPAT, ok, detail);
    let (ok, detail) = flag("DYNAMIC_BASE", IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE);
    add(rule::DYNAMIC_BASE, ok, detail);
    // Set by /INTEGRITYCHECK: the kernel loads the image only with a valid signature.
    let (ok, detail) = flag("FORCE_INTEGRITY", IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY);
    add(rule::FORCE_INTEGRITY, ok, detail);
    let wx: Vec<&str> = sections
        .iter()
        .filter(|s| s.has(IMAGE_SCN_MEM_WRITE | IMAGE_SCN_MEM_EXECUTE))
        .map(|s| s.name.as_str())
        .collect();
    add(rule::NO_WX, wx.is_empty(), format!("writable and executable: {wx:?}"));
    let alignment = optional.section_alignment.get(LE);
    add(
        rule::ALIGNMENT,
        alignment != 0 && alignment % HVCI_SECTION_ALIGNMENT == 0,
        format!("{alignment:#x}"),
    );
    for (name, index) in [
        (rule::IMPORTS_NX, IMAGE_DIRECTORY_ENTRY_IMPORT),
        (rule::IAT_NX, IMAGE_DIRECTORY_ENTRY_IAT),
    ] {
        let (ok, detail) = match placement(pe, sections, index) {
            Placement::Absent => (true, "none".to_owned()),
            Placement::In(s) => (
                !s.has(IMAGE_SCN_MEM_EXECUTE),
                format!("in {} ({:#010x})", s.name, s.characteristics),
            ),
            Placement::Outside(range) => (false, format!("{range} lies in no one section")),
        };
        add(name, ok, detail);
    }
}

/// The exception table (`.pdata`, merged into `.rdata`). The kernel finds a driver's table
/// through the exception directory of its optional header, never by a section name (the WRK's
/// `MiCaptureImageExceptionValues` records it at load; `RtlLookupFunctionTable` returns it and
/// `RtlLookupFunctionEntry` binary-searches it, for exception dispatch and stack walks alike, at
/// its caller's IRQL, `DISPATCH_LEVEL` included). So it must be sorted, and lie in one resident
/// section that nothing writes.
fn exception_table(pe: &PeFile64<'_>, data: &[u8], sections: &[Section]) -> (bool, String) {
    let section = match placement(pe, sections, IMAGE_DIRECTORY_ENTRY_EXCEPTION) {
        Placement::Absent => {
            return (false, "absent: no function of the image can be unwound".into());
        }
        Placement::Outside(range) => return (false, format!("{range} lies in no one section")),
        Placement::In(section) => section,
    };
    let entries = pe
        .data_directories()
        .get(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
        .and_then(|d| d.data(data, &pe.section_table()).ok())
        .and_then(|bytes| pod::slice_from_all_bytes::<ImageRuntimeFunctionEntry>(bytes).ok());
    let Some(entries) = entries else {
        return (false, "not a whole number of entries inside the file".into());
    };
    let range = |e: &ImageRuntimeFunctionEntry| (e.begin_address.get(LE), e.end_address.get(LE));
    let sorted = entries.iter().map(range).all(|(begin, end)| begin < end)
        && entries.windows(2).all(|w| range(&w[0]).1 <= range(&w[1]).0);
    let writable = section.has(IMAGE_SCN_MEM_WRITE);
    (
        sorted && section.resident() && !writable,
        format!(
            "{} entries, {}, in {} ({}{})",
            entries.len(),
            if sorted { "sorted" } else { "NOT sorted" },
            section.name,
            section.place(),
            if writable { ", writable" } else { "" }
        ),
    )
}

/// Where a data directory lies.
enum Placement<'s> {
    /// The image has none.
    Absent,
    /// Wholly inside this section.
    In(&'s Section),
    /// Not wholly inside any one section (the range, printed).
    Outside(String),
}

fn placement<'s>(pe: &PeFile64<'_>, sections: &'s [Section], index: usize) -> Placement<'s> {
    let Some((rva, size)) = optional_directory(pe, index).filter(|&(rva, _)| rva != 0) else {
        return Placement::Absent;
    };
    let (start, end) = (u64::from(rva), u64::from(rva) + u64::from(size));
    sections
        .iter()
        .find(|s| s.rva <= start && end <= s.rva + s.virtual_size)
        .map_or_else(|| Placement::Outside(format!("{start:#x}..{end:#x}")), Placement::In)
}

fn optional_directory(pe: &PeFile64<'_>, index: usize) -> Option<(u32, u32)> {
    let dir = pe.data_directories().get(index)?;
    Some((dir.virtual_address.get(LE), dir.size.get(LE)))
}

#[cfg(test)]
mod mutated;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_skips_its_own_field_and_adds_the_length() {
        let mut data = vec![0u8; 64];
        data[0] = 1;
        data[10] = 0xFF; // inside the checksum field at 8..12: ignored
        assert_eq!(pe_checksum(&data, 8), 1 + 64);
    }

    #[test]
    fn checksum_folds_carries() {
        let data = [0xFF, 0xFF, 0x02, 0x00];
        // 0xFFFF + 0x0002 = 0x10001 -> 0x0002, plus length 4.
        assert_eq!(pe_checksum(&data, 100), 2 + 4);
    }

    #[test]
    fn a_non_pe_file_is_refused() {
        let path = std::env::temp_dir().join("xtask-not-a-pe.sys");
        std::fs::write(&path, b"MZ but not really").expect("temp file");
        assert!(check(&path, None).is_err());
    }

    #[test]
    fn section_placement_rules() {
        let s = |name: &str, characteristics| Section {
            name: name.into(),
            header_offset: 0,
            rva: 0,
            virtual_size: 1,
            characteristics,
            discarded: false,
        };
        assert!(s("PAGELK", IMAGE_SCN_CNT_CODE).pageable());
        assert!(s(".text", IMAGE_SCN_CNT_CODE).resident());
    }

    fn layout(sections: &[(&str, u32)]) -> Vec<Section> {
        let mut sections: Vec<Section> = sections
            .iter()
            .map(|(name, characteristics)| Section {
                name: (*name).into(),
                header_offset: 0,
                rva: 0,
                virtual_size: 1,
                characteristics: *characteristics,
                discarded: false,
            })
            .collect();
        mark_trailing_discardable(&mut sections);
        sections
    }

    #[test]
    fn only_the_trailing_run_of_discardable_sections_is_discarded() {
        let d = IMAGE_SCN_MEM_DISCARDABLE;
        // lld-link's order when INIT is discardable only after linking: INIT stays resident.
        let early = layout(&[(".text", 0), ("INIT", d), ("PAGE", 0), (".reloc", d)]);
        assert!(!early[1].discarded() && early[1].resident());
        assert!(early[3].discarded());
        // Discardable in the objects, INIT trails every other section and is freed.
        let late = layout(&[(".text", 0), ("PAGE", 0), (".reloc", d), ("INIT", d)]);
        assert!(late[2].discarded() && late[3].discarded());
        assert!(!late[0].discarded() && !late[1].discarded());
        // Named INIT but not discardable: never freed.
        assert!(!layout(&[("INIT", 0)])[0].discarded());
    }
}
