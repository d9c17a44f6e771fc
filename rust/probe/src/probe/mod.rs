//! The probe itself: remembers what it saw first (module files, mapped libraries, dist-info
//! directories) and compares with what is on disk now. Python-free: the bindings hand it the
//! modules found in `sys.modules`, and it hands back findings.
//!
//! Vocabulary: a *root* is a `sys.path` directory; a *top* is a first path component below a root
//! (`numpy`, `six.py`, `numpy.libs`); a *dist* is an installed distribution (a `*.dist-info`).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::distinfo::{self, canonicalize, DistInfoDir, Listing};
use crate::elf;
use crate::identity::{dir_stamp, file_id, DevId, DirStamp, FileId};
use crate::verdict::{Facts, Finding, Severity, Signal};

mod mapped;
mod owners;

use mapped::DevMode;
use owners::stash_matches;

/// One module from `sys.modules`, read from its `__dict__` only.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub name: String,
    pub file: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Memory-map listing to read; `None`: `/proc/self/maps` on Linux, nothing elsewhere.
    pub maps_path: Option<PathBuf>,
    /// Directories whose modules belong to no distribution (the standard library).
    pub exclude: Vec<PathBuf>,
    /// Read the maps on every check, even when no watched directory moved (no shortcut).
    pub always_read_maps: bool,
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
    first_listing: Option<Listing>,
    listing: Option<Listing>,
    listing_error: Option<String>,
    owner_index: Option<HashMap<String, Vec<String>>>,
    records: HashMap<String, HashSet<PathBuf>>,
    /// The stamp seen by the previous check (equal to `stamp` when nothing moved since).
    stamp_at_last_check: Option<DirStamp>,
}

impl Root {
    fn is_site(&self) -> bool {
        self.first_listing
            .as_ref()
            .map(|l| !l.dist_infos.is_empty())
            .unwrap_or(false)
            || self
                .listing
                .as_ref()
                .map(|l| !l.dist_infos.is_empty())
                .unwrap_or(false)
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
}

struct Tracked {
    path: PathBuf,
    top: usize,
    rel: PathBuf,
    first: Result<FileId, io::ErrorKind>,
    native: bool,
    /// The owning distribution, once its top is resolved (`Some(None)`: nobody's).
    dist: Option<Option<String>>,
}

struct Mapped {
    first_path: PathBuf,
    top: usize,
    rel: PathBuf,
    maps_id: FileId,
    first_stat: Option<FileId>,
    signal: Option<Signal>,
    /// The raw maps path and deleted flag last time: unchanged lines are skipped cheaply.
    last_raw: Vec<u8>,
    last_deleted: bool,
    dist: Option<Option<String>>,
}

#[derive(Default)]
struct DistState {
    first_ids: HashMap<String, Option<FileId>>,
    cached: Option<(String, Option<FileId>)>,
    current_version: Option<String>,
    degraded: Option<String>,
}

#[derive(Default)]
pub struct Probe {
    config: Config,
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
    maps_error: Option<String>,
    maps_capacity: usize,
    watched: Vec<(PathBuf, Option<DirStamp>)>,
    watched_set: HashSet<PathBuf>,
    /// (roots, mapped libraries) counted when the watch list was last extended.
    watched_for: (usize, usize),
    force_maps: bool,
    /// Second-level package `__init__`s, tracked when their top turns out to be a namespace.
    pending_children: Vec<(usize, PathBuf, PathBuf)>,
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
        self.update_sys_path(sys_path);
        for m in modules {
            self.ingest(m);
        }
        for (top, file, rel) in std::mem::take(&mut self.pending_children) {
            if !self.tops[top].has_init && self.tracked_paths.insert(file.clone()) {
                let first = file_id(&file).map_err(|e| e.kind());
                self.tracked.push(Tracked {
                    path: file,
                    top,
                    rel,
                    first,
                    native: false,
                    dist: None,
                });
            }
        }
        // Reading /proc/self/maps costs the kernel ~0.3 ms with torch loaded. Skip it when nothing
        // can have changed: no new module, and every watched directory (the site directories and
        // each directory holding a mapped library) has the same stamp. Unlinking or renaming a
        // file moves its directory's mtime/ctime, and every install changes a site directory's
        // listing (the dist-info), so a change on disk always dirties a stamp.
        let stamps_before: Vec<Option<DirStamp>> = self
            .watched
            .iter()
            .map(|(d, _)| dir_stamp(d).ok())
            .collect();
        let unchanged = modules.is_empty()
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
            let mut prefix = path_bytes(&raw).to_vec();
            let sep = std::path::MAIN_SEPARATOR as u8;
            if prefix.last() != Some(&sep) {
                prefix.push(sep);
            }
            entries.push(SysPathEntry {
                given: given.clone(),
                prefix,
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
        let mut root = Root {
            path: canon,
            excluded,
            stamp: None,
            first_listing: None,
            listing: None,
            listing_error: None,
            owner_index: None,
            records: HashMap::new(),
            stamp_at_last_check: None,
        };
        refresh_listing(&mut root);
        root.first_listing = root.listing.clone();
        self.roots.push(root);
        self.roots.len() - 1
    }

    fn ingest(&mut self, m: &ModuleInfo) {
        let Some(file) = &m.file else { return };
        // The longest sys.path entry that holds the file decides the root (site-packages lies
        // inside the standard library directory). Byte prefixes: this runs once per module.
        let bytes = path_bytes(file);
        let mut best: Option<(usize, usize)> = None;
        for e in &self.sys_path {
            let Some(root) = e.root else { continue };
            if bytes.starts_with(&e.prefix) && best.map(|b| e.prefix.len() > b.1).unwrap_or(true) {
                best = Some((root, e.prefix.len()));
            }
        }
        let Some((root, cut)) = best else { return };
        let rel = crate::paths::bytes_to_path(&bytes[cut..]);
        let rel = rel.as_path();
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
        // Track the top-level module file and every extension module (PROBE.md: ~150 paths), and
        // in a namespace package shared by several distributions (`cuda/`, `google/`, `nvidia/`),
        // each second-level package's `__init__`, which is where one distribution starts.
        // (sys.modules order does not always put a parent first, so decide after the batch.)
        let maybe_namespace_child = m.name.matches('.').count() == 1
            && file
                .file_name()
                .map(|n| n == "__init__.py")
                .unwrap_or(false);
        if maybe_namespace_child && !is_top_module && !native {
            self.pending_children
                .push((top, file.clone(), rel.to_path_buf()));
            return;
        }
        if (is_top_module || native) && self.tracked_paths.insert(file.clone()) {
            let first = file_id(file).map_err(|e| e.kind());
            self.tracked.push(Tracked {
                path: file.clone(),
                top,
                rel: rel.to_path_buf(),
                first,
                native,
                dist: None,
            });
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
        });
        let t = self.tops.len() - 1;
        self.top_index
            .entry(root)
            .or_default()
            .insert(comp.to_string(), t);
        t
    }

