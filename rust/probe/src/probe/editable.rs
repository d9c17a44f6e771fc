//! Editable installs, followed to the files actually loaded. setuptools and uv (which runs the
//! project's build backend) make three kinds:
//! - a `.pth` naming the project folder (setuptools' "compat" mode and src layouts, hatchling):
//!   the folder is on `sys.path`, so it is a root; its modules belong to the `.pth`'s distribution;
//! - a `.pth` importing a finder (`__editable___{name}_{version}_finder`, setuptools' default for
//!   flat layouts): packages load from the folders in the finder's `MAPPING`, which is on no
//!   `sys.path` entry; those folders become roots here;
//! - "strict" mode: a `.pth` naming a tree of links under `build/`: a root like the first kind.
//!
//! Build tools rewrite compiled libraries in place in project folders, so the checks stat those
//! files every time instead of trusting the memory map (see `check.rs`).

use super::{dir_prefix, ModuleInfo, Probe, SysPathEntry};
use crate::distinfo::{self, canonicalize};

impl Probe {
    /// Read the editable `.pth` files of a freshly listed site directory.
    pub(super) fn scan_editables(&mut self, root: usize) {
        let r = &self.roots[root];
        let Some(listing) = r.listing.clone() else {
            return;
        };
        for name in &listing.pth {
            let Some(dist) = distinfo::pth_distribution(name) else {
                continue;
            };
            if !listing.dist_infos.contains_key(&dist) {
                continue; // not an editable install's file (e.g. distutils-precedence.pth)
            }
            let Ok(text) = std::fs::read_to_string(r.path.join(name)) else {
                continue;
            };
            let content = distinfo::parse_pth(&text, &r.path);
            for dir in content.dirs {
                if let Ok(canon) = std::fs::canonicalize(&dir) {
                    self.editables.dirs.insert(canon, dist.clone());
                }
            }
            // only finders: other `.pth` imports (`import sys, types, os; ...`) name no package
            for module in content.imports {
                if module.contains("editable") || module.ends_with("finder") {
                    self.editables.finders.insert(module, dist.clone());
                }
            }
        }
    }

    /// A finder's `MAPPING`: each package folder's parent becomes a root for the files below it.
    pub(super) fn add_finder_mapping(&mut self, finder: &ModuleInfo) {
        for (name, path) in &finder.editable_mapping {
            let (Some(parent), Some(comp)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let (Ok(canon), Some(comp)) = (std::fs::canonicalize(parent), comp.to_str()) else {
                continue;
            };
            if name.contains('.') {
                continue; // only top-level names start a distribution's files
            }
            let root = self.root_for(canon);
            self.editables
                .tops
                .insert((root, comp.to_string()), finder.name.clone());
            let prefix = dir_prefix(parent);
            if !self.editables.entries.iter().any(|e| e.prefix == prefix) {
                self.editables.entries.push(SysPathEntry {
                    given: parent.to_path_buf(),
                    prefix,
                    root: Some(root),
                });
            }
        }
    }

    /// The distribution of a top that an editable install provides, if one does.
    pub(super) fn editable_owner(&self, t: usize) -> Option<String> {
        let top = &self.tops[t];
        if let Some(finder) = self.editables.tops.get(&(top.root, top.comp.clone())) {
            return self.finder_distribution(finder);
        }
        if let Some(d) = self.editables.dirs.get(&self.roots[top.root].path) {
            return Some(d.clone());
        }
        // the finder module itself, in the site directory
        self.editables.finders.get(&top.module_name).cloned()
    }

    /// The distribution a finder belongs to: from the `.pth` that imports it, else from its name
    /// (`__editable___tbkit_cdemo_1_0_finder` -> a dist-info named `tbkit-cdemo`).
    fn finder_distribution(&self, finder: &str) -> Option<String> {
        if let Some(d) = self.editables.finders.get(finder) {
            return Some(d.clone());
        }
        let stem = finder
            .strip_prefix("__editable___")?
            .strip_suffix("_finder")?;
        let stem = canonicalize(stem);
        self.roots
            .iter()
            .filter_map(|r| r.listing.as_ref())
            .flat_map(|l| l.dist_infos.keys())
            .filter(|d| stem.starts_with(&format!("{d}-")))
            .max_by_key(|d| d.len())
            .cloned()
    }
}
