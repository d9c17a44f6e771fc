//! Parsing `/proc/self/maps`: which files this process has mapped, their device and inode as the
//! kernel saw them when they were mapped, and whether the path has since been unlinked
//! (` (deleted)`).
//!
//! Line format (proc(5)): `address perms offset dev inode   pathname`, with `dev` as hex
//! `MM:mm`, the pathname padded by spaces and allowed to contain spaces itself.

use std::path::PathBuf;

use crate::identity::DevId;
use crate::paths::bytes_to_path;

const DELETED: &[u8] = b" (deleted)";

/// One file-backed mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub dev: DevId,
    pub inode: u64,
    /// The path as the kernel prints it now, without the ` (deleted)` suffix.
    pub path: PathBuf,
    pub deleted: bool,
}

/// The fields of one file-backed line, borrowed from it (no allocation): device, inode, the raw
/// path bytes (kernel-escaped, ` (deleted)` stripped) and the deleted flag.
pub fn parse_line_raw(line: &[u8]) -> Option<(DevId, u64, &[u8], bool)> {
    let mut rest = line;
    let mut fields: [&[u8]; 5] = [&[]; 5];
    for slot in fields.iter_mut() {
        rest = trim_start(rest);
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        *slot = &rest[..end];
        rest = &rest[end..];
    }
    let path = strip_newline(trim_start(rest));
    if path.first() != Some(&b'/') {
        return None;
    }
    let inode = std::str::from_utf8(fields[4]).ok()?.parse::<u64>().ok()?;
    if inode == 0 {
        return None;
    }
    let dev = parse_dev(fields[3])?;
    Some(match path.strip_suffix(DELETED) {
        Some(p) => (dev, inode, p, true),
        None => (dev, inode, path, false),
    })
}

/// Decode a raw path from [`parse_line_raw`].
pub fn decode_path(raw: &[u8]) -> PathBuf {
    bytes_to_path(&unescape(raw))
}

/// Parse one line; `None` for anonymous mappings (`[heap]`, `[stack]`, inode 0, ...) and for lines
/// that do not have the expected shape (a malformed line is skipped, never fatal).
pub fn parse_line(line: &[u8]) -> Option<MapEntry> {
    let (dev, inode, path, deleted) = parse_line_raw(line)?;
    Some(MapEntry {
        dev,
        inode,
        path: decode_path(path),
        deleted,
    })
}

/// All file-backed mappings, one entry per line (a library mapped in several segments appears
/// several times; callers dedupe by path).
pub fn parse_maps(text: &[u8]) -> Vec<MapEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

/// `MM:mm` in hex (major can exceed two digits on some systems).
pub fn parse_dev(field: &[u8]) -> Option<DevId> {
    let s = std::str::from_utf8(field).ok()?;
    let (major, minor) = s.split_once(':')?;
    Some(DevId {
        major: u32::from_str_radix(major, 16).ok()?,
        minor: u32::from_str_radix(minor, 16).ok()?,
    })
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

fn strip_newline(s: &[u8]) -> &[u8] {
    s.strip_suffix(b"\r").unwrap_or(s)
}

/// The kernel escapes a newline in a path as `\012` (seq_file_path escapes "\n").
fn unescape(path: &[u8]) -> Vec<u8> {
    if !path.windows(4).any(|w| w == b"\\012") {
        return path.to_vec();
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
55d0c0a00000-55d0c0a2c000 r--p 00000000 08:01 1311007                    /usr/bin/python3.11
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 
7f1c2b400000-7f1c2b5c0000 r-xp 00012000 fd:01 4194305                    /venv/lib/python3.11/site-packages/numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so (deleted)
7f1c2c000000-7f1c2c100000 r--p 00000000 103:02 77                        /home/a user/my env/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so
7f1c2d000000-7f1c2d001000 r--p 00000000 00:2f 12                         /venv/lib/python3.11/site-packages/~umpy/_core/_umath.so
7ffd4e1b2000-7ffd4e1d3000 rw-p 00000000 00:00 0                          [stack]
7ffd4e1fc000-7ffd4e1fe000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn parses_file_backed_lines_only() {
        let entries = parse_maps(FIXTURE.as_bytes());
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].path, PathBuf::from("/usr/bin/python3.11"));
        assert_eq!(entries[0].dev, DevId { major: 8, minor: 1 });
        assert_eq!(entries[0].inode, 1311007);
        assert!(!entries[0].deleted);
    }

    #[test]
    fn deleted_suffix_is_stripped_and_flagged() {
        let e = &parse_maps(FIXTURE.as_bytes())[1];
        assert!(e.deleted);
        assert!(e
            .path
            .to_str()
            .unwrap()
            .ends_with("_multiarray_umath.cpython-311-x86_64-linux-gnu.so"));
        assert_eq!(
            e.dev,
            DevId {
                major: 0xfd,
                minor: 1
            }
        );
    }

    #[test]
    fn hex_devices_and_paths_with_spaces() {
        let e = &parse_maps(FIXTURE.as_bytes())[2];
        assert_eq!(
            e.dev,
            DevId {
                major: 0x103,
                minor: 2
            }
        );
        assert_eq!(
            e.path,
            PathBuf::from(
                "/home/a user/my env/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so"
            )
        );
        let e = &parse_maps(FIXTURE.as_bytes())[3];
        assert_eq!(
            e.dev,
            DevId {
                major: 0,
                minor: 0x2f
            }
        );
    }

    #[test]
    fn escaped_newline_and_malformed_input() {
        let line = b"7f00-7f01 r--p 00000000 08:01 5 /tmp/odd\\012name.so (deleted)";
        let e = parse_line(line).unwrap();
        assert_eq!(e.path, PathBuf::from("/tmp/odd\nname.so"));
        assert!(e.deleted);
        assert!(parse_line(b"").is_none());
        assert!(parse_line(b"7f00-7f01 r--p 00000000 zz:01 5 /x").is_none());
        assert!(parse_line(b"7f00-7f01 r--p 00000000 08:01 notanumber /x").is_none());
    }
}
