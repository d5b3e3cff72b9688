//! `check-pe`'s rules shown failing. A small image laid out as the linkers lay out pagelock.sys
//! passes every check; each mutation of it breaks the rules it names, and only those. The same
//! mutations are made to the release and debug images when `PAGELOCK_SYS` and
//! `PAGELOCK_SYS_DEBUG` name them (`cargo xtask test` sets both).

use std::mem::size_of;

use object::{
    LittleEndian as LE, U32, U32Bytes,
    pe::{
        IMAGE_DIRECTORY_ENTRY_EXCEPTION, IMAGE_DIRECTORY_ENTRY_IAT, IMAGE_DIRECTORY_ENTRY_IMPORT,
        IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE, IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
        IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA, IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
        IMAGE_FILE_DLL, IMAGE_FILE_EXECUTABLE_IMAGE, IMAGE_FILE_LARGE_ADDRESS_AWARE,
        IMAGE_FILE_MACHINE_AMD64, IMAGE_SCN_CNT_CODE, IMAGE_SCN_CNT_INITIALIZED_DATA,
        IMAGE_SCN_MEM_DISCARDABLE, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE,
        IMAGE_SUBSYSTEM_NATIVE, ImageDataDirectory, ImageImportDescriptor, ImageOptionalHeader64,
        ImageRuntimeFunctionEntry, ImageSectionHeader,
    },
    pod,
    read::pe::PeFile64,
    write::pe::{NtHeaders, Writer},
};

use super::{
    Budget, PAGELOCK_BUDGET, RESIDENT_CODE_BYTES, check_image, fix_up_image,
    optional_header_offset, rule, sections,
};

/// Code and data sizes of a test image.
#[derive(Clone, Copy)]
struct Layout {
    text: u32,
    data: u32,
    page: u32,
    pagelk: u32,
    init: u32,
    /// The exception table in `.rdata`, as both builds link it, or in a `.pdata` of its own.
    pdata_merged: bool,
}

/// The release image's sizes when the budget became 4 pages.
const RELEASE: Layout =
    Layout { text: 518, data: 344, page: 3512, pagelk: 764, init: 1513, pdata_merged: true };

const SECTION_ALIGNMENT: u32 = 0x1000;
const FILE_ALIGNMENT: u32 = 0x200;
const THUNK: usize = size_of::<u64>();
const DLL_NAME: &[u8] = b"ntoskrnl.exe\0";
/// One unwind info (version 1, no prologue, no unwind codes) that every function shares.
const UNWIND_INFO: [u8; 4] = [1, 0, 0, 0];

/// Where the pieces of `.rdata` go, as offsets in it.
struct Rdata {
    lookup: usize,
    iat: usize,
    hint_names: Vec<usize>,
    dll_name: usize,
    unwind: usize,
    pdata: usize,
    len: usize,
}

impl Rdata {
    fn new(names: &[&str], pdata_len: usize, pdata_merged: bool) -> Self {
        let thunks = (names.len() + 1) * THUNK;
        let lookup = 2 * size_of::<ImageImportDescriptor>();
        let iat = lookup + thunks;
        let mut at = iat + thunks;
        let hint_names = names
            .iter()
            .map(|name| {
                let entry = at;
                at += (2 + name.len() + 1).next_multiple_of(2);
                entry
            })
            .collect();
        let dll_name = at;
        let unwind = (dll_name + DLL_NAME.len()).next_multiple_of(4);
        let pdata = unwind + UNWIND_INFO.len();
        let len = if pdata_merged { pdata + pdata_len } else { pdata };
        Self { lookup, iat, hint_names, dll_name, unwind, pdata, len }
    }

