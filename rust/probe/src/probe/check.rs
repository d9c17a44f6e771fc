//! `Probe::check`, phase by phase: refresh what is on disk, attribute every loaded file to its
//! distribution, gather the facts per distribution, compare contents where versions agree, and
//! turn the facts into findings.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::elf;
use crate::identity::{dir_stamp, file_stamp, process_start_ns, DevId};
use crate::verdict::{Facts, Finding, Severity, Signal};

use super::mapped::DevMode;
use super::owners::stash_matches;
use super::{is_native, ModuleInfo, Owner, Probe, Report, Tracked};

/// A stash folder dated this long before the process start is older than the process (the start
/// time is known to a clock tick; the margin absorbs that and clock adjustments).
const PREDATES_MARGIN_NS: i128 = 200_000_000;

/// Facts per distribution, plus the stash folders that predate the process.
#[derive(Default)]
struct Gathered {
    facts: HashMap<String, Facts>,
    preexisting: Vec<(String, PathBuf)>,
}

impl Probe {
    /// Compare everything with disk now.
    pub fn check(&mut self, sys_path: &[PathBuf], modules: &[ModuleInfo]) -> Report {
        self.observe(sys_path, modules);
        let mut report = Report::default();
        self.note_maps_state(&mut report);
        self.refresh_roots(self.epoch + 1);
        report
            .notes
            .extend(self.roots.iter().filter_map(|r| r.listing_error.clone()));
        self.attribute_files();
        let mut g = Gathered::default();
        self.gather_tracked(&mut g.facts);
        self.gather_mapped(&mut g.facts);
        self.gather_stashes(&mut g);
        let names: Vec<String> = g.facts.keys().cloned().collect();
        for d in &names {
            self.fill_dist_facts(d, g.facts.get_mut(d).expect("listed above"));
        }
        self.compare_builds(&mut g.facts);
        for d in &names {
            let f = g.facts.get_mut(d).expect("listed above");
            if f.needs_content() {
                f.content_same = self.content_same(d);
            }
        }
        findings_into(&g, &mut report);
        report
    }

    fn note_maps_state(&self, report: &mut Report) {
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
    }

