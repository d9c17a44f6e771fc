//! What the probe concludes per distribution: the signals seen, and the severity they add up to
//! (docs/probe.md, "severity").

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Benign,
    /// Found, but older than this process (a stash left by an install that died before it
    /// started): the code loaded here is not affected, and a restart would not clear it.
    Preexisting,
    ProbeDegraded,
    ChangedPurePython,
    RestartRequired,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::RestartRequired => "restart_required",
            Severity::ChangedPurePython => "changed_pure_python",
            Severity::Benign => "benign",
            Severity::Preexisting => "preexisting",
            Severity::ProbeDegraded => "probe_degraded",
        }
    }
}

/// One observation about a distribution's files, dist-info or version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A mapped file of this distribution was unlinked (` (deleted)` in maps).
    MappedDeleted(PathBuf),
    /// A mapped file now lives in pip's `~` stash (the path moved).
    MappedStashed(PathBuf),
    /// The file at a mapped path is no longer the mapped inode, or is gone.
    MappedReplaced(PathBuf),
    /// A module file's identity changed against the first time the probe saw it.
    FileReplaced(PathBuf),
    /// A module file was rewritten in place (same inode, other modification time or size).
    FileRewritten(PathBuf),
    /// A module file is gone.
    FileMissing(PathBuf),
    /// The dist-info directory seen first is gone and no other version replaced it.
    DistInfoGone(PathBuf),
    /// The dist-info directory was replaced (same name or renamed).
    DistInfoReplaced(PathBuf),
    /// pip's stash directory for this distribution is present: an install is mid-way or died.
    StashPresent(PathBuf),
    /// The probe could not look at something (permission, unreadable file).
    Degraded(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub distribution: String,
    pub loaded_version: Option<String>,
    pub disk_version: Option<String>,
    pub change: String,
    pub paths: Vec<PathBuf>,
    pub severity: Severity,
}

/// Facts about one distribution that decide its severity.
#[derive(Debug, Default)]
pub struct Facts {
    pub signals: Vec<Signal>,
    pub native: bool,
    pub loaded_version: Option<String>,
    pub disk_version: Option<String>,
    /// A dist-info for this distribution is present now.
    pub dist_info_present: bool,
    /// The dist-info was present when the probe first saw the distribution.
    pub dist_info_at_first_sight: bool,
    /// Some module file of the distribution still exists on disk.
    pub files_remain: bool,
    /// For same-version changes of native code: `Some(true)` when every mapped library's build-id
    /// in memory equals the file on disk, `Some(false)` when one differs or cannot be compared.
    pub build_ids_equal: Option<bool>,
    pub build_id_note: Option<String>,
    /// A loaded compiled library was rewritten in place: memory now shows the new file's pages,
    /// so build-ids prove nothing and the loaded code cannot be trusted.
    pub native_rewritten: bool,
    /// A loaded Python file changed where no RECORD describes it (rewritten in place, or replaced
    /// in an editable install's project folder): its content is known to differ.
    pub unrecorded_change: bool,
    /// For same-version changes: the distribution's RECORD hashes now against those when it was
    /// first seen (`None`: not comparable, e.g. a RECORD without hashes).
    pub content_same: Option<bool>,
}

impl Facts {
    pub fn has_change(&self) -> bool {
        self.signals
            .iter()
            .any(|s| !matches!(s, Signal::Degraded(_)))
            || self.version_changed()
    }

    pub fn version_changed(&self) -> bool {
        match (&self.loaded_version, &self.disk_version) {
            (Some(a), Some(b)) => !crate::distinfo::versions_match(a, b),
            _ => false,
        }
    }

    /// Files half gone, or pip's stash still there: an install is running or died mid-way.
    pub fn half_installed(&self) -> bool {
        let stash = self
            .signals
            .iter()
            .any(|s| matches!(s, Signal::StashPresent(_)));
        let missing = self
            .signals
            .iter()
            .any(|s| matches!(s, Signal::FileMissing(_)));
        let info_gone = self.dist_info_at_first_sight && !self.dist_info_present;
        stash
            || (missing && self.dist_info_present && !self.version_changed())
            || (info_gone && self.files_remain)
    }

    /// A change at the same version, nothing half installed or uninstalled: only the contents
    /// (build-ids, RECORD hashes) can tell a reinstall of the same files from different code.
    pub fn needs_content(&self) -> bool {
        self.has_change()
            && !self.version_changed()
            && !self.half_installed()
            && !self.uninstalled()
    }

    /// Whether the same-version change needs the build-id comparison to be called benign.
    pub fn needs_build_ids(&self) -> bool {
        self.needs_content() && self.native && !self.native_rewritten
    }

    /// Whether the files are what was loaded, as far as can be told.
    fn content(&self) -> Option<bool> {
        if self.unrecorded_change {
            return Some(false);
        }
        self.content_same
    }

