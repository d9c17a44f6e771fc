//! The probe itself: remembers what it saw first (module files, mapped libraries, dist-info
//! directories) and compares with what is on disk now. Python-free: the bindings hand it the
//! modules found in `sys.modules`, and it hands back findings.
//!
//! Vocabulary: a *root* is a `sys.path` directory (or an editable install's project folder); a
//! *top* is a first path component below a root (`numpy`, `six.py`, `numpy.libs`); a *dist* is an
//! installed distribution (a `*.dist-info`). An *epoch* counts calls to `observe`: each top
//! remembers the epoch it was first seen in, and each root the listings it had since, so a
//! distribution's "loaded" dist-info is the one present when its modules were first seen.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::distinfo::{self, canonicalize, Listing};
use crate::identity::{dir_stamp, file_stamp, DevId, DirStamp, FileStamp};
use crate::verdict::Finding;

mod check;
mod dists;
mod editable;
mod mapped;
mod owners;
#[cfg(test)]
mod tests;

use mapped::DevMode;
#[cfg(test)]
use owners::stash_matches;

/// One module from `sys.modules`, read from its `__dict__` only.
#[derive(Debug, Clone, Default)]
pub struct ModuleInfo {
    pub name: String,
    pub file: Option<PathBuf>,
    pub version: Option<String>,
    /// An editable install's finder (`__editable___*_finder`): its `MAPPING` of top-level names to
    /// the project folders they are loaded from.
    pub editable_mapping: Vec<(String, PathBuf)>,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Memory-map listing to read; `None`: `/proc/self/maps` on Linux, nothing elsewhere.
    pub maps_path: Option<PathBuf>,
    /// Directories whose modules belong to no distribution (the standard library).
    pub exclude: Vec<PathBuf>,
    /// Read the maps on every check, even when no watched directory moved (no shortcut).
    pub always_read_maps: bool,
    /// When this process started (ns since the epoch); `None`: read it from the system.
    pub process_start_ns: Option<i128>,
}

/// What a check returns.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

/// One `sys.path` entry: as given, as a byte prefix for module files, and its root.
struct SysPathEntry {
    given: PathBuf,
    prefix: Vec<u8>,
    root: Option<usize>,
}

struct Root {
    path: PathBuf,
    excluded: bool,
    stamp: Option<DirStamp>,
    first_listing: Option<Arc<Listing>>,
    listing: Option<Arc<Listing>>,
    /// Every distinct listing with the epoch it was taken in (oldest first).
    history: Vec<(u64, Arc<Listing>)>,
    listing_error: Option<String>,
    owner_index: Option<HashMap<String, Vec<String>>>,
    records: HashMap<String, HashSet<PathBuf>>,
}

impl Root {
    fn is_site(&self) -> bool {
        let has = |l: &Option<Arc<Listing>>| l.as_ref().is_some_and(|l| !l.dist_infos.is_empty());
        has(&self.first_listing) || has(&self.listing)
    }