    /// The section's bytes at `base` (the exception table, when merged, still zero): one import
    /// descriptor and the null one, the lookup and address tables, the hint/name entries, the
    /// DLL's name, the unwind info.
    fn contents(&self, base: u32, names: &[&str]) -> Vec<u8> {
        let rva = |offset: usize| base + u32_of(offset);
        let mut bytes = vec![0u8; self.len];
        let descriptor = ImageImportDescriptor {
            original_first_thunk: U32Bytes::new(LE, rva(self.lookup)),
            time_date_stamp: U32Bytes::new(LE, 0),
            forwarder_chain: U32Bytes::new(LE, 0),
            name: U32Bytes::new(LE, rva(self.dll_name)),
            first_thunk: U32Bytes::new(LE, rva(self.iat)),
        };
        bytes[..size_of::<ImageImportDescriptor>()].copy_from_slice(pod::bytes_of(&descriptor));
        for (i, (name, &entry)) in names.iter().zip(&self.hint_names).enumerate() {
            for table in [self.lookup, self.iat] {
                let at = table + i * THUNK;
                bytes[at..at + THUNK].copy_from_slice(&u64::from(rva(entry)).to_le_bytes());
            }
            bytes[entry + 2..entry + 2 + name.len()].copy_from_slice(name.as_bytes());
        }
        bytes[self.dll_name..self.dll_name + DLL_NAME.len()].copy_from_slice(DLL_NAME);
        bytes[self.unwind..self.pdata].copy_from_slice(&UNWIND_INFO);
        bytes
    }
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).expect("a small image")
}

/// A driver image with pagelock's sections, importing the three Mm routines from ntoskrnl.exe,
/// with its entry point in `INIT`, fixed up as the cross build fixes its images up.
fn image(layout: Layout) -> Vec<u8> {
    let names = crate::routines::REQUIRED;
    let code = |len| vec![0xCC; len as usize];
    let functions = 5;
    let pdata_len = functions * size_of::<ImageRuntimeFunctionEntry>();
    let rdata = Rdata::new(&names, pdata_len, layout.pdata_merged);

    let mut out = Vec::new();
    let mut writer = Writer::new(true, SECTION_ALIGNMENT, FILE_ALIGNMENT, &mut out);
    writer.reserve_dos_header_and_stub();
    writer.reserve_nt_headers(16);
    writer.reserve_section_headers(if layout.pdata_merged { 7 } else { 8 });
    let text = writer.reserve_text_section(layout.text);
    let rdata_range = writer.reserve_rdata_section(u32_of(rdata.len));
    let data = writer.reserve_data_section(layout.data, layout.data);
    let pdata_range =
        (!layout.pdata_merged).then(|| writer.reserve_pdata_section(u32_of(pdata_len)));
    let code_flags = IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_MEM_READ;
    let page = writer.reserve_section(*b"PAGE\0\0\0\0", code_flags, layout.page, layout.page);
    let pagedata = writer.reserve_section(
        *b"PAGEDATA",
        IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ | IMAGE_SCN_MEM_WRITE,
        8,
        8,
    );
    let pagelk = writer.reserve_section(*b"PAGELK\0\0", code_flags, layout.pagelk, layout.pagelk);
    let init = writer.reserve_section(
        *b"INIT\0\0\0\0",
        code_flags | IMAGE_SCN_MEM_DISCARDABLE,
        layout.init,
        layout.init,
    );

    // .rdata's contents and the exception table, now that every address is known.
    let base = rdata_range.virtual_address;
    let mut bytes = rdata.contents(base, &names);
    let half = text.virtual_address + layout.text / 2;
    let pdata_bytes = exception_table(
        &[
            (text.virtual_address, half),
            (half, text.virtual_address + layout.text),
            (page.virtual_address, page.virtual_address + layout.page),
            (pagelk.virtual_address, pagelk.virtual_address + layout.pagelk),
            (init.virtual_address, init.virtual_address + layout.init),
        ],
        base + u32_of(rdata.unwind),
    );
    assert_eq!(pdata_bytes.len(), pdata_len);
    let exception_rva = if let Some(range) = pdata_range {
        range.virtual_address
    } else {
        bytes[rdata.pdata..].copy_from_slice(&pdata_bytes);
        base + u32_of(rdata.pdata)
    };
    writer.set_data_directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION, exception_rva, u32_of(pdata_len));
    writer.set_data_directory(
        IMAGE_DIRECTORY_ENTRY_IMPORT,
        base,
        u32_of(2 * size_of::<ImageImportDescriptor>()),
    );
    writer.set_data_directory(
        IMAGE_DIRECTORY_ENTRY_IAT,
        base + u32_of(rdata.iat),
        u32_of((names.len() + 1) * THUNK),
    );

    writer.write_dos_header_and_stub().expect("the DOS header");
    writer.write_nt_headers(nt_headers(init.virtual_address));
    writer.write_section_headers();
    writer.write_section(text.file_offset, &code(layout.text));
    writer.write_section(rdata_range.file_offset, &bytes);
    writer.write_section(data.file_offset, &vec![0; layout.data as usize]);
    if let Some(range) = pdata_range {
        writer.write_section(range.file_offset, &pdata_bytes);
    }
    writer.write_section(page.file_offset, &code(layout.page));
    writer.write_section(pagedata.file_offset, &[0; 8]);
    writer.write_section(pagelk.file_offset, &code(layout.pagelk));
    writer.write_section(init.file_offset, &code(layout.init));
    fix_up_image(&mut out).expect("a PE image");
    out
}