    /// Compare everything with disk now.
    pub fn check(&mut self, sys_path: &[PathBuf], modules: &[ModuleInfo]) -> Report {
        self.observe(sys_path, modules);
        let mut report = Report::default();
        if let Some(e) = &self.maps_error {
            report.findings.push(Finding {
                distribution: "(probe)".into(),
                loaded_version: None,
                disk_version: None,
                change: e.clone(),
                paths: self.config.maps_path.iter().cloned().collect(),
                severity: Severity::ProbeDegraded,
            });
        } else if self.config.maps_path.is_none() && !cfg!(target_os = "linux") {
            report.notes.push(
                "no /proc/self/maps on this platform: only file identity and version checks ran"
                    .into(),
            );
        }
        for i in 0..self.roots.len() {
            self.refresh_root(i);
            if let Some(e) = &self.roots[i].listing_error {
                report.notes.push(e.clone());
            }
        }
        for t in 0..self.tops.len() {
            if self.tops[t].owner == Owner::Unresolved {
                let owner = self.resolve(t);
                self.tops[t].owner = owner;
            }
        }

        // Which distribution owns each tracked and mapped file (resolved once, then cached).
        for i in 0..self.tracked.len() {
            if self.tracked[i].dist.is_none() {
                let (top, rel) = (self.tracked[i].top, self.tracked[i].rel.clone());
                self.tracked[i].dist = Some(self.owner_of(top, &rel));
            }
        }
        let uncached: Vec<(DevId, u64)> = self
            .mapped
            .iter()
            .filter(|(_, m)| m.dist.is_none())
            .map(|(k, _)| *k)
            .collect();
        for key in uncached {
            let (top, rel) = (self.mapped[&key].top, self.mapped[&key].rel.clone());
            let owner = self.owner_of(top, &rel);
            self.mapped.get_mut(&key).unwrap().dist = Some(owner);
        }

        // Gather facts per distribution.
        let mut facts: HashMap<String, Facts> = HashMap::new();
        for t in &self.tracked {
            let Some(Some(dist)) = &t.dist else { continue };
            let f = facts_for(&mut facts, dist);
            f.native |= t.native;
            // An extension module that maps shows on a device where maps is decisive needs no
            // stat: its deletion or replacement shows up in maps (handled below).
            if let Ok(id) = t.first {
                let via_maps = self.maps_error.is_none()
                    && self
                        .mapped
                        .get(&(id.dev, id.ino))
                        .map(|m| m.signal.is_none())
                        .unwrap_or(false)
                    && self.dev_modes.get(&id.dev) == Some(&DevMode::Direct);
                if via_maps {
                    f.files_remain = true;
                    continue;
                }
            }
            let now = file_id(&t.path).map_err(|e| e.kind());
            match (&t.first, &now) {
                (_, Err(io::ErrorKind::NotFound)) => {
                    f.signals.push(Signal::FileMissing(t.path.clone()))
                }
                (Ok(a), Ok(b)) if a != b => f.signals.push(Signal::FileReplaced(t.path.clone())),
                (Err(io::ErrorKind::NotFound), Ok(_)) => {}
                (_, Err(e)) => f.signals.push(Signal::Degraded(format!(
                    "cannot stat {} ({e:?})",
                    t.path.display()
                ))),
                _ => {}
            }
            if now.is_ok() {
                f.files_remain = true;
            }
        }
        for m in self.mapped.values() {
            let Some(Some(dist)) = &m.dist else { continue };
            let f = facts_for(&mut facts, dist);
            f.native = true;
            if let Some(s) = &m.signal {
                f.signals.push(s.clone());
            }
        }
        // pip's stash directories left in a site directory
        for t in 0..self.tops.len() {
            let root = &self.roots[self.tops[t].root];
            let Some(listing) = &root.listing else {
                continue;
            };
            for s in &listing.stash {
                if stash_matches(s, &self.tops[t].comp) {
                    let path = root.path.join(s);
                    if let Owner::Dist(d) = &self.tops[t].owner {
                        facts
                            .entry(d.clone())
                            .or_default()
                            .signals
                            .push(Signal::StashPresent(path));
                    }
                }
            }
        }
        // versions and dist-info per distribution
        let dist_names: Vec<String> = facts.keys().cloned().collect();
        for d in &dist_names {
            self.fill_dist_facts(d, facts.get_mut(d).unwrap());
        }
        let loaded_ids = if facts.values().any(|f| f.needs_build_ids()) {
            elf::loaded_build_ids()
        } else {
            Vec::new()
        };
        let loaded_ids: HashMap<PathBuf, Vec<u8>> = loaded_ids
            .into_iter()
            .map(|(p, id)| (canonical_lenient(&p), id))
            .collect();
        for (dist, f) in facts.iter_mut() {
            if f.needs_build_ids() {
                let paths: Vec<PathBuf> = self
                    .mapped
                    .values()
                    .filter(|m| matches!(&m.dist, Some(Some(d)) if d == dist))
                    .map(|m| self.unstashed(m))
                    .collect();
                let (equal, note) = compare_build_ids(&paths, &loaded_ids);
                f.build_ids_equal = Some(equal);
                f.build_id_note = note;
            }
        }
        let mut names: Vec<&String> = facts.keys().collect();
        names.sort();
        for d in names {
            let f = &facts[d];
            if let Some(severity) = f.severity() {
                report.findings.push(Finding {
                    distribution: d.clone(),
                    loaded_version: f.loaded_version.clone(),
                    disk_version: f.disk_version.clone(),
                    change: f.describe(),
                    paths: f.paths().into_iter().take(20).collect(),
                    severity,
                });
            }
        }
        report
    }