    fn uninstalled(&self) -> bool {
        (self.dist_info_at_first_sight && !self.dist_info_present && !self.files_remain)
            || (!self.dist_info_present
                && self
                    .signals
                    .iter()
                    .any(|s| matches!(s, Signal::FileMissing(_))))
    }

    pub fn severity(&self) -> Option<Severity> {
        if !self.has_change() {
            return if self.signals.is_empty() {
                None
            } else {
                Some(Severity::ProbeDegraded)
            };
        }
        let serious = if self.native {
            Severity::RestartRequired
        } else {
            Severity::ChangedPurePython
        };
        if self.version_changed() || self.half_installed() || self.uninstalled() {
            return Some(serious);
        }
        if self.native_rewritten {
            return Some(Severity::RestartRequired);
        }
        if !self.native {
            // Same version, pure Python: benign only when the files are provably the same.
            return Some(match self.content() {
                Some(true) => Severity::Benign,
                _ => Severity::ChangedPurePython,
            });
        }
        match (self.build_ids_equal, self.content()) {
            (Some(true), Some(false)) => Some(Severity::ChangedPurePython),
            (Some(true), _) => Some(Severity::Benign),
            _ => Some(Severity::RestartRequired),
        }
    }

    /// The human sentence for `Finding.change`.
    pub fn describe(&self) -> String {
        let mut parts = self.describe_files();
        let has = |f: fn(&Signal) -> bool| self.signals.iter().any(f);
        if self.uninstalled() {
            parts.push("uninstalled (no dist-info on disk)".into());
        } else if has(|s| matches!(s, Signal::DistInfoGone(_))) {
            parts.push("dist-info gone".into());
        }
        if self.version_changed() {
            parts.push(format!(
                "version on disk {} differs from loaded {}",
                self.disk_version.as_deref().unwrap_or("?"),
                self.loaded_version.as_deref().unwrap_or("?")
            ));
        } else if has(|s| matches!(s, Signal::DistInfoReplaced(_))) {
            parts.push("reinstalled at the same version".into());
        }
        if self.needs_build_ids() {
            match self.build_ids_equal {
                Some(true) => {
                    parts.push("build-ids in memory and on disk are equal (same build)".into())
                }
                _ => parts.push(
                    self.build_id_note
                        .clone()
                        .unwrap_or_else(|| "build-ids differ".into()),
                ),
            }
        }
        if self.needs_content() && !self.native_rewritten {
            parts.push(self.describe_content().into());
        }
        for s in &self.signals {
            if let Signal::Degraded(msg) = s {
                parts.push(msg.clone());
            }
        }
        parts.join("; ")
    }

    /// What happened to the files: half installed, mapped, replaced, rewritten, missing.
    fn describe_files(&self) -> Vec<String> {
        let mut parts: Vec<String> = Vec::new();
        let has = |f: fn(&Signal) -> bool| self.signals.iter().any(f);
        if self.half_installed() {
            parts.push("files half gone or pip's stash present: an install is in progress or was interrupted".into());
        }
        if has(|s| matches!(s, Signal::MappedDeleted(_))) {
            parts.push("mapped files deleted (replaced on disk)".into());
        }
        if has(|s| matches!(s, Signal::MappedStashed(_))) {
            parts.push("mapped files moved to pip's ~ stash (being replaced)".into());
        }
        if has(|s| matches!(s, Signal::MappedReplaced(_))) {
            parts.push("mapped files replaced on disk (different inode)".into());
        }
        if has(|s| matches!(s, Signal::FileReplaced(_))) {
            parts.push("module files replaced since first seen".into());
        }
        if has(|s| matches!(s, Signal::FileRewritten(_))) {
            parts.push("module files rewritten in place since first seen".into());
        }
        if self.native_rewritten && !self.version_changed() {
            parts.push(
                "a loaded compiled library was rewritten in place: the code in memory can no longer be trusted"
                    .into(),
            );
        }
        if has(|s| matches!(s, Signal::FileMissing(_))) {
            parts.push("module files missing on disk".into());
        }
        parts
    }

