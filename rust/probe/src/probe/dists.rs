//! Per distribution: which dist-info it was loaded with (the one present when its modules were
//! first seen), which one is on disk now, the versions of both, and whether the files a RECORD
//! lists are still those it listed then.

use crate::distinfo::{self, DistInfoDir};
use crate::verdict::{Facts, Signal};

use super::{Digest, Owner, Probe};

impl Probe {
    /// The root holding a distribution's dist-info and the epoch its modules were first seen in.
    fn dist_home(&self, dist: &str) -> Option<(usize, u64)> {
        let owned = |o: &Owner| match o {
            Owner::Dist(d) => d == dist,
            Owner::Ambiguous(c) => c.iter().any(|d| d == dist),
            _ => false,
        };
        let has_info = |r: usize| {
            let root = &self.roots[r];
            let has = |l: &Option<std::sync::Arc<distinfo::Listing>>| {
                l.as_ref().is_some_and(|l| l.dist_infos.contains_key(dist))
            };
            root.history
                .iter()
                .any(|(_, l)| l.dist_infos.contains_key(dist))
                || has(&root.listing)
        };
        let tops = self.tops.iter().filter(|t| owned(&t.owner));
        let epoch = tops.clone().map(|t| t.epoch).min().unwrap_or(0);
        // editable installs: the dist-info lives in another root than the modules
        let root = tops
            .map(|t| t.root)
            .find(|&r| has_info(r))
            .or_else(|| (0..self.roots.len()).find(|&r| has_info(r)))?;
        Some((root, epoch))
    }

    /// `__version__` of a top-level module named like the distribution.
    fn version_by_name(&self, dist: &str) -> Option<String> {
        self.tops
            .iter()
            .filter(|t| matches!(&t.owner, Owner::Dist(d) if d == dist) && t.canonical == dist)
            .filter_map(|t| t.version.clone())
            .next_back()
    }

    pub(super) fn fill_dist_facts(&mut self, dist: &str, f: &mut Facts) {
        f.loaded_version = self.version_by_name(dist);
        let Some((root, epoch)) = self.dist_home(dist) else {
            return;
        };
        let r = &self.roots[root];
        let first: Option<DistInfoDir> = r
            .listing_at(epoch)
            .and_then(|l| l.dist_infos.get(dist).cloned());
        let now: Option<DistInfoDir> = r
            .listing
            .as_ref()
            .and_then(|l| l.dist_infos.get(dist).cloned());
        f.dist_info_at_first_sight = first.is_some();
        f.dist_info_present = now.is_some();
        if f.loaded_version.is_none() {
            // the dist-info present when its modules were first seen: what was imported
            f.loaded_version = first.as_ref().map(|d| d.version_in_name.clone());
        }
        match &now {
            None => {
                if let Some(first) = &first {
                    f.signals
                        .push(Signal::DistInfoGone(r.path.join(&first.dir_name)));
                }
                let state = self.dists.entry(dist.to_string()).or_default();
                state.cached = None;
                state.current_version = None;
            }
            Some(di) => self.present_dist_info(dist, root, first.as_ref(), di, f),
        }
        f.signals.dedup();
    }

    fn present_dist_info(
        &mut self,
        dist: &str,
        root: usize,
        first: Option<&DistInfoDir>,
        di: &DistInfoDir,
        f: &mut Facts,
    ) {
        let site = self.roots[root].path.clone();
        let dir = site.join(&di.dir_name);
        let state = self.dists.entry(dist.to_string()).or_default();
        let key = (di.dir_name.clone(), di.stamp);
        // a dist-info replaced under the same name is a new directory: a new inode in the listing
        if state.cached.as_ref() != Some(&key) {
            state.cached = Some(key);
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
        if state.first_digest.is_none() {
            // the RECORD of the dist-info first seen, while it is still there
            state.first_digest = Some(match first {
                Some(fi) if fi.dir_name == di.dir_name && fi.stamp == di.stamp => {
                    distinfo::content_digest(&dir).ok().flatten()
                }
                _ => None,
            });
        }
        match first {
            Some(first) if first.dir_name != di.dir_name => f
                .signals
                .push(Signal::DistInfoReplaced(site.join(&first.dir_name))),
            Some(first) if first.stamp != di.stamp => f.signals.push(Signal::DistInfoReplaced(dir)),
            _ => {}
        }
        if let Some(d) = &state.degraded {
            f.signals.push(Signal::Degraded(d.clone()));
        }
        f.disk_version = state.current_version.clone();
    }

    /// RECORD hashes now against those of the dist-info first seen (`None`: not comparable).
    pub(super) fn content_same(&mut self, dist: &str) -> Option<bool> {
        let (root, _) = self.dist_home(dist)?;
        let r = &self.roots[root];
        let di = r.listing.as_ref()?.dist_infos.get(dist)?;
        let dir = r.path.join(&di.dir_name);
        let key = (di.dir_name.clone(), di.stamp);
        let state = self.dists.get_mut(dist)?;
        let first: Digest = state.first_digest.flatten();
        let now: Digest = match &state.now_digest {
            Some((k, d)) if *k == key => *d,
            _ => {
                let d = distinfo::content_digest(&dir).ok().flatten();
                state.now_digest = Some((key, d));
                d
            }
        };
        Some(first? == now?)
    }

    /// A distribution's version for pins: the dist-info's own spelling when it agrees with what
    /// is loaded (torch's `__version__` says 2.15.0+cu132, its METADATA 2.15.0, and a pin with a
    /// local label would not match the installed 2.15.0); `None` when it is not installed.
    pub(super) fn pinnable_version(&mut self, dist: &str) -> Option<String> {
        let mut f = Facts::default();
        self.fill_dist_facts(dist, &mut f);
        if !f.dist_info_at_first_sight && !f.dist_info_present {
            return None; // not an installed distribution
        }
        match (&f.loaded_version, &f.disk_version) {
            (Some(l), Some(d)) if distinfo::versions_match(l, d) => Some(d.clone()),
            (Some(l), _) => Some(l.clone()),
            (None, d) => d.clone(),
        }
    }
}