/// The headers lld-link writes for a driver, with the entry point at `entry`.
const fn nt_headers(entry: u32) -> NtHeaders {
    NtHeaders {
        machine: IMAGE_FILE_MACHINE_AMD64,
        time_date_stamp: 0,
        characteristics: IMAGE_FILE_EXECUTABLE_IMAGE
            | IMAGE_FILE_LARGE_ADDRESS_AWARE
            | IMAGE_FILE_DLL,
        major_linker_version: 14,
        minor_linker_version: 0,
        address_of_entry_point: entry,
        image_base: 0x1_4000_0000,
        major_operating_system_version: 10,
        minor_operating_system_version: 0,
        major_image_version: 0,
        minor_image_version: 0,
        major_subsystem_version: 10,
        minor_subsystem_version: 0,
        subsystem: IMAGE_SUBSYSTEM_NATIVE,
        dll_characteristics: IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA
            | IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE
            | IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY
            | IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
        size_of_stack_reserve: 0x10_0000,
        size_of_stack_commit: 0x1000,
        size_of_heap_reserve: 0x10_0000,
        size_of_heap_commit: 0x1000,
    }
}

/// The code ranges `functions` (sorted, as the linkers sort them) as an exception table, every
/// function sharing the unwind info at `unwind`.
fn exception_table(functions: &[(u32, u32)], unwind: u32) -> Vec<u8> {
    let entries: Vec<ImageRuntimeFunctionEntry> = functions
        .iter()
        .map(|&(begin, end)| ImageRuntimeFunctionEntry {
            begin_address: U32::new(LE, begin),
            end_address: U32::new(LE, end),
            unwind_info_address_or_data: U32::new(LE, unwind),
        })
        .collect();
    pod::bytes_of_slice(&entries).to_vec()
}

/// The names of the checks `image` fails.
fn failures(image: &[u8], budget: Option<Budget>) -> Vec<String> {
    let report = check_image(image, budget).expect("a PE image");
    report.checks.into_iter().filter(|(_, ok, _)| !ok).map(|(name, ..)| name).collect()
}

/// A copy of `image` changed by `change`, then fixed up again as the cross build fixes its
/// images up (not-paged flags, checksum), so that only the change itself can fail a check.
fn mutated(image: &[u8], change: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut copy = image.to_vec();
    change(&mut copy);
    fix_up_image(&mut copy).expect("still a PE image");
    copy
}

fn section_header<'a>(image: &'a mut [u8], name: &str) -> &'a mut ImageSectionHeader {
    let section = sections(image).expect("a PE image").into_iter().find(|s| s.name == name);
    let at = section.unwrap_or_else(|| panic!("no section {name}")).header_offset;
    pod::from_bytes_mut(&mut image[at..]).expect("a section header").0
}

fn optional_header(image: &mut [u8]) -> &mut ImageOptionalHeader64 {
    let at = optional_header_offset(image).expect("a PE image");
    pod::from_bytes_mut(&mut image[at..]).expect("the optional header").0
}

fn directory(image: &mut [u8], index: usize) -> &mut ImageDataDirectory {
    let at = optional_header_offset(image).expect("a PE image")
        + size_of::<ImageOptionalHeader64>()
        + index * size_of::<ImageDataDirectory>();
    pod::from_bytes_mut(&mut image[at..]).expect("a data directory").0
}