    fn refresh_root(&mut self, i: usize) {
        let root = &mut self.roots[i];
        let stamp = dir_stamp(&root.path).ok();
        root.stamp_at_last_check = if stamp == root.stamp { stamp } else { None };
        if stamp.is_some() && stamp == root.stamp && !stamp.map(|s| s.is_recent()).unwrap_or(true) {
            return;
        }
        refresh_listing(root);
        root.owner_index = None;
    }

    /// Where a mapped library was loaded from: a probe created after pip moved `numpy/` to its
    /// `~umpy/` stash first saw the stash path; the library was loaded (and its build-id is
    /// keyed) under `numpy/`.
    fn unstashed(&self, m: &Mapped) -> PathBuf {
        let top = &self.tops[m.top];
        if !top.comp.starts_with('~') {
            return m.first_path.clone();
        }
        let root = top.root;
        match self
            .tops
            .iter()
            .find(|t| t.root == root && stash_matches(&top.comp, &t.comp))
        {
            Some(orig) => self.roots[root]
                .path
                .join(&orig.comp)
                .join(m.rel.strip_prefix(&top.comp).unwrap_or(&m.rel)),
            None => m.first_path.clone(),
        }
    }

    fn fill_dist_facts(&mut self, dist: &str, f: &mut Facts) {
        // loaded version: `__version__` of a top-level module named like the distribution
        for t in &self.tops {
            if matches!(&t.owner, Owner::Dist(d) if d == dist) && t.canonical == dist {
                if let Some(v) = &t.version {
                    f.loaded_version = Some(v.clone());
                }
            }
        }
        let root = self
            .tops
            .iter()
            .filter(|t| matches!(&t.owner, Owner::Dist(d) if d == dist))
            .map(|t| t.root)
            .find(|&r| {
                self.roots[r]
                    .first_listing
                    .as_ref()
                    .map(|l| l.dist_infos.contains_key(dist))
                    .unwrap_or(false)
                    || self.roots[r]
                        .listing
                        .as_ref()
                        .map(|l| l.dist_infos.contains_key(dist))
                        .unwrap_or(false)
            });
        // editable installs: the dist-info lives in another root
        let root = root.or_else(|| {
            (0..self.roots.len()).find(|&r| {
                self.roots[r]
                    .first_listing
                    .as_ref()
                    .map(|l| l.dist_infos.contains_key(dist))
                    .unwrap_or(false)
            })
        });
        let Some(root) = root else { return };
        let r = &self.roots[root];
        let first: Option<DistInfoDir> = r
            .first_listing
            .as_ref()
            .and_then(|l| l.dist_infos.get(dist).cloned());
        let now: Option<DistInfoDir> = r
            .listing
            .as_ref()
            .and_then(|l| l.dist_infos.get(dist).cloned());
        f.dist_info_at_first_sight = first.is_some();
        f.dist_info_present = now.is_some();
        if f.loaded_version.is_none() {
            f.loaded_version = first.as_ref().map(|d| d.version_in_name.clone());
        }
        let state = self.dists.entry(dist.to_string()).or_default();
        match &now {
            None => {
                if let Some(first) = &first {
                    f.signals
                        .push(Signal::DistInfoGone(r.path.join(&first.dir_name)));
                }
                state.cached = None;
                state.current_version = None;
            }
            Some(di) => {
                let dir = r.path.join(&di.dir_name);
                // a replaced dist-info changes the site directory's listing: while the site dir's
                // stamp holds, the identity seen last is still valid
                let id = match (&state.cached, r.stamp) {
                    (Some((name, id)), Some(st))
                        if name == &di.dir_name
                            && Some(st) == r.stamp_at_last_check
                            && !st.is_recent() =>
                    {
                        *id
                    }
                    _ => file_id(&dir).ok(),
                };
                // the identity of each dist-info directory name when first seen
                let first_id = *state.first_ids.entry(di.dir_name.clone()).or_insert(id);
                if state.cached.as_ref() != Some(&(di.dir_name.clone(), id)) {
                    state.cached = Some((di.dir_name.clone(), id));
                    state.degraded = None;
                    state.current_version = match distinfo::read_metadata_version(&dir) {
                        Ok(Some(v)) => Some(v),
                        Ok(None) => Some(di.version_in_name.clone()),
                        Err(e) => {
                            state.degraded = Some(format!(
                                "cannot read {} ({e}); version taken from the directory name",
                                dir.join("METADATA").display()
                            ));
                            Some(di.version_in_name.clone())
                        }
                    };
                }
                match &first {
                    Some(first) if first.dir_name != di.dir_name => f
                        .signals
                        .push(Signal::DistInfoReplaced(r.path.join(&first.dir_name))),
                    _ if first_id != id => f.signals.push(Signal::DistInfoReplaced(dir.clone())),
                    _ => {}
                }
                if let Some(d) = &state.degraded {
                    f.signals.push(Signal::Degraded(d.clone()));
                }
                f.disk_version = state.current_version.clone();
            }
        }
        f.signals.dedup();
    }

