//! GNU build-id notes: a content identity for shared objects without hashing them. The build-id
//! of a library as loaded (read from this process's memory) against the one of the file now on
//! disk tells a same-version reinstall (identical build) from a real change.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub is64: bool,
    pub little: bool,
}

fn u16_at(b: &[u8], off: usize, l: Layout) -> Option<u16> {
    let s: [u8; 2] = b.get(off..off + 2)?.try_into().ok()?;
    Some(if l.little {
        u16::from_le_bytes(s)
    } else {
        u16::from_be_bytes(s)
    })
}
fn u32_at(b: &[u8], off: usize, l: Layout) -> Option<u32> {
    let s: [u8; 4] = b.get(off..off + 4)?.try_into().ok()?;
    Some(if l.little {
        u32::from_le_bytes(s)
    } else {
        u32::from_be_bytes(s)
    })
}
fn u64_at(b: &[u8], off: usize, l: Layout) -> Option<u64> {
    let s: [u8; 8] = b.get(off..off + 8)?.try_into().ok()?;
    Some(if l.little {
        u64::from_le_bytes(s)
    } else {
        u64::from_be_bytes(s)
    })
}

/// Find the GNU build-id in a blob of ELF notes (`align` is the segment's alignment, 4 or 8).
pub fn gnu_build_id_in_notes(notes: &[u8], layout: Layout, align: usize) -> Option<Vec<u8>> {
    let align = if align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.div_ceil(align) * align;
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = u32_at(notes, off, layout)? as usize;
        let descsz = u32_at(notes, off + 4, layout)? as usize;
        let ntype = u32_at(notes, off + 8, layout)?;
        let name_start = off + 12;
        let desc_start = name_start.checked_add(pad(namesz))?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if ntype == NT_GNU_BUILD_ID && &notes[name_start..name_start + namesz] == b"GNU\0" {
            return Some(notes[desc_start..desc_end].to_vec());
        }
        off = desc_start.checked_add(pad(descsz))?;
    }
    None
}

/// The GNU build-id of an ELF file on disk, from its PT_NOTE segments. `Ok(None)`: a valid file
/// without a build-id note or not an ELF file at all.
pub fn build_id_of_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    let mut header = [0u8; 64];
    let n = read_up_to(&mut f, &mut header)?;
    if n < 52 || &header[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let layout = Layout {
        is64: header[4] == 2,
        little: header[5] == 1,
    };
    let (phoff, phentsize, phnum) = if layout.is64 {
        (
            u64_at(&header, 0x20, layout),
            u16_at(&header, 0x36, layout),
            u16_at(&header, 0x38, layout),
        )
    } else {
        (
            u32_at(&header, 0x1c, layout).map(u64::from),
            u16_at(&header, 0x2a, layout),
            u16_at(&header, 0x2c, layout),
        )
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Ok(None);
    };
    let mut phdrs = vec![0u8; phentsize as usize * phnum as usize];
    f.seek(SeekFrom::Start(phoff))?;
    if read_up_to(&mut f, &mut phdrs)? < phdrs.len() {
        return Ok(None);
    }
    for i in 0..phnum as usize {
        let ph = &phdrs[i * phentsize as usize..(i + 1) * phentsize as usize];
        let Some((ptype, offset, size, align)) = program_header(ph, layout) else {
            continue;
        };
        if ptype != PT_NOTE || size > (1 << 20) {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset))?;
        let got = read_up_to(&mut f, &mut notes)?;
        if let Some(id) = gnu_build_id_in_notes(&notes[..got], layout, align as usize) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// (type, file offset, file size, alignment) of one program header.
fn program_header(ph: &[u8], l: Layout) -> Option<(u32, u64, u64, u64)> {
    if l.is64 {
        Some((
            u32_at(ph, 0, l)?,
            u64_at(ph, 8, l)?,
            u64_at(ph, 32, l)?,
            u64_at(ph, 48, l)?,
        ))
    } else {
        Some((
            u32_at(ph, 0, l)?,
            u32_at(ph, 4, l)? as u64,
            u32_at(ph, 16, l)? as u64,
            u32_at(ph, 28, l)? as u64,
        ))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Build-ids of the shared objects loaded in this process, as they are in memory, keyed by the
/// path they were loaded from (`dl_iterate_phdr`).
#[cfg(target_os = "linux")]
pub fn loaded_build_ids() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    use std::ffi::CStr;
    use std::os::raw::{c_int, c_void};

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        let out = &mut *(data as *mut Vec<(std::path::PathBuf, Vec<u8>)>);
        let info = &*info;
        if info.dlpi_name.is_null() || info.dlpi_phdr.is_null() {
            return 0;
        }
        let name = CStr::from_ptr(info.dlpi_name).to_bytes();
        if name.is_empty() {
            return 0;
        }
        let layout = Layout {
            is64: cfg!(target_pointer_width = "64"),
            little: cfg!(target_endian = "little"),
        };
        for i in 0..info.dlpi_phnum as usize {
            let ph = &*info.dlpi_phdr.add(i);
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize) as *const u8;
            // The note segment is part of a loaded, readable PT_LOAD segment of this object.
            let notes = std::slice::from_raw_parts(start, ph.p_memsz as usize);
            if let Some(id) = gnu_build_id_in_notes(notes, layout, ph.p_align as usize) {
                out.push((crate::paths::bytes_to_path(name), id));
                break;
            }
        }
        0
    }

    let mut out: Vec<(std::path::PathBuf, Vec<u8>)> = Vec::new();
    unsafe {
        libc::dl_iterate_phdr(Some(visit), &mut out as *mut _ as *mut c_void);
    }
    out
}