    /// Which distribution owns each top, tracked file and mapped file (resolved once, then cached).
    fn attribute_files(&mut self) {
        for t in 0..self.tops.len() {
            if self.tops[t].owner == Owner::Unresolved {
                let owner = self.resolve(t);
                self.tops[t].owner = owner;
            }
        }
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
            self.mapped.get_mut(&key).expect("listed above").dist = Some(owner);
        }
    }

    /// An extension module under a site directory, mapped on a device where maps is decisive,
    /// needs no stat: its deletion or replacement shows in maps. Elsewhere (an editable install's
    /// project folder, where build tools rewrite libraries in place) it is stat'ed every time.
    fn seen_through_maps(&self, t: &Tracked) -> bool {
        let Ok(first) = t.first else { return false };
        let id = first.id;
        self.maps_error.is_none()
            && self.roots[self.tops[t.top].root].is_site()
            && self
                .mapped
                .get(&(id.dev, id.ino))
                .is_some_and(|m| m.signal.is_none())
            && self.dev_modes.get(&id.dev) == Some(&DevMode::Direct)
    }

    fn gather_tracked(&self, facts: &mut HashMap<String, Facts>) {
        for t in &self.tracked {
            let Some(Some(dist)) = &t.dist else { continue };
            let f = facts_for(facts, dist);
            f.native |= t.native;
            if self.seen_through_maps(t) {
                f.files_remain = true;
                continue;
            }
            let now = file_stamp(&t.path).map_err(|e| e.kind());
            let in_site = self.roots[self.tops[t.top].root].is_site();
            match (&t.first, &now) {
                (_, Err(io::ErrorKind::NotFound)) => {
                    f.signals.push(Signal::FileMissing(t.path.clone()))
                }
                // installers replace files; a site directory's file with its old inode number
                // but another stamp is a new file that reused the number
                (Ok(a), Ok(b)) if a.id != b.id || (in_site && a != b) => {
                    f.signals.push(Signal::FileReplaced(t.path.clone()));
                    // no RECORD describes a project folder's files: replaced means changed
                    f.unrecorded_change |= !in_site && !t.native;
                }
                // build tools rewrite in place in project folders
                (Ok(a), Ok(b)) if a != b => {
                    f.signals.push(Signal::FileRewritten(t.path.clone()));
                    f.native_rewritten |= t.native;
                    f.unrecorded_change |= !t.native;
                }
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
    }

    fn gather_mapped(&self, facts: &mut HashMap<String, Facts>) {
        for m in self.mapped.values() {
            let Some(Some(dist)) = &m.dist else { continue };
            let f = facts_for(facts, dist);
            f.native = true;
            if let Some(s) = &m.signal {
                f.signals.push(s.clone());
            }
        }
    }

    /// pip's stash folders left in a site directory: an install in progress or one that died.
    /// One older than this process cannot concern what it loaded.
    fn gather_stashes(&mut self, g: &mut Gathered) {
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        for top in &self.tops {
            let root = &self.roots[top.root];
            let (Some(listing), Owner::Dist(d)) = (&root.listing, &top.owner) else {
                continue;
            };
            for s in listing.stash.iter().filter(|s| stash_matches(s, &top.comp)) {
                found.push((d.clone(), root.path.join(s)));
            }
        }
        for (dist, path) in found {
            if self.predates_process(&path) {
                facts_for(&mut g.facts, &dist);
                g.preexisting.push((dist, path));
            } else {
                facts_for(&mut g.facts, &dist)
                    .signals
                    .push(Signal::StashPresent(path));
            }
        }
    }

    fn predates_process(&mut self, path: &Path) -> bool {
        let configured = self.config.process_start_ns;
        let start = *self
            .process_start
            .get_or_insert_with(|| configured.or_else(process_start_ns));
        let (Some(start), Ok(stamp)) = (start, dir_stamp(path)) else {
            return false; // cannot tell: keep the safe verdict
        };
        stamp.ctime_ns.max(stamp.mtime_ns) < start - PREDATES_MARGIN_NS
    }

    /// Build-ids of the loaded libraries in memory against the files on disk, for the
    /// distributions whose same-version change needs them.
    fn compare_builds(&self, facts: &mut HashMap<String, Facts>) {
        if !facts.values().any(|f| f.needs_build_ids()) {
            return;
        }
        let loaded: HashMap<PathBuf, Vec<u8>> = elf::loaded_build_ids()
            .into_iter()
            .map(|(p, id)| (canonical_lenient(&p), id))
            .collect();
        for (dist, f) in facts.iter_mut().filter(|(_, f)| f.needs_build_ids()) {
            let mut paths: Vec<PathBuf> = self
                .mapped
                .values()
                .filter(|m| matches!(&m.dist, Some(Some(d)) if d == dist))
                .map(|m| self.unstashed(m))
                .collect();
            // extension modules loaded through a symlink (uv --link-mode=symlink) map under the
            // link's target, outside any site directory: compare them under their own path too
            for t in &self.tracked {
                if t.native && matches!(&t.dist, Some(Some(d)) if d == dist) {
                    let p = canonical_lenient(&t.path);
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
            }
            let (equal, note) = compare_build_ids(&paths, &loaded);
            f.build_ids_equal = Some(equal);
            f.build_id_note = note;
        }
    }

    /// Where a mapped library was loaded from: a probe created after pip moved `numpy/` to its
    /// `~umpy/` stash first saw the stash path; the library was loaded (and its build-id is
    /// keyed) under `numpy/`.
    fn unstashed(&self, m: &super::Mapped) -> PathBuf {
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
}

fn findings_into(g: &Gathered, report: &mut Report) {
    let mut names: Vec<&String> = g.facts.keys().collect();
    names.sort();
    for d in names {
        let f = &g.facts[d];
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
    for (d, path) in &g.preexisting {
        let f = &g.facts[d];
        report.findings.push(Finding {
            distribution: d.clone(),
            loaded_version: f.loaded_version.clone(),
            disk_version: f.disk_version.clone(),
            change: format!(
                "pip's stash folder {} was left by an install interrupted before this process \
                 started; what this process loaded is not affected and a restart would not \
                 remove it. Remove it with: {}",
                path.display(),
                removal_command(path)
            ),
            paths: vec![path.clone()],
            severity: Severity::Preexisting,
        });
    }
}

/// The shell command that removes a folder, quoted for the platform's shell.
fn removal_command(path: &Path) -> String {
    let p = path.display().to_string();
    if cfg!(windows) {
        format!("rmdir /s /q \"{p}\"")
    } else {
        format!("rm -rf '{}'", p.replace('\'', "'\\''"))
    }
}

/// The facts of one distribution, allocating its key only the first time (this runs per file).
fn facts_for<'a>(facts: &'a mut HashMap<String, Facts>, dist: &str) -> &'a mut Facts {
    if !facts.contains_key(dist) {
        facts.insert(dist.to_string(), Facts::default());
    }
    facts.get_mut(dist).expect("inserted above")
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
                let note = format!("{} has no build-id in memory to compare", p.display());
                return (false, Some(note));
            }
            continue; // a data file mapped with mmap
        };
        let problem = match elf::build_id_of_file(p) {
            Ok(Some(disk)) if &disk == mem => {
                compared += 1;
                continue;
            }
            Ok(Some(_)) => format!("build-id of {} differs from the loaded copy", p.display()),
            Ok(None) => format!("{} on disk has no build-id to compare", p.display()),
            Err(e) => format!("cannot read {} to compare build-ids ({e})", p.display()),
        };
        return (false, Some(problem));
    }
    if compared == 0 {
        return (false, Some("no build-id could be compared".into()));
    }
    (true, None)
}
