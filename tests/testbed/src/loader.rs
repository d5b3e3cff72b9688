//! The loader: maps a PE kernel image at its section RVAs, applies its base relocations, binds
//! its imports by name to the emulated kernel, and gives each section its protection.

use std::ptr::NonNull;

use anyhow::{Context, Result, bail};
use object::{
    LittleEndian as LE,
    pe::{
        IMAGE_FILE_MACHINE_AMD64, IMAGE_REL_BASED_ABSOLUTE, IMAGE_REL_BASED_DIR64,
        IMAGE_SCN_MEM_DISCARDABLE, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE,
        ImageNtHeaders64,
    },
    read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile64},
};

/// The page size of `x86_64`, Windows and Linux alike.
pub const PAGE_SIZE: usize = 4096;

/// How the memory manager treats a section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Always present (`.text`, `.rdata`, `.data`, ...).
    Resident,
    /// Its name starts with `PAGE`: pageable, lockable.
    Pageable,
    /// One of the trailing run of discardable sections: freed once `DriverEntry` returns. The
    /// kernel (`MmFreeDriverInitialization`) walks the section table backwards while the
    /// sections are discardable and frees just those; a discardable section followed by any
    /// other (an `INIT` placed before `PAGE`) is kept, resident, whatever its name or flag.
    Discardable,
}

/// One section of the mapped image.
#[derive(Clone, Debug)]
pub struct Section {
    /// The PE name.
    pub name: String,
    /// Offset from the image base.
    pub rva: usize,
    /// Bytes, rounded up to whole pages.
    pub size: usize,
    /// The protection when present (`PROT_*`).
    pub prot: i32,
    /// How the memory manager treats it.
    pub residency: Residency,
}

/// A kernel image mapped into this process. The mapping lives as long as the process: the
/// emulated kernel (one per process) keeps addresses into it.
#[derive(Debug)]
pub struct Image {
    /// Where it is mapped.
    pub base: NonNull<u8>,
    /// `SizeOfImage`, page-rounded.
    pub size: usize,
    /// The entry point (`DriverEntry`), an offset from `base`.
    pub entry: usize,
    /// Its sections, in header order.
    pub sections: Vec<Section>,
}

// SAFETY: the mapping is plain memory that lives for the process; threads share it as the
// kernel's processors share a loaded image.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

const fn protection(characteristics: u32) -> i32 {
    let mut prot = libc::PROT_NONE;
    if characteristics & IMAGE_SCN_MEM_READ != 0 {
        prot |= libc::PROT_READ;
    }
    if characteristics & IMAGE_SCN_MEM_WRITE != 0 {
        prot |= libc::PROT_WRITE;
    }
    if characteristics & IMAGE_SCN_MEM_EXECUTE != 0 {
        prot |= libc::PROT_EXEC;
    }
    prot
}

/// Maps `data`, binding each import through `resolve` (import name to host address).
///
/// # Errors
/// When the file is not an `x86_64` PE image, is malformed, or imports routines the bed does
/// not provide (all of them named in the message).
pub fn map(data: &[u8], resolve: impl Fn(&str) -> Option<usize>) -> Result<Image> {
    let pe = PeFile64::parse(data).context("not a 64-bit PE image")?;
    let machine = pe.nt_headers().file_header().machine.get(LE);
    if machine != IMAGE_FILE_MACHINE_AMD64 {
        bail!("not an x86_64 image (machine {machine:#x})");
    }
    let optional = pe.nt_headers().optional_header();
    let size = (optional.size_of_image() as usize).next_multiple_of(PAGE_SIZE);
    let mut mapping = Mapping::new(size)?;
    let image = mapping.bytes_mut();
    let headers = (optional.size_of_headers() as usize).min(data.len()).min(size);
    image[..headers].copy_from_slice(&data[..headers]);

    let mut sections = Vec::new();
    for header in pe.section_table().iter() {
        let rva = header.virtual_address.get(LE) as usize;
        let virtual_size = header.virtual_size.get(LE) as usize;
        let raw_offset = header.pointer_to_raw_data.get(LE) as usize;
        let raw_size = (header.size_of_raw_data.get(LE) as usize).min(virtual_size);
        let bytes =
            data.get(raw_offset..raw_offset + raw_size).context("section data outside the file")?;
        image
            .get_mut(rva..rva + raw_size)
            .context("section outside the image")?
            .copy_from_slice(bytes);
        let name = String::from_utf8_lossy(header.raw_name()).trim_end_matches('\0').to_owned();
        let characteristics = header.characteristics.get(LE);
        let residency =
            if name.starts_with("PAGE") { Residency::Pageable } else { Residency::Resident };
        sections.push(Section {
            name,
            rva,
            size: virtual_size.next_multiple_of(PAGE_SIZE),
            prot: protection(characteristics),
            residency,
        });
    }

    // Only the trailing run of discardable sections is freed after DriverEntry.
    let flags: Vec<u32> =
        pe.section_table().iter().map(|header| header.characteristics.get(LE)).collect();
    let trailing = flags.iter().rev().take_while(|f| *f & IMAGE_SCN_MEM_DISCARDABLE != 0).count();
    let first_freed = sections.len() - trailing;
    for section in &mut sections[first_freed..] {
        section.residency = Residency::Discardable;
    }

    // Base relocations: the image is never where it asked to be.
    let delta = (image.as_ptr() as u64).wrapping_sub(optional.image_base());
    if let Some(mut blocks) = pe.data_directories().relocation_blocks(data, &pe.section_table())? {
        while let Some(block) = blocks.next()? {
            for reloc in block {
                match reloc.typ {
                    IMAGE_REL_BASED_DIR64 => {
                        let at = reloc.virtual_address as usize;
                        let slot =
                            image.get_mut(at..at + 8).context("relocation outside the image")?;
                        let value = u64::from_le_bytes(slot.try_into()?).wrapping_add(delta);
                        slot.copy_from_slice(&value.to_le_bytes());
                    }
                    IMAGE_REL_BASED_ABSOLUTE => {}
                    other => bail!("unsupported base relocation type {other}"),
                }
            }
        }
    }

    bind_imports(&pe, image, &resolve)?;
    mapping.protect(headers, &sections)?;
    Ok(Image {
        base: mapping.into_raw(),
        size,
        entry: optional.address_of_entry_point() as usize,
        sections,
    })
}