    /// Every distribution with a module loaded, and its version (the loaded one where known).
    pub fn loaded_distributions(
        &mut self,
        sys_path: &[PathBuf],
        modules: &[ModuleInfo],
    ) -> Vec<(String, String)> {
        let report = self.check(sys_path, modules);
        drop(report);
        let mut out: HashMap<String, String> = HashMap::new();
        let mut owners: Vec<String> = Vec::new();
        for i in 0..self.tracked.len() {
            let (top, rel) = (self.tracked[i].top, self.tracked[i].rel.clone());
            if let Some(d) = self.owner_of(top, &rel) {
                owners.push(d);
            }
        }
        for t in &self.tops {
            if let Owner::Dist(d) = &t.owner {
                owners.push(d.clone());
            }
        }
        for d in owners {
            if out.contains_key(&d) {
                continue;
            }
            let mut f = Facts::default();
            self.fill_dist_facts(&d, &mut f);
            if !f.dist_info_at_first_sight && !f.dist_info_present {
                continue; // not an installed distribution
            }
            // The dist-info's own spelling when it agrees with what is loaded: that is what pip
            // compares a pin with (torch's `__version__` says 2.15.0+cu132, its METADATA 2.15.0,
            // and a pin with a local label would not match the installed 2.15.0).
            let version = match (&f.loaded_version, &f.disk_version) {
                (Some(l), Some(d)) if distinfo::versions_match(l, d) => Some(d.clone()),
                (Some(l), _) => Some(l.clone()),
                (None, d) => d.clone(),
            };
            if let Some(v) = version {
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

/// The facts of one distribution, allocating its key only the first time (this runs per file).
fn facts_for<'a>(facts: &'a mut HashMap<String, Facts>, dist: &str) -> &'a mut Facts {
    if !facts.contains_key(dist) {
        facts.insert(dist.to_string(), Facts::default());
    }
    facts.get_mut(dist).expect("inserted above")
}

fn refresh_listing(root: &mut Root) {
    root.stamp = dir_stamp(&root.path).ok();
    match distinfo::list_site_dir(&root.path) {
        Ok(l) => {
            root.listing = Some(l);
            root.listing_error = None;
        }
        Err(e) => {
            root.listing_error = Some(format!(
                "cannot list {} ({e}): its distributions were not checked",
                root.path.display()
            ));
        }
    }
}

/// The canonical form of a path whose file may be gone: canonicalize the directory.
fn canonical_lenient(p: &Path) -> PathBuf {
    if let (Some(parent), Some(name)) = (p.parent(), p.file_name()) {
        if let Ok(c) = std::fs::canonicalize(parent) {
            return c.join(name);
        }
    }
    p.to_path_buf()
}

/// Build-ids of the mapped libraries in memory against the files now at the same paths.
fn compare_build_ids(
    paths: &[PathBuf],
    loaded: &HashMap<PathBuf, Vec<u8>>,
) -> (bool, Option<String>) {
    let mut compared = 0;
    for p in paths {
        let Some(mem) = loaded.get(p) else {
            if is_native(p) {
                // a library whose loaded copy carries no build-id proves nothing either way
                return (
                    false,
                    Some(format!(
                        "{} has no build-id in memory to compare",
                        p.display()
                    )),
                );
            }
            continue; // a data file mapped with mmap
        };
        match elf::build_id_of_file(p) {
            Ok(Some(disk)) if &disk == mem => compared += 1,
            Ok(Some(_)) => {
                return (
                    false,
                    Some(format!(
                        "build-id of {} differs from the loaded copy",
                        p.display()
                    )),
                )
            }
            Ok(None) => {
                return (
                    false,
                    Some(format!(
                        "{} on disk has no build-id to compare",
                        p.display()
                    )),
                )
            }
            Err(e) => {
                return (
                    false,
                    Some(format!(
                        "cannot read {} to compare build-ids ({e})",
                        p.display()
                    )),
                )
            }
        }
    }
    if compared == 0 {
        return (false, Some("no build-id could be compared".into()));
    }
    (true, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stash_names() {
        assert!(stash_matches("~umpy", "numpy"));
        assert!(stash_matches("~umpy.libs", "numpy.libs"));
        assert!(stash_matches("~-mpy", "numpy"));
        assert!(!stash_matches("~umpy", "scipy"));
        assert!(!stash_matches("numpy", "numpy"));
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name_of("six.py", false), "six");
        assert_eq!(
            module_name_of("_cffi_backend.cpython-311-x86_64-linux-gnu.so", false),
            "_cffi_backend"
        );
        assert_eq!(module_name_of("numpy.libs", true), "numpy.libs");
    }

    /// A hand-made site directory (named `site_dir_name`, under a fresh temp folder) holding one
    /// native "distribution" `pkg` 1.0: `pkg/__init__.py`, `pkg/_ext.so` and its dist-info; plus
    /// the two `ModuleInfo`s an import of it leaves in `sys.modules`.
    #[cfg(unix)]
    struct FakeSite {
        base: PathBuf,
        site: PathBuf,
        so: PathBuf,
        id: FileId,
        maps_path: PathBuf,
    }

    #[cfg(unix)]
    impl FakeSite {
        fn new(tag: &str, site_dir_name: &str) -> Self {
            let base =
                std::env::temp_dir().join(format!("tbkit-probe-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            let site = base.join(site_dir_name);
            std::fs::create_dir_all(site.join("pkg")).unwrap();
            std::fs::create_dir_all(site.join("pkg-1.0.dist-info")).unwrap();
            std::fs::write(
                site.join("pkg-1.0.dist-info/METADATA"),
                "Name: pkg\nVersion: 1.0\n\n",
            )
            .unwrap();
            std::fs::write(site.join("pkg/__init__.py"), "").unwrap();
            let site = std::fs::canonicalize(&site).unwrap();
            let so = site.join("pkg/_ext.so");
            std::fs::write(&so, b"\x7fELF").unwrap();
            let id = file_id(&so).unwrap();
            let maps_path = base.join("maps");
            FakeSite {
                base,
                site,
                so,
                id,
                maps_path,
            }
        }

        /// One maps line for `_ext.so` with its real device and inode.
        fn maps_line(&self, deleted: bool) -> String {
            format!(
                "7f00-7f01 r-xp 00000000 {:02x}:{:02x} {} {}{}\n",
                self.id.dev.major,
                self.id.dev.minor,
                self.id.ino,
                self.so.display(),
                if deleted { " (deleted)" } else { "" }
            )
        }

        fn sys_path(&self) -> Vec<PathBuf> {
            vec![self.site.clone()]
        }

        fn modules(&self) -> Vec<ModuleInfo> {
            vec![
                ModuleInfo {
                    name: "pkg".into(),
                    file: Some(self.site.join("pkg/__init__.py")),
                    version: Some("1.0".into()),
                },
                ModuleInfo {
                    name: "pkg._ext".into(),
                    file: Some(self.so.clone()),
                    version: None,
                },
            ]
        }

        fn probe(&self, always_read_maps: bool) -> Probe {
            Probe::new(Config {
                maps_path: Some(self.maps_path.clone()),
                always_read_maps,
                ..Default::default()
            })
        }
    }

    #[cfg(unix)]
    impl Drop for FakeSite {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    /// overlayfs (Docker, Colab): maps shows the lower layer's device, stat the overlay's. The
    /// probe calibrates at first sight (same inode, other device: compare inodes only), gives no
    /// false alarm, and still sees a replacement that maps does not mark ` (deleted)`.
    #[cfg(unix)]
    #[test]
    fn overlayfs_calibration() {
        let fake = FakeSite::new("ovl", "site");
        let (site, so, ino) = (fake.site.clone(), fake.so.clone(), fake.id.ino);
        // device 00:99 is not the device stat reports: what older kernels show on overlayfs
        std::fs::write(
            &fake.maps_path,
            format!("7f00-7f01 r-xp 00000000 00:99 {ino} {}\n", so.display()),
        )
        .unwrap();
        let mut probe = fake.probe(false);
        let (sys_path, modules) = (fake.sys_path(), fake.modules());
        let r = probe.check(&sys_path, &modules);
        assert!(
            r.findings.is_empty(),
            "no false alarm on overlayfs: {:?}",
            r.findings
        );
        assert_eq!(
            probe.dev_modes.get(&DevId {
                major: 0,
                minor: 0x99
            }),
            Some(&DevMode::InodeOnly)
        );
        assert!(probe.check(&sys_path, &[]).findings.is_empty());
        // replaced through the overlay: maps keeps the old path without " (deleted)"
        std::fs::write(site.join("pkg/new.so"), b"\x7fELF new").unwrap();
        std::fs::rename(site.join("pkg/new.so"), &so).unwrap();
        let r = probe.check(&sys_path, &[]);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert_eq!(r.findings[0].severity, Severity::RestartRequired);
        assert!(
            r.findings[0]
                .change
                .contains("mapped files replaced on disk"),
            "{}",
            r.findings[0].change
        );
    }

    /// The maps shortcut: with no new module and no watched directory moved, the maps are not
    /// re-read (a change visible only in the maps file is not seen), unless `always_read_maps`.
    /// Any change on disk under a watched directory ends the shortcut.
    #[cfg(unix)]
    #[test]
    fn maps_are_reread_only_when_a_watched_directory_moves() {
        let fake = FakeSite::new("gate", "site");
        let so = fake.so.clone();
        std::fs::write(&fake.maps_path, fake.maps_line(false)).unwrap();
        let (sys_path, modules) = (fake.sys_path(), fake.modules());
        let mut lazy = fake.probe(false);
        let mut eager = fake.probe(true);
        assert!(lazy.check(&sys_path, &modules).findings.is_empty());
        assert!(eager.check(&sys_path, &modules).findings.is_empty());
        // let the directory stamps age past the coarse-clock window, then settle the shortcut
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(lazy.check(&sys_path, &[]).findings.is_empty());
        assert!(lazy.check(&sys_path, &[]).findings.is_empty());
        // only the maps text changes (nothing on disk): the shortcut holds, the eager probe sees it
        std::fs::write(&fake.maps_path, fake.maps_line(true)).unwrap();
        assert!(lazy.check(&sys_path, &[]).findings.is_empty());
        assert_eq!(eager.check(&sys_path, &[]).findings.len(), 1);
        // the library is really unlinked: its directory moves, the lazy probe re-reads and sees it
        std::fs::remove_file(&so).unwrap();
        let r = lazy.check(&sys_path, &[]);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert!(
            r.findings[0].change.contains("mapped files deleted"),
            "{}",
            r.findings[0].change
        );
    }

    /// A fake site directory with one native "distribution", a fake maps file, and the whole
    /// pipeline: clean, then the library deleted, then the dist-info replaced by a new version.
    #[cfg(unix)]
    #[test]
    fn end_to_end_on_a_fake_site_dir() {
        let fake = FakeSite::new("e2e", "site packages"); // a space on purpose
        let (site, so, maps_path) = (fake.site.clone(), fake.so.clone(), fake.maps_path.clone());
        let line = |deleted: bool| fake.maps_line(deleted);
        std::fs::write(&maps_path, line(false)).unwrap();
        let mut probe = fake.probe(false);
        let (sys_path, modules) = (fake.sys_path(), fake.modules());
        probe.observe(&sys_path, &modules);
        let r = probe.check(&sys_path, &[]);
        assert!(r.findings.is_empty(), "{:?}", r.findings);

        // upgrade: the library unlinked, a new dist-info
        std::fs::write(&maps_path, line(true)).unwrap();
        std::fs::remove_file(&so).unwrap();
        std::fs::rename(
            site.join("pkg-1.0.dist-info"),
            site.join("pkg-2.0.dist-info"),
        )
        .unwrap();
        std::fs::write(
            site.join("pkg-2.0.dist-info/METADATA"),
            "Name: pkg\nVersion: 2.0\n\n",
        )
        .unwrap();
        let r = probe.check(&sys_path, &[]);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        let f = &r.findings[0];
        assert_eq!(f.distribution, "pkg");
        assert_eq!(f.severity, Severity::RestartRequired);
        assert_eq!(f.loaded_version.as_deref(), Some("1.0"));
        assert_eq!(f.disk_version.as_deref(), Some("2.0"));
        assert!(
            f.change.contains("mapped files deleted (replaced on disk)"),
            "{}",
            f.change
        );

        // a fresh probe after the damage still sees it (maps + in-memory version)
        let mut late = fake.probe(false);
        let r = late.check(&sys_path, &modules);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert_eq!(r.findings[0].severity, Severity::RestartRequired);

        // no maps at all: a degraded finding, not a panic
        let mut blind = Probe::new(Config {
            maps_path: Some(fake.base.join("no such maps")),
            ..Default::default()
        });
        let r = blind.check(&sys_path, &modules);
        assert!(r
            .findings
            .iter()
            .any(|f| f.severity == Severity::ProbeDegraded && f.distribution == "(probe)"));
    }
}