/// The name of the section that holds data directory `index`.
fn section_holding(image: &[u8], index: usize) -> String {
    let pe = PeFile64::parse(image).expect("a PE image");
    let rva = pe.data_directories().get(index).expect("the directory").virtual_address.get(LE);
    let header = pe.section_table().section_containing(rva).expect("a section holding it");
    String::from_utf8_lossy(header.raw_name()).trim_end_matches('\0').to_owned()
}

fn set_flags(image: &mut [u8], section: &str, flags: u32) {
    let header = section_header(image, section);
    header.characteristics.set(LE, header.characteristics.get(LE) | flags);
}

fn clear_dll_characteristic(image: &mut [u8], flag: u16) {
    let optional = optional_header(image);
    optional.dll_characteristics.set(LE, optional.dll_characteristics.get(LE) & !flag);
}

fn make_exception_table_writable(image: &mut [u8]) {
    let name = section_holding(image, IMAGE_DIRECTORY_ENTRY_EXCEPTION);
    set_flags(image, &name, IMAGE_SCN_MEM_WRITE);
}

fn make_exception_table_pageable(image: &mut [u8]) {
    let name = section_holding(image, IMAGE_DIRECTORY_ENTRY_EXCEPTION);
    section_header(image, &name).name = *b"PAGECNST";
}

fn swap_two_exception_entries(image: &mut [u8]) {
    let pe = PeFile64::parse(&*image).expect("a PE image");
    let rva = pe.data_directories().get(IMAGE_DIRECTORY_ENTRY_EXCEPTION).expect("a table");
    let (at, _) = pe
        .section_table()
        .pe_file_range_at(rva.virtual_address.get(LE))
        .expect("the table in the file");
    let (at, entry) = (at as usize, size_of::<ImageRuntimeFunctionEntry>());
    let (first, second) = image[at..at + 2 * entry].split_at_mut(entry);
    first.swap_with_slice(second);
}

fn make_import_section_executable(image: &mut [u8]) {
    let name = section_holding(image, IMAGE_DIRECTORY_ENTRY_IMPORT);
    set_flags(image, &name, IMAGE_SCN_MEM_EXECUTE);
}

fn point_iat_into_text(image: &mut [u8]) {
    let text = section_header(image, ".text");
    let (start, len) = (text.virtual_address.get(LE), text.virtual_size.get(LE));
    let iat = directory(image, IMAGE_DIRECTORY_ENTRY_IAT);
    iat.virtual_address.set(LE, start);
    iat.size.set(LE, iat.size.get(LE).min(len));
}

