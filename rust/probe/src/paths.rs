//! Byte-exact path conversions: paths from `/proc` and from RECORD may not be UTF-8, and a lossy
//! conversion would make us `stat` a different file.

use std::path::{Path, PathBuf};

#[cfg(unix)]
pub fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
pub fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// The first component of `path` below `root` and the rest, if `path` lies under `root`.
pub fn split_under<'a>(path: &'a Path, root: &Path) -> Option<(&'a std::ffi::OsStr, &'a Path)> {
    let rel = path.strip_prefix(root).ok()?;
    let mut comps = rel.components();
    let first = comps.next()?.as_os_str();
    Some((first, comps.as_path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_under_root() {
        let (first, rest) =
            split_under(Path::new("/sp/numpy/_core/x.so"), Path::new("/sp")).unwrap();
        assert_eq!(first, "numpy");
        assert_eq!(rest, Path::new("_core/x.so"));
        assert!(split_under(Path::new("/other/numpy"), Path::new("/sp")).is_none());
        assert!(split_under(Path::new("/sp"), Path::new("/sp")).is_none());
    }
}
