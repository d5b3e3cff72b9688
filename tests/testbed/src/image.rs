//! The loader: maps a PE kernel image at its section RVAs, applies its base relocations, binds
//! its imports to the emulated kernel, and sets each section's protection.

use std::ptr::NonNull;

use anyhow::{Context, Result, anyhow, bail};
use object::{
    LittleEndian as LE,
    pe::{
        IMAGE_REL_BASED_ABSOLUTE, IMAGE_REL_BASED_DIR64, IMAGE_SCN_MEM_DISCARDABLE,
        IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE,
    },
    read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64},
};

/// One section of the mapped image.
#[derive(Clone, Debug)]
pub struct Section {
    /// The PE name.
    pub name: String,
    /// Offset from the image base.
    pub rva: usize,
    /// Bytes, rounded up to whole pages.
    pub size: usize,
    /// The protection the section has when present (`PROT_*`).
    pub prot: i32,
    /// Its name starts with `PAGE`: the memory manager may page it out.
    pub pageable: bool,
    /// `INIT` or discardable: freed after `DriverEntry`.
    pub discardable: bool,
}

/// A kernel image mapped into this process.
pub struct Image {
    /// Where it is mapped.
    pub base: NonNull<u8>,
    /// `SizeOfImage`.
    pub size: usize,
    /// Entry point (`DriverEntry`), an offset from `base`.
    pub entry: usize,
    /// Its sections.
    pub sections: Vec<Section>,
}

// SAFETY: the mapping is plain memory owned by the bed; threads share it as the kernel does.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

const PAGE: usize = 4096;

fn protection(characteristics: u32) -> i32 {
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

/// Maps `data`, binding each import through `resolve` (name to host address).
///
/// # Errors
/// When the file is not an x86_64 PE image, or an import has no host routine (named).
pub fn map(data: &[u8], resolve: impl Fn(&str) -> Option<usize>) -> Result<Image> {
    let pe = PeFile64::parse(data).context("not a 64-bit PE image")?;
    let optional = pe.nt_headers().optional_header();
    let size = (optional.size_of_image() as usize).next_multiple_of(PAGE);
    let preferred = optional.image_base();
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
    let base = NonNull::new(raw.cast::<u8>()).context("mmap returned null")?;
    // SAFETY: the mapping is `size` writable bytes that only this function touches yet.
    let image = unsafe { std::slice::from_raw_parts_mut(base.as_ptr(), size) };
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
        sections.push(Section {
            pageable: name.starts_with("PAGE"),
            discardable: name == "INIT" || characteristics & IMAGE_SCN_MEM_DISCARDABLE != 0,
            name,
            rva,
            size: virtual_size.next_multiple_of(PAGE),
            prot: protection(characteristics),
        });
    }

    // Base relocations: the image is never where it asked to be.
    let delta = (base.as_ptr() as u64).wrapping_sub(preferred);
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
                    other => bail!("unsupported relocation type {other}"),
                }
            }
        }
    }

    // Imports, bound by name into the import address table.
    if let Some(table) = pe.import_table()? {
        let mut descriptors = table.descriptors()?;
        while let Some(descriptor) = descriptors.next()? {
            let library =
                String::from_utf8_lossy(table.name(descriptor.name.get(LE))?).to_lowercase();
            if library != "ntoskrnl.exe" && library != "hal.dll" {
                bail!("unsupported import library {library}");
            }
            let lookup = match descriptor.original_first_thunk.get(LE) {
                0 => descriptor.first_thunk.get(LE),
                rva => rva,
            };
            let iat = descriptor.first_thunk.get(LE) as usize;
            let mut thunks = table.thunks(lookup)?;
            let mut index = 0;
            while let Some(thunk) = thunks.next::<object::pe::ImageNtHeaders64>()? {
                let name = match table.import::<object::pe::ImageNtHeaders64>(thunk)? {
                    object::read::pe::Import::Name(_, name) => {
                        String::from_utf8_lossy(name).into_owned()
                    }
                    object::read::pe::Import::Ordinal(n) => {
                        bail!("import by ordinal {n} of {library}")
                    }
                };
                let address = resolve(&name)
                    .ok_or_else(|| anyhow!("unsupported import: {library}!{name}"))?;
                let at = iat + index * 8;
                image
                    .get_mut(at..at + 8)
                    .context("IAT outside the image")?
                    .copy_from_slice(&(address as u64).to_le_bytes());
                index += 1;
            }
        }
    }

    // Protections: headers read-only, each section as its characteristics say.
    let apply = |offset: usize, len: usize, prot: i32| {
        // SAFETY: the range lies inside the mapping made above.
        unsafe { libc::mprotect(base.as_ptr().add(offset).cast(), len, prot) }
    };
    if apply(0, headers.next_multiple_of(PAGE), libc::PROT_READ) != 0 {
        bail!("mprotect of the headers failed");
    }
    for section in &sections {
        if apply(section.rva, section.size, section.prot) != 0 {
            bail!("mprotect of {} failed", section.name);
        }
    }
    Ok(Image { base, size, entry: optional.address_of_entry_point() as usize, sections })
}
