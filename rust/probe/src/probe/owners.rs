//! Which installed distribution owns a file: by name, by `top_level.txt` / RECORD, vendored
//! `X.libs` directories, pip's `~` stash names, and per file for namespace packages shared by
//! several distributions.

use std::collections::HashMap;
use std::path::Path;

use super::{Owner, Probe, Root};
use crate::distinfo::{self, canonicalize};

/// Strip pip's AdjacentTempDirectory prefix: `~umpy` matches `numpy`, `~-mpy` matches `numpy`.
pub(super) fn stash_matches(stash: &str, name: &str) -> bool {
    if !stash.starts_with('~')
        || stash.chars().count() != name.chars().count()
        || name.starts_with('~')
    {
        return false;
    }
    let rest = stash.trim_start_matches(|c: char| "~-.=%0123456789".contains(c));
    !rest.is_empty() && name.ends_with(rest)
}

/// A dist-info of that canonical name in the root, now or when first listed.
pub(super) fn has_dist_info(r: &Root, canon: &str) -> bool {
    r.first_listing
        .as_ref()
        .map(|l| l.dist_infos.contains_key(canon))
        .unwrap_or(false)
        || r.listing
            .as_ref()
            .map(|l| l.dist_infos.contains_key(canon))
            .unwrap_or(false)
}

impl Probe {
    /// Which distribution provides a top: a dist-info of the same name, else top_level.txt /
    /// RECORD of the site directory; `X.libs` belongs to `X`; `~umpy` is pip's stash of `numpy`.
    pub(super) fn resolve(&mut self, t: usize) -> Owner {
        let (root, comp, name) = (
            self.tops[t].root,
            self.tops[t].comp.clone(),
            self.tops[t].module_name.clone(),
        );
        if let Some(d) = self.editable_owner(t) {
            return Owner::Dist(d);
        }
        if comp.starts_with('~') {
            if let Some(other) = (0..self.tops.len())
                .find(|&o| self.tops[o].root == root && stash_matches(&comp, &self.tops[o].comp))
            {
                return self.resolve(other);
            }
            return Owner::Nobody;
        }
        let canon = canonicalize(&name);
        let by_name = |r: &Root| has_dist_info(r, &canon);
        if by_name(&self.roots[root])
            || (!self.roots[root].is_site() && self.roots.iter().any(by_name))
        {
            return Owner::Dist(canon);
        }
        // `numpy.libs` (auditwheel's vendored libraries) belongs to `numpy`
        if let Some(base) = comp.strip_suffix(".libs") {
            let base_canon = canonicalize(base);
            if self.roots.iter().any(|r| has_dist_info(r, &base_canon))
                || self.roots[root].is_site()
            {
                return Owner::Dist(base_canon);
            }
        }
        if self.roots[root].is_site() {
            let index = self.owner_index(root);
            let claimants = index
                .get(&comp)
                .or_else(|| index.get(&name))
                .cloned()
                .unwrap_or_default();
            match claimants.len() {
                0 => {}
                1 => return Owner::Dist(claimants[0].clone()),
                _ => return Owner::Ambiguous(claimants),
            }
        }
        if self.roots[root].is_site() {
            // No dist-info claims it (e.g. uninstalled before the probe existed): report it under
            // its own name rather than lose it.
            Owner::Dist(canon)
        } else {
            Owner::Nobody
        }
    }

    pub(super) fn owner_index(&mut self, root: usize) -> &HashMap<String, Vec<String>> {
        let r = &mut self.roots[root];
        if r.owner_index.is_none() {
            let mut index: HashMap<String, Vec<String>> = HashMap::new();
            if let Some(listing) = &r.listing {
                for di in listing.dist_infos.values() {
                    if let Ok(tops) = distinfo::provided_tops(&r.path.join(&di.dir_name)) {
                        for t in tops {
                            let claim = index.entry(t).or_default();
                            if !claim.contains(&di.canonical) {
                                claim.push(di.canonical.clone());
                            }
                        }
                    }
                }
            }
            r.owner_index = Some(index);
        }
        r.owner_index.as_ref().unwrap()
    }

    /// The distribution owning one file under a top (per-file only for shared namespaces).
    pub(super) fn owner_of(&mut self, top: usize, rel: &Path) -> Option<String> {
        match self.tops[top].owner.clone() {
            Owner::Dist(d) => Some(d),
            Owner::Nobody | Owner::Unresolved => None,
            Owner::Ambiguous(claimants) => {
                let root = self.tops[top].root;
                let key = (root, rel.to_path_buf());
                if let Some(o) = self.file_owner.get(&key) {
                    return o.clone();
                }
                let mut found = None;
                for c in &claimants {
                    let r = &mut self.roots[root];
                    if !r.records.contains_key(c) {
                        let dir = r
                            .listing
                            .as_ref()
                            .and_then(|l| l.dist_infos.get(c))
                            .map(|d| r.path.join(&d.dir_name));
                        let paths = dir
                            .and_then(|d| distinfo::record_paths(&d).ok())
                            .unwrap_or_default();
                        r.records.insert(c.clone(), paths.into_iter().collect());
                    }
                    if r.records[c].contains(rel) {
                        found = Some(c.clone());
                        break;
                    }
                }
                self.file_owner.insert(key, found.clone());
                found
            }
        }
    }
}