/// Writes each import's host address into the import address table; every import the bed
/// lacks is named in the error.
fn bind_imports(
    pe: &PeFile64<'_>,
    image: &mut [u8],
    resolve: &impl Fn(&str) -> Option<usize>,
) -> Result<()> {
    let Some(table) = pe.import_table()? else { return Ok(()) };
    let mut missing = Vec::new();
    let mut descriptors = table.descriptors()?;
    while let Some(descriptor) = descriptors.next()? {
        let library = String::from_utf8_lossy(table.name(descriptor.name.get(LE))?).to_lowercase();
        let known_library = library == "ntoskrnl.exe" || library == "hal.dll";
        let lookup = match descriptor.original_first_thunk.get(LE) {
            0 => descriptor.first_thunk.get(LE),
            rva => rva,
        };
        let iat = descriptor.first_thunk.get(LE) as usize;
        let mut thunks = table.thunks(lookup)?;
        let mut index = 0;
        while let Some(thunk) = thunks.next::<ImageNtHeaders64>()? {
            let name = match table.import::<ImageNtHeaders64>(thunk)? {
                Import::Name(_, name) => String::from_utf8_lossy(name).into_owned(),
                Import::Ordinal(n) => format!("#{n}"),
            };
            match resolve(&name).filter(|_| known_library) {
                Some(address) => {
                    let at = iat + index * 8;
                    image
                        .get_mut(at..at + 8)
                        .context("import address table outside the image")?
                        .copy_from_slice(&(address as u64).to_le_bytes());
                }
                None => missing.push(format!("{library}!{name}")),
            }
            index += 1;
        }
    }
    if !missing.is_empty() {
        bail!("unsupported import(s): {}", missing.join(", "));
    }
    Ok(())
}

/// An anonymous private mapping, unmapped on drop unless handed over with [`Self::into_raw`].
struct Mapping {
    base: NonNull<u8>,
    size: usize,
}

impl Mapping {
    fn new(size: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            bail!("mmap of {size} bytes failed");
        }
        Ok(Self { base: NonNull::new(raw.cast()).context("mmap returned null")?, size })
    }

    const fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `size` readable and writable bytes, borrowed through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.size) }
    }

    /// Headers read-only, each section as its characteristics say.
    fn protect(&self, headers: usize, sections: &[Section]) -> Result<()> {
        let apply = |offset: usize, len: usize, prot: i32| {
            let start = self.base.as_ptr().wrapping_add(offset);
            // SAFETY: the range lies inside this mapping (sections were bounds-checked); only
            // its protection changes.
            unsafe { libc::mprotect(start.cast(), len, prot) }
        };
        if apply(0, headers.next_multiple_of(PAGE_SIZE), libc::PROT_READ) != 0 {
            bail!("mprotect of the headers failed");
        }
        for section in sections {
            if apply(section.rva, section.size.min(self.size - section.rva), section.prot) != 0 {
                bail!("mprotect of {} failed", section.name);
            }
        }
        Ok(())
    }

    const fn into_raw(self) -> NonNull<u8> {
        let base = self.base;
        std::mem::forget(self);
        base
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not handed over.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size) };
    }
}