/// Each mutation, and the rules it must fail (and no other).
type Mutation = (&'static str, fn(&mut [u8]), &'static [&'static str]);

const MUTATIONS: &[Mutation] = &[
    (".text writable", |i| set_flags(i, ".text", IMAGE_SCN_MEM_WRITE), &[rule::NO_WX]),
    (
        "section alignment 0x200",
        |i| optional_header(i).section_alignment.set(LE, 0x200),
        &[rule::ALIGNMENT],
    ),
    (
        "the section holding the import tables executable",
        make_import_section_executable,
        // The import directory and the address table share `.rdata`, as lld-link and link.exe
        // lay them out.
        &[rule::IMPORTS_NX, rule::IAT_NX],
    ),
    ("the IAT directory pointed into .text", point_iat_into_text, &[rule::IAT_NX]),
    (
        "FORCE_INTEGRITY cleared",
        |i| clear_dll_characteristic(i, IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY),
        &[rule::FORCE_INTEGRITY],
    ),
    (
        "NX_COMPAT cleared",
        |i| clear_dll_characteristic(i, IMAGE_DLLCHARACTERISTICS_NX_COMPAT),
        &[rule::NX_COMPAT],
    ),
    (
        "DYNAMIC_BASE cleared",
        |i| clear_dll_characteristic(i, IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE),
        &[rule::DYNAMIC_BASE],
    ),
    (
        "the section holding the exception table writable",
        make_exception_table_writable,
        &[rule::EXCEPTION_TABLE],
    ),
    (
        "the section holding the exception table renamed PAGE*",
        make_exception_table_pageable,
        &[rule::EXCEPTION_TABLE],
    ),
    ("two exception table entries swapped", swap_two_exception_entries, &[rule::EXCEPTION_TABLE]),
];

fn mutation(name: &str) -> &'static Mutation {
    MUTATIONS.iter().find(|m| m.0 == name).unwrap_or_else(|| panic!("no mutation {name}"))
}

/// `image` passes every rule; each mutation of it fails exactly the rules it names.
fn assert_each_mutation_fails_its_rules(image: &[u8]) {
    assert_eq!(failures(image, None), [""; 0], "the image as built");
    for (what, change, expected) in MUTATIONS {
        assert_eq!(failures(&mutated(image, change), None), *expected, "{what}");
    }
}

fn assert_fails(name: &str) {
    let (_, change, expected) = mutation(name);
    assert_eq!(failures(&mutated(&image(RELEASE), change), None), *expected, "{name}");
}

#[test]
fn the_release_layout_passes_every_check_and_the_budget_at_four_pages() {
    let image = image(RELEASE);
    assert_eq!(failures(&image, Some(PAGELOCK_BUDGET)), [""; 0]);
    let report = check_image(&image, None).expect("a PE image");
    let pages = report.footprint.iter().find(|(name, _)| name == "resident image (idle)");
    assert!(pages.is_some_and(|(_, value)| value.starts_with("4 pages")), "{pages:?}");
}

#[test]
fn a_writable_executable_section_fails_w_xor_x() {
    assert_fails(".text writable");
}

#[test]
fn a_section_alignment_below_a_page_fails() {
    assert_fails("section alignment 0x200");
}

#[test]
fn import_tables_in_an_executable_section_fail_both_import_rules() {
    assert_fails("the section holding the import tables executable");
}

#[test]
fn an_import_address_table_in_code_fails_on_its_own() {
    assert_fails("the IAT directory pointed into .text");
}

#[test]
fn an_image_without_force_integrity_fails() {
    assert_fails("FORCE_INTEGRITY cleared");
}

#[test]
fn an_image_without_nx_compat_fails() {
    assert_fails("NX_COMPAT cleared");
}

#[test]
fn an_image_without_dynamic_base_fails() {
    assert_fails("DYNAMIC_BASE cleared");
}

#[test]
fn a_writable_exception_table_fails() {
    assert_fails("the section holding the exception table writable");
}

#[test]
fn a_pageable_exception_table_fails() {
    assert_fails("the section holding the exception table renamed PAGE*");
}

#[test]
fn an_unsorted_exception_table_fails() {
    assert_fails("two exception table entries swapped");
}

#[test]
fn every_mutation_fails_exactly_its_rules() {
    assert_each_mutation_fails_its_rules(&image(RELEASE));
}

#[test]
fn a_pdata_section_of_its_own_costs_a_fifth_resident_page() {
    let unmerged = image(Layout { pdata_merged: false, ..RELEASE });
    assert_eq!(failures(&unmerged, Some(PAGELOCK_BUDGET)), [rule::BUDGET_PAGES]);
}

#[test]
fn resident_code_past_the_stated_figure_fails_the_budget() {
    let text = u32::try_from(RESIDENT_CODE_BYTES).expect("small") + 1;
    let grown = image(Layout { text, ..RELEASE });
    assert_eq!(failures(&grown, Some(PAGELOCK_BUDGET)), [rule::BUDGET_CODE]);
}

#[test]
fn less_than_90_percent_of_code_pageable_or_discardable_fails_the_budget() {
    let shrunk = image(Layout { page: 100, ..RELEASE });
    assert_eq!(failures(&shrunk, Some(PAGELOCK_BUDGET)), [rule::BUDGET_PAGEABLE]);
}

#[test]
fn each_rule_fails_on_the_built_images_mutated_when_they_are_named() {
    // `cargo xtask test` builds the release and debug images and names them; a plain
    // `cargo test` has only the image built above.
    for variable in ["PAGELOCK_SYS", "PAGELOCK_SYS_DEBUG"] {
        let Some(path) = std::env::var_os(variable) else { continue };
        let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{variable}: {e}"));
        assert_each_mutation_fails_its_rules(&image);
    }
}