    /// The listing in effect at `epoch`.
    fn listing_at(&self, epoch: u64) -> Option<&Listing> {
        self.history
            .iter()
            .rev()
            .find(|(e, _)| *e <= epoch)
            .map(|(_, l)| &**l)
            .or(self.first_listing.as_deref())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Owner {
    Unresolved,
    Dist(String),
    Ambiguous(Vec<String>),
    Nobody,
}

struct Top {
    root: usize,
    comp: String,
    module_name: String,
    /// `module_name` canonicalised, compared with distribution names
    canonical: String,
    version: Option<String>,
    owner: Owner,
    /// The top-level module has a file (a regular package or module, not a namespace).
    has_init: bool,
    /// The `observe` call that first saw it.
    epoch: u64,
}

struct Tracked {
    path: PathBuf,
    top: usize,
    rel: PathBuf,
    first: Result<FileStamp, io::ErrorKind>,
    native: bool,
    /// The owning distribution, once its top is resolved (`Some(None)`: nobody's).
    dist: Option<Option<String>>,
}

struct Mapped {
    first_path: PathBuf,
    top: usize,
    rel: PathBuf,
    maps_id: crate::identity::FileId,
    first_stat: Option<crate::identity::FileId>,
    signal: Option<crate::verdict::Signal>,
    /// The raw maps path and deleted flag last time: unchanged lines are skipped cheaply.
    last_raw: Vec<u8>,
    last_deleted: bool,
    dist: Option<Option<String>>,
}

/// Which dist-info directory: its name and its (inode, ctime) when listed.
type DistInfoKey = (String, (u64, i128));

/// A RECORD content digest (see `distinfo::record_content_digest`); `None`: nothing comparable.
type Digest = Option<(u64, usize)>;

#[derive(Default)]
struct DistState {
    /// The dist-info (name, stamp) whose METADATA gave `current_version`.
    cached: Option<DistInfoKey>,
    current_version: Option<String>,
    degraded: Option<String>,
    /// The content digest of the dist-info first seen (`None`: not taken yet).
    first_digest: Option<Digest>,
    /// The content digest of the dist-info present now, keyed by its (name, inode).
    now_digest: Option<(DistInfoKey, Digest)>,
}

/// Editable installs: which distribution a project folder or a finder's packages belong to.
#[derive(Default)]
struct Editables {
    /// Folders an editable `.pth` puts on `sys.path` (canonical) -> distribution.
    dirs: HashMap<PathBuf, String>,
    /// Finder modules an editable `.pth` imports -> distribution.
    finders: HashMap<String, String>,
    /// (root, top component) mapped by a finder -> the finder module.
    tops: HashMap<(usize, String), String>,
    /// Where finders load packages from, matched like `sys.path` entries.
    entries: Vec<SysPathEntry>,
}

#[derive(Default)]
pub struct Probe {
    config: Config,
    epoch: u64,
    sys_path: Vec<SysPathEntry>,
    roots: Vec<Root>,
    tops: Vec<Top>,
    top_index: HashMap<usize, HashMap<String, usize>>,
    tracked: Vec<Tracked>,
    tracked_paths: HashSet<PathBuf>,
    mapped: HashMap<(DevId, u64), Mapped>,
    unrelated_maps: HashSet<(DevId, u64)>,
    dev_modes: HashMap<DevId, DevMode>,
    dists: HashMap<String, DistState>,
    file_owner: HashMap<(usize, PathBuf), Option<String>>,
    editables: Editables,
    maps_error: Option<String>,
    maps_capacity: usize,
    watched: Vec<(PathBuf, Option<DirStamp>)>,
    watched_set: HashSet<PathBuf>,
    /// (roots, mapped libraries) counted when the watch list was last extended.
    watched_for: (usize, usize),
    force_maps: bool,
    /// Second-level package `__init__`s, tracked when their top turns out to be a namespace.
    pending_children: Vec<(usize, PathBuf, PathBuf)>,
    process_start: Option<Option<i128>>,
}

const NATIVE_SUFFIXES: [&str; 4] = [".so", ".pyd", ".dylib", ".sl"];

fn is_native(path: &Path) -> bool {
    let s = path.to_string_lossy();
    NATIVE_SUFFIXES.iter().any(|suf| s.ends_with(suf)) || s.contains(".so.")
}

/// `six.py` -> `six`; `_cffi_backend.cpython-311-x86_64-linux-gnu.so` -> `_cffi_backend`;
/// `numpy` -> `numpy`.
fn module_name_of(comp: &str, is_dir: bool) -> String {
    if is_dir {
        return comp.to_string();
    }
    comp.split('.').next().unwrap_or(comp).to_string()
}

impl Probe {
    pub fn new(config: Config) -> Self {
        Probe {
            config,
            ..Default::default()
        }
    }

    /// Record what is loaded now and what it looks like on disk (cheap: stat and readdir only).
    /// `sys_path` is Python's `sys.path`; `modules` are the modules not handed in before.
    pub fn observe(&mut self, sys_path: &[PathBuf], modules: &[ModuleInfo]) {
        self.epoch += 1;
        self.update_sys_path(sys_path);
        if !modules.is_empty() {
            // new modules are attributed to the dist-infos present now, not at the baseline
            self.refresh_roots(self.epoch);
            for m in modules.iter().filter(|m| !m.editable_mapping.is_empty()) {
                self.add_finder_mapping(m);
            }
        }
        for m in modules {
            self.ingest(m);
        }
        self.track_namespace_children();
        self.rescan_maps_if_needed(modules.is_empty());
    }

    fn track_namespace_children(&mut self) {
        for (top, file, rel) in std::mem::take(&mut self.pending_children) {
            if !self.tops[top].has_init && self.tracked_paths.insert(file.clone()) {
                self.track(file, top, rel, false);
            }
        }
    }

    fn track(&mut self, path: PathBuf, top: usize, rel: PathBuf, native: bool) {
        let first = file_stamp(&path).map_err(|e| e.kind());
        self.tracked.push(Tracked {
            path,
            top,
            rel,
            first,
            native,
            dist: None,
        });
    }

    /// Reading /proc/self/maps costs the kernel ~0.3 ms with torch loaded. Skip it when nothing
    /// can have changed: no new module, and every watched directory (the site directories and
    /// each directory holding a mapped library) has the same stamp. Unlinking or renaming a file
    /// moves its directory's mtime/ctime, and every install changes a site directory's listing
    /// (the dist-info), so a change on disk always dirties a stamp.
    fn rescan_maps_if_needed(&mut self, no_new_modules: bool) {
        let stamps_before: Vec<Option<DirStamp>> = self
            .watched
            .iter()
            .map(|(d, _)| dir_stamp(d).ok())
            .collect();
        let unchanged = no_new_modules
            && !self.config.always_read_maps
            && !self.force_maps
            && self.maps_error.is_none()
            && !self.watched.is_empty()
            && self
                .watched
                .iter()
                .zip(&stamps_before)
                .all(|((_, old), new)| old.is_some() && old == new);
        if unchanged {
            return;
        }
        // stamps are taken before reading, so a change racing with the read dirties the next check
        for ((_, old), new) in self.watched.iter_mut().zip(stamps_before) {
            *old = new;
        }
        let known = self.watched.len();
        self.scan_maps();
        self.watch_new_dirs();
        // directories first watched just now were stamped after the read, and a stamp from the
        // same clock tick as a change proves nothing: read once more next time in both cases
        self.force_maps = self.watched.len() != known
            || self
                .watched
                .iter()
                .any(|(_, st)| st.map(|s| s.is_recent()).unwrap_or(true));
    }

    fn update_sys_path(&mut self, sys_path: &[PathBuf]) {
        if self.sys_path.len() == sys_path.len()
            && self
                .sys_path
                .iter()
                .zip(sys_path)
                .all(|(a, b)| &a.given == b)
        {
            return;
        }
        let mut entries = Vec::with_capacity(sys_path.len());
        for given in sys_path {
            // "" is the current directory; module files under it are absolute paths
            let raw = if given.as_os_str().is_empty() {
                std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
            } else {
                given.clone()
            };
            let root = std::fs::canonicalize(&raw)
                .ok()
                .filter(|c| c.is_dir())
                .map(|canon| self.root_for(canon));
            entries.push(SysPathEntry {
                given: given.clone(),
                prefix: dir_prefix(&raw),
                root,
            });
        }
        self.sys_path = entries;
    }

    fn root_for(&mut self, canon: PathBuf) -> usize {
        if let Some(i) = self.roots.iter().position(|r| r.path == canon) {
            return i;
        }
        let excluded = self.config.exclude.iter().any(|e| canon.starts_with(e));
        self.roots.push(Root {
            path: canon,
            excluded,
            stamp: None,
            first_listing: None,
            listing: None,
            history: Vec::new(),
            listing_error: None,
            owner_index: None,
            records: HashMap::new(),
        });
        let i = self.roots.len() - 1;
        self.relist(i, self.epoch);
        i
    }

    /// Relist the roots whose directory moved; `epoch` dates the new listings.
    fn refresh_roots(&mut self, epoch: u64) {
        for i in 0..self.roots.len() {
            let root = &self.roots[i];
            let stamp = dir_stamp(&root.path).ok();
            if stamp.is_some() && stamp == root.stamp && !stamp.is_some_and(|s| s.is_recent()) {
                continue;
            }
            self.relist(i, epoch);
        }
    }

    fn relist(&mut self, i: usize, epoch: u64) {
        let root = &mut self.roots[i];
        root.stamp = dir_stamp(&root.path).ok();
        match distinfo::list_site_dir(&root.path) {
            Ok(l) => {
                root.listing_error = None;
                if root.listing.as_deref() == Some(&l) {
                    return;
                }
                let l = Arc::new(l);
                root.history.push((epoch, l.clone()));
                root.first_listing.get_or_insert_with(|| l.clone());
                root.listing = Some(l);
                root.owner_index = None;
                self.scan_editables(i);
            }
            Err(e) => {
                root.listing_error = Some(format!(
                    "cannot list {} ({e}): its distributions were not checked",
                    root.path.display()
                ));
            }
        }
    }

    /// The root (longest matching `sys.path` or finder entry) and the path below it.
    fn place(&self, file: &Path) -> Option<(usize, PathBuf)> {
        // Byte prefixes: this runs once per module. site-packages lies inside the standard
        // library directory, so the longest entry wins.
        let bytes = path_bytes(file);
        let mut best: Option<(usize, usize)> = None;
        for e in self.sys_path.iter().chain(&self.editables.entries) {
            let Some(root) = e.root else { continue };
            if bytes.starts_with(&e.prefix) && best.is_none_or(|b| e.prefix.len() > b.1) {
                best = Some((root, e.prefix.len()));
            }
        }
        let (root, cut) = best?;
        Some((root, crate::paths::bytes_to_path(&bytes[cut..])))
    }

    fn ingest(&mut self, m: &ModuleInfo) {
        let Some(file) = &m.file else { return };
        let Some((root, rel)) = self.place(file) else {
            return;
        };
        if self.roots[root].excluded && !self.roots[root].is_site() {
            return;
        }
        let mut comps = rel.components();
        let Some(first) = comps.next().and_then(|c| c.as_os_str().to_str()) else {
            return;
        };
        let is_dir = comps.next().is_some();
        let top = self.top_for(root, first, is_dir);
        // A top-level module is one whose file *is* the top entry of its root: a vendored
        // module imported by bare name from inside another package's folder (debugpy imports its
        // bundled `pydevd`, whose __version__ is 3.5.0) is not that package's top module and must
        // not lend the distribution its version.
        let is_top_module = !m.name.contains('.') && module_name_of(first, is_dir) == m.name;
        if is_top_module && m.version.is_some() {
            self.tops[top].version = m.version.clone();
        }
        if is_top_module {
            self.tops[top].has_init = true;
        }
        let native = is_native(file);
        // Track the top-level module file and every extension module (~150 paths), and
        // in a namespace package shared by several distributions (`cuda/`, `google/`, `nvidia/`),
        // each second-level package's `__init__`, which is where one distribution starts.
        // (sys.modules order does not always put a parent first, so decide after the batch.)
        let maybe_namespace_child = m.name.matches('.').count() == 1
            && file.file_name().is_some_and(|n| n == "__init__.py");
        if maybe_namespace_child && !is_top_module && !native {
            self.pending_children.push((top, file.clone(), rel));
            return;
        }
        if (is_top_module || native) && self.tracked_paths.insert(file.clone()) {
            self.track(file.clone(), top, rel, native);
        }
    }

    fn top_for(&mut self, root: usize, comp: &str, is_dir: bool) -> usize {
        if let Some(&t) = self.top_index.get(&root).and_then(|m| m.get(comp)) {
            return t;
        }
        let module_name = module_name_of(comp, is_dir);
        self.tops.push(Top {
            root,
            comp: comp.to_string(),
            canonical: canonicalize(&module_name),
            module_name,
            version: None,
            owner: Owner::Unresolved,
            has_init: false,
            epoch: self.epoch,
        });
        let t = self.tops.len() - 1;
        self.top_index
            .entry(root)
            .or_default()
            .insert(comp.to_string(), t);
        t
    }

    /// Every distribution with a module loaded, and its version (the loaded one where known).
    pub fn loaded_distributions(
        &mut self,
        sys_path: &[PathBuf],
        modules: &[ModuleInfo],
    ) -> Vec<(String, String)> {
        drop(self.check(sys_path, modules));
        let mut owners: Vec<String> = Vec::new();
        for i in 0..self.tracked.len() {
            let (top, rel) = (self.tracked[i].top, self.tracked[i].rel.clone());
            owners.extend(self.owner_of(top, &rel));
        }
        for t in &self.tops {
            if let Owner::Dist(d) = &t.owner {
                owners.push(d.clone());
            }
        }
        let mut out: HashMap<String, String> = HashMap::new();
        for d in owners {
            if out.contains_key(&d) {
                continue;
            }
            if let Some(v) = self.pinnable_version(&d) {
                out.insert(d, v);
            }
        }
        let mut v: Vec<(String, String)> = out.into_iter().collect();
        v.sort();
        v
    }
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> &[u8] {
    p.to_str().map(str::as_bytes).unwrap_or(&[])
}

/// A directory as a byte prefix of the files below it (ends with a separator).
fn dir_prefix(dir: &Path) -> Vec<u8> {
    let mut prefix = path_bytes(dir).to_vec();
    let sep = std::path::MAIN_SEPARATOR as u8;
    if prefix.last() != Some(&sep) {
        prefix.push(sep);
    }
    prefix
}