#[cfg(not(target_os = "linux"))]
pub fn loaded_build_ids() -> Vec<(std::path::PathBuf, Vec<u8>)> {
    Vec::new() // macOS would use LC_UUID via _dyld_get_image_header; not implemented, see docs
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(ntype.to_le_bytes());
        v.extend(name);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    const LE64: Layout = Layout {
        is64: true,
        little: true,
    };

    #[test]
    fn finds_build_id_after_other_notes() {
        let mut blob = note(b"GNU\0", 5, &[1, 2, 3, 4, 5, 6, 7, 8]); // a .note.gnu.property-like note
        blob.extend(note(b"stapsdt\0", 3, &[9; 6])); // type 3 but not "GNU": ignored
        blob.extend(note(
            b"GNU\0",
            NT_GNU_BUILD_ID,
            &[0xc8, 0x94, 0xe5, 0x57, 0x07],
        ));
        assert_eq!(
            gnu_build_id_in_notes(&blob, LE64, 4),
            Some(vec![0xc8, 0x94, 0xe5, 0x57, 0x07])
        );
        assert_eq!(hex(&[0xc8, 0x04]), "c804");
    }

    #[test]
    fn truncated_or_empty_notes_give_none() {
        let blob = note(b"GNU\0", NT_GNU_BUILD_ID, &[1; 20]);
        assert_eq!(
            gnu_build_id_in_notes(&blob[..blob.len() - 4], LE64, 4),
            None
        );
        assert_eq!(gnu_build_id_in_notes(&[], LE64, 4), None);
        let big_endian = Layout {
            is64: true,
            little: false,
        };
        assert_eq!(gnu_build_id_in_notes(&blob, big_endian, 4), None);
    }

    /// A minimal ELF64 file: header, one PT_NOTE program header, one build-id note.
    fn tiny_elf(id: &[u8]) -> Vec<u8> {
        let notes = note(b"GNU\0", NT_GNU_BUILD_ID, id);
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes()); // p_filesz
        ph[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        f.extend(ph);
        f.extend(notes);
        f
    }

    #[test]
    fn build_id_from_a_file_on_disk() {
        let dir = std::env::temp_dir().join(format!("tbkit-probe-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("lib x.so");
        std::fs::write(&p, tiny_elf(&[0xab; 20])).unwrap();
        assert_eq!(build_id_of_file(&p).unwrap(), Some(vec![0xab; 20]));
        std::fs::write(&p, b"not an elf file").unwrap();
        assert_eq!(build_id_of_file(&p).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_loaded_objects_with_build_ids_matching_their_files() {
        let loaded = loaded_build_ids();
        assert!(!loaded.is_empty(), "libc at least carries a build-id");
        let mut compared = 0;
        for (path, id) in &loaded {
            if let Ok(Some(on_disk)) = build_id_of_file(path) {
                assert_eq!(&on_disk, id, "{}", path.display());
                compared += 1;
            }
        }
        assert!(compared > 0);
    }
}
