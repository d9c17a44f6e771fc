//! File identity: `(device, inode)` from `stat`, decoded the same way `/proc/self/maps` prints it,
//! so the two can be compared. Installers never rewrite a file in place (they unlink, then write a
//! new file), so a changed identity means "replaced". mtime is deliberately not used: uv keeps the
//! wheel's mtimes.

use std::io;
use std::path::Path;

/// A device number split into major and minor, as `/proc/self/maps` shows it (`MM:mm` in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

/// Linux/glibc encoding of `dev_t` (see `gnu_dev_major` / `gnu_dev_minor`).
pub fn decode_dev(dev: u64) -> DevId {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    DevId {
        major: major as u32,
        minor: minor as u32,
    }
}

/// What identifies one file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: DevId,
    pub ino: u64,
}

/// A file's identity plus what an in-place rewrite changes: build tools (setuptools'
/// `build_ext --inplace`, which editable installs run) rewrite a compiled library in place, keeping
/// its inode; its modification time and size move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub id: FileId,
    pub mtime_ns: i128,
    pub size: u64,
}

/// A directory's identity plus its change times: any entry created, removed or renamed inside it
/// moves mtime/ctime, so an unchanged stamp means an unchanged listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirStamp {
    pub id: FileId,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl DirStamp {
    /// Changed within the last 100 ms. File-system timestamps are coarse (a kernel tick), so a
    /// second change in the same tick can leave the stamp equal: a recent stamp proves nothing.
    pub fn is_recent(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        now - self.mtime_ns.max(self.ctime_ns) < 100_000_000
    }
}

#[cfg(unix)]
pub fn file_id(path: &Path) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: decode_dev(m.dev()),
        ino: m.ino(),
    })
}

#[cfg(unix)]
pub fn file_stamp(path: &Path) -> io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(FileStamp {
        id: FileId {
            dev: decode_dev(m.dev()),
            ino: m.ino(),
        },
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        size: m.size(),
    })
}

#[cfg(not(unix))]
pub fn file_stamp(path: &Path) -> io::Result<FileStamp> {
    let m = std::fs::metadata(path)?;
    let id = file_id(path)?;
    Ok(FileStamp {
        id,
        mtime_ns: id.ino as i128,
        size: m.len(),
    })
}

/// When this process started, in nanoseconds since the Unix epoch (Linux: `/proc/self/stat`'s
/// start time, in clock ticks since boot, moved onto the wall clock). `None` elsewhere.
#[cfg(target_os = "linux")]
pub fn process_start_ns() -> Option<i128> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the command name (which may hold spaces and parentheses): state is field 3,
    // starttime field 22
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: i128 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf and clock_gettime only read system values into the given struct.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as i128;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if hz <= 0 || unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let boot_now = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    Some(real_now - (boot_now - ticks * 1_000_000_000 / hz))
}

#[cfg(not(target_os = "linux"))]
pub fn process_start_ns() -> Option<i128> {
    None
}

#[cfg(unix)]
pub fn dir_stamp(path: &Path) -> io::Result<DirStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(DirStamp {
        id: FileId {
            dev: decode_dev(m.dev()),
            ino: m.ino(),
        },
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    })
}

// Other platforms: no stable inode in std. We use (size, modification time) as a weaker stand-in
// identity; this path compiles but is not verified by tests (docs/probe.md says so).
#[cfg(not(unix))]
pub fn file_id(path: &Path) -> io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Ok(FileId {
        dev: DevId { major: 0, minor: 0 },
        ino: t ^ m.len().rotate_left(32),
    })
}

#[cfg(not(unix))]
pub fn dir_stamp(path: &Path) -> io::Result<DirStamp> {
    let id = file_id(path)?;
    Ok(DirStamp {
        id,
        mtime_ns: id.ino as i128,
        ctime_ns: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_small_and_large_device_numbers() {
        // makedev(8, 1) = 0x801
        assert_eq!(decode_dev(0x801), DevId { major: 8, minor: 1 });
        // makedev(259, 2): major above 255 goes into bits 8..20
        assert_eq!(
            decode_dev((259 << 8) | 2),
            DevId {
                major: 259,
                minor: 2
            }
        );
        // a minor above 255 (e.g. overlay/anonymous devices 0:300)
        let dev: u64 = ((300u64 & 0xffff_ff00) << 12) | (300 & 0xff);
        assert_eq!(
            decode_dev(dev),
            DevId {
                major: 0,
                minor: 300
            }
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_start_is_in_the_past_and_recent() {
        let start = process_start_ns().expect("linux has /proc/self/stat");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!(
            start <= now && now - start < 3_600 * 1_000_000_000,
            "{start} {now}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn identity_changes_when_a_file_is_replaced_not_when_rewritten_in_place() {
        let dir = std::env::temp_dir().join(format!("tbkit-probe-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a file.so");
        std::fs::write(&f, b"one").unwrap();
        let first = file_id(&f).unwrap();
        std::fs::write(&f, b"two").unwrap(); // in place: same inode
        assert_eq!(file_id(&f).unwrap(), first);
        let g = dir.join("new");
        std::fs::write(&g, b"three").unwrap();
        std::fs::rename(&g, &f).unwrap(); // replaced: new inode
        assert_ne!(file_id(&f).unwrap(), first);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(file_id(&f).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
