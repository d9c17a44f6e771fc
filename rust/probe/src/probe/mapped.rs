//! The memory map side of the probe: reading `/proc/self/maps`, attributing mapped libraries to
//! site directories, the overlayfs calibration, and the directory stamps that let a check skip
//! the (kernel-expensive) maps read when nothing on disk moved.

use std::path::{Path, PathBuf};

use super::{Mapped, Probe};
use crate::identity::{dir_stamp, file_id, DevId, FileId};
use crate::maps;
use crate::verdict::Signal;

/// Read a whole file with as few `read` calls as possible: each read of `/proc/self/maps` makes
/// the kernel walk the mappings again, and `read_to_end` starts with small reads.
fn read_all(f: &mut std::fs::File, capacity: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; capacity];
    let mut len = 0;
    loop {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// How far maps can be trusted on one device, learned at first sight (overlayfs calibration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DevMode {
    /// maps and stat agree on this device: maps alone is decisive.
    Direct,
    /// overlayfs-style: maps shows another device for the same inode; compare inodes only.
    InodeOnly,
    /// maps and stat disagree on device and inode: compare stat against the first stat.
    StatOnly,
}

impl Probe {
    /// Watch the site directories and every directory between them and a mapped library.
    pub(super) fn watch_new_dirs(&mut self) {
        // only new roots or new mapped libraries can add directories
        let sizes = (self.roots.len(), self.mapped.len());
        if sizes == self.watched_for {
            return;
        }
        self.watched_for = sizes;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for r in &self.roots {
            if !r.excluded || r.is_site() {
                dirs.push(r.path.clone());
            }
        }
        for m in self.mapped.values() {
            let root = &self.roots[self.tops[m.top].root].path;
            let mut dir = m.first_path.parent();
            while let Some(d) = dir {
                if !d.starts_with(root) {
                    break;
                }
                dirs.push(d.to_path_buf());
                if d == root.as_path() {
                    break;
                }
                dir = d.parent();
            }
        }
        for d in dirs {
            if self.watched_set.insert(d.clone()) {
                let stamp = dir_stamp(&d).ok();
                self.watched.push((d, stamp));
            }
        }
    }

    pub(super) fn maps_text(&mut self) -> Option<Vec<u8>> {
        let path = match &self.config.maps_path {
            Some(p) => p.clone(),
            None if cfg!(target_os = "linux") => PathBuf::from("/proc/self/maps"),
            None => return None,
        };
        let capacity = self.maps_capacity.max(64 * 1024);
        match std::fs::File::open(&path).and_then(|mut f| read_all(&mut f, capacity)) {
            Ok(text) => {
                self.maps_capacity = text.len() + 16 * 1024;
                self.maps_error = None;
                Some(text)
            }
            Err(e) => {
                self.maps_error = Some(format!(
                    "cannot read {} ({e}): deleted or moved mapped libraries cannot be seen; file identity and version checks still ran",
                    path.display()
                ));
                None
            }
        }
    }

    /// Which root (longest prefix) a canonical path lies under, with its first component.
    pub(super) fn locate(&self, path: &Path) -> Option<(usize, String, PathBuf)> {
        let mut best: Option<(usize, usize)> = None;
        for (i, r) in self.roots.iter().enumerate() {
            if r.excluded && !r.is_site() {
                continue;
            }
            if path.starts_with(&r.path) {
                let depth = r.path.as_os_str().len();
                if best.map(|b| depth > b.1).unwrap_or(true) {
                    best = Some((i, depth));
                }
            }
        }
        let (root, _) = best?;
        let rel = path.strip_prefix(&self.roots[root].path).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?.to_string();
        Some((root, first, rel.to_path_buf()))
    }

    pub(super) fn scan_maps(&mut self) {
        let Some(text) = self.maps_text() else { return };
        for line in text.split(|&b| b == b'\n') {
            let Some((dev, inode, raw_path, deleted)) = maps::parse_line_raw(line) else {
                continue;
            };
            let key = (dev, inode);
            if self.unrelated_maps.contains(&key) {
                continue;
            }
            if let Some(m) = self.mapped.get(&key) {
                // Steady state: same path, same flag, a device where maps is decisive.
                if m.last_raw == raw_path
                    && m.last_deleted == deleted
                    && self.dev_modes.get(&dev) == Some(&DevMode::Direct)
                {
                    continue;
                }
            }
            let path = maps::decode_path(raw_path);
            if !self.mapped.contains_key(&key) && !self.first_sight(key, &path, deleted) {
                self.unrelated_maps.insert(key);
                continue;
            }
            let signal = self.signal_of(key, &path, deleted);
            let m = self.mapped.get_mut(&key).expect("inserted at first sight");
            m.last_raw = raw_path.to_vec();
            m.last_deleted = deleted;
            // A mapping signal, once seen, stays: the old code is still what runs.
            if m.signal.is_none() {
                m.signal = signal;
            }
        }
    }

    /// A mapped file seen for the first time: attribute it to a top (false when it lies under
    /// no root) and calibrate its device (overlayfs).
    fn first_sight(&mut self, key: (DevId, u64), path: &Path, deleted: bool) -> bool {
        let Some((root, comp, rel)) = self.locate(path) else {
            return false;
        };
        let top = self.top_for(root, &comp, rel.components().count() > 1);
        let first_stat = if deleted { None } else { file_id(path).ok() };
        let maps_id = FileId {
            dev: key.0,
            ino: key.1,
        };
        if let Some(st) = first_stat {
            let mode = if st == maps_id || st.dev == maps_id.dev {
                DevMode::Direct // same device (another inode is a real replacement, judged later)
            } else if st.ino == maps_id.ino {
                DevMode::InodeOnly
            } else {
                DevMode::StatOnly
            };
            self.dev_modes.entry(key.0).or_insert(mode);
        }
        self.mapped.insert(
            key,
            Mapped {
                first_path: path.to_path_buf(),
                top,
                rel,
                maps_id,
                first_stat,
                signal: None,
                last_raw: Vec::new(),
                last_deleted: false,
                dist: None,
            },
        );
        true
    }

    /// What one maps line says about a known mapped file now.
    fn signal_of(&self, key: (DevId, u64), path: &Path, deleted: bool) -> Option<Signal> {
        let m = &self.mapped[&key];
        let root_path = &self.roots[self.tops[m.top].root].path;
        let stashed = path
            .strip_prefix(root_path)
            .ok()
            .and_then(|rel| rel.components().next())
            .and_then(|c| c.as_os_str().to_str())
            .is_some_and(|c| c.starts_with('~'));
        if deleted {
            return Some(Signal::MappedDeleted(m.first_path.clone()));
        }
        if stashed {
            return Some(Signal::MappedStashed(path.to_path_buf()));
        }
        let mode = self.dev_modes.get(&key.0).copied();
        if mode == Some(DevMode::Direct) && m.first_stat.is_none_or(|s| s.dev == m.maps_id.dev) {
            // maps is decisive here; the one stat at first sight catches a replacement that
            // happened before the probe existed.
            let replaced = m.first_stat.is_some_and(|s| s != m.maps_id);
            return replaced.then(|| Signal::MappedReplaced(path.to_path_buf()));
        }
        let same = match file_id(path) {
            Err(_) => false,
            Ok(now) if mode == Some(DevMode::InodeOnly) => now.ino == m.maps_id.ino,
            Ok(now) => Some(now) == m.first_stat,
        };
        (!same).then(|| Signal::MappedReplaced(path.to_path_buf()))
    }
}