    fn describe_content(&self) -> &'static str {
        match (self.unrecorded_change, self.content_same) {
            (true, _) => "loaded Python files changed on disk",
            (false, Some(true)) => "files identical to those first seen (RECORD hashes)",
            (false, Some(false)) => "file contents differ from those first seen (RECORD hashes)",
            (false, None) => {
                "file contents could not be compared (no RECORD hashes from when it was first seen)"
            }
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for s in &self.signals {
            let p = match s {
                Signal::MappedDeleted(p)
                | Signal::MappedStashed(p)
                | Signal::MappedReplaced(p)
                | Signal::FileReplaced(p)
                | Signal::FileRewritten(p)
                | Signal::FileMissing(p)
                | Signal::DistInfoGone(p)
                | Signal::DistInfoReplaced(p)
                | Signal::StashPresent(p) => p,
                Signal::Degraded(_) => continue,
            };
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(signals: Vec<Signal>, native: bool, loaded: &str, disk: &str) -> Facts {
        Facts {
            signals,
            native,
            loaded_version: Some(loaded.into()),
            disk_version: Some(disk.into()),
            dist_info_present: true,
            dist_info_at_first_sight: true,
            files_remain: true,
            ..Default::default()
        }
    }

    #[test]
    fn upgrade_of_native_code_requires_restart() {
        let f = facts(
            vec![Signal::MappedDeleted("/sp/numpy/x.so".into())],
            true,
            "2.0.2",
            "2.2.6",
        );
        assert_eq!(f.severity(), Some(Severity::RestartRequired));
        assert!(f
            .describe()
            .contains("mapped files deleted (replaced on disk)"));
        assert!(f.describe().contains("2.2.6"));
    }

    #[test]
    fn same_version_reinstall_is_benign_only_with_equal_build_ids() {
        let mut f = facts(
            vec![
                Signal::MappedDeleted("/sp/numpy/x.so".into()),
                Signal::DistInfoReplaced("/sp/numpy-2.0.2.dist-info".into()),
            ],
            true,
            "2.0.2",
            "2.0.2",
        );
        assert!(f.needs_build_ids());
        f.build_ids_equal = Some(true);
        assert_eq!(f.severity(), Some(Severity::Benign));
        f.build_ids_equal = Some(false);
        assert_eq!(f.severity(), Some(Severity::RestartRequired));
        f.build_ids_equal = None;
        assert_eq!(f.severity(), Some(Severity::RestartRequired));
    }

    #[test]
    fn pure_python_changes() {
        let f = facts(
            vec![Signal::FileReplaced("/sp/six.py".into())],
            false,
            "1.16.0",
            "1.17.0",
        );
        assert_eq!(f.severity(), Some(Severity::ChangedPurePython));
        let mut f = facts(
            vec![Signal::FileReplaced("/sp/six.py".into())],
            false,
            "1.17.0",
            "1.17.0",
        );
        assert_eq!(f.severity(), Some(Severity::ChangedPurePython)); // not proven the same
        f.content_same = Some(true);
        assert_eq!(f.severity(), Some(Severity::Benign));
        assert!(f.describe().contains("identical"));
        f.content_same = Some(false);
        assert_eq!(f.severity(), Some(Severity::ChangedPurePython));
        f.content_same = Some(true);
        f.unrecorded_change = true;
        assert_eq!(f.severity(), Some(Severity::ChangedPurePython));
    }

    #[test]
    fn a_native_library_rewritten_in_place_is_never_benign() {
        let mut f = facts(
            vec![Signal::FileRewritten("/proj/pkg/_ext.so".into())],
            true,
            "1.0",
            "1.0",
        );
        f.native_rewritten = true;
        f.build_ids_equal = Some(true); // memory shows the new pages: proves nothing
        f.content_same = Some(true);
        assert!(!f.needs_build_ids());
        assert_eq!(f.severity(), Some(Severity::RestartRequired));
        assert!(
            f.describe().contains("rewritten in place"),
            "{}",
            f.describe()
        );
    }

    #[test]
    fn native_libraries_equal_but_python_files_differ() {
        let mut f = facts(
            vec![Signal::DistInfoReplaced("/sp/pkg-1.0.dist-info".into())],
            true,
            "1.0",
            "1.0",
        );
        f.build_ids_equal = Some(true);
        f.content_same = Some(false);
        assert_eq!(f.severity(), Some(Severity::ChangedPurePython));
        f.content_same = None;
        assert_eq!(f.severity(), Some(Severity::Benign));
    }

    #[test]
    fn half_installed_and_uninstalled() {
        let f = facts(
            vec![Signal::StashPresent("/sp/~umpy".into())],
            true,
            "2.0.2",
            "2.0.2",
        );
        assert_eq!(f.severity(), Some(Severity::RestartRequired));
        assert!(f
            .describe()
            .contains("an install is in progress or was interrupted"));
        let mut f = facts(
            vec![
                Signal::FileMissing("/sp/numpy/__init__.py".into()),
                Signal::DistInfoGone("/sp/numpy-2.0.2.dist-info".into()),
            ],
            true,
            "2.0.2",
            "",
        );
        f.disk_version = None;
        f.dist_info_present = false;
        f.files_remain = false;
        assert_eq!(f.severity(), Some(Severity::RestartRequired));
        assert!(f.describe().contains("uninstalled"));
        assert!(!f.describe().contains("in progress"));
    }

    #[test]
    fn nothing_or_only_degraded() {
        assert_eq!(facts(vec![], true, "1", "1").severity(), None);
        let f = facts(
            vec![Signal::Degraded("cannot read METADATA".into())],
            true,
            "1",
            "1",
        );
        assert_eq!(f.severity(), Some(Severity::ProbeDegraded));
    }
}
