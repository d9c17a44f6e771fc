//! The core probe on hand-made site directories and maps files (no Python, no installer).

use super::*;
use crate::identity::{file_id, FileId};
use crate::verdict::Severity;

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
        let base = std::env::temp_dir().join(format!("tbkit-probe-{tag}-{}", std::process::id()));
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
                ..Default::default()
            },
            ModuleInfo {
                name: "pkg._ext".into(),
                file: Some(self.so.clone()),
                version: None,
                ..Default::default()
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

fn temp_dir(tag: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("tbkit-probe-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    std::fs::canonicalize(&base).unwrap()
}

/// Install a pure-Python "distribution" `fake-dist` whose module is `fakemod` (names differ, as
/// pyyaml/yaml): files replaced, never rewritten; RECORD with the given hash for `fakemod`.
fn install_pure(site: &Path, version: &str, hash: &str) {
    for e in std::fs::read_dir(site).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("fake_dist-") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    std::fs::create_dir_all(site.join("fakemod")).unwrap();
    let tmp = site.join(".tmp");
    std::fs::write(&tmp, format!("__version__ = '{version}'\n")).unwrap();
    std::fs::rename(&tmp, site.join("fakemod/__init__.py")).unwrap();
    let info = site.join(format!("fake_dist-{version}.dist-info"));
    std::fs::create_dir_all(&info).unwrap();
    std::fs::write(
        info.join("METADATA"),
        format!("Name: fake-dist\nVersion: {version}\n\n"),
    )
    .unwrap();
    std::fs::write(info.join("top_level.txt"), "fakemod\n").unwrap();
    std::fs::write(
        info.join("RECORD"),
        format!("fakemod/__init__.py,sha256={hash},20\nfake_dist-{version}.dist-info/RECORD,,\n"),
    )
    .unwrap();
}

fn pure_module(site: &Path) -> Vec<ModuleInfo> {
    vec![ModuleInfo {
        name: "fakemod".into(),
        file: Some(site.join("fakemod/__init__.py")),
        ..Default::default()
    }]
}

fn no_maps_probe(base: &Path) -> Probe {
    std::fs::write(base.join("maps"), "").unwrap();
    Probe::new(Config {
        maps_path: Some(base.join("maps")),
        ..Default::default()
    })
}

/// `import tbkit` (the baseline), then `pip install -U`, then the first import: the version
/// loaded is the one installed at the first import, not at the baseline.
#[cfg(unix)]
#[test]
fn versions_are_attributed_at_first_import() {
    let base = temp_dir("first-import");
    let site = base.join("site");
    std::fs::create_dir_all(&site).unwrap();
    install_pure(&site, "1.0", "AAA");
    let mut probe = no_maps_probe(&base);
    let sys_path = vec![site.clone()];
    probe.observe(&sys_path, &[]);
    std::thread::sleep(std::time::Duration::from_millis(120)); // past the coarse-clock window
    install_pure(&site, "2.0", "BBB");
    let r = probe.check(&sys_path, &pure_module(&site));
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    let loaded = probe.loaded_distributions(&sys_path, &[]);
    assert_eq!(loaded, vec![("fake-dist".to_string(), "2.0".to_string())]);
    // an upgrade after the first import is still seen, against the version first imported
    install_pure(&site, "3.0", "CCC");
    let r = probe.check(&sys_path, &[]);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(
        (f.loaded_version.as_deref(), f.disk_version.as_deref()),
        (Some("2.0"), Some("3.0"))
    );
    assert_eq!(f.severity, Severity::ChangedPurePython);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Same version reinstalled: identical RECORD hashes are benign, different ones are not.
#[cfg(unix)]
#[test]
fn same_version_content_is_compared_through_record_hashes() {
    let base = temp_dir("content");
    let site = base.join("site");
    std::fs::create_dir_all(&site).unwrap();
    install_pure(&site, "1.0", "AAA");
    let mut probe = no_maps_probe(&base);
    let sys_path = vec![site.clone()];
    assert!(probe
        .check(&sys_path, &pure_module(&site))
        .findings
        .is_empty());
    install_pure(&site, "1.0", "AAA");
    let r = probe.check(&sys_path, &[]);
    assert_eq!(r.findings[0].severity, Severity::Benign, "{:?}", r.findings);
    assert!(
        r.findings[0].change.contains("identical"),
        "{}",
        r.findings[0].change
    );
    install_pure(&site, "1.0", "ZZZ");
    let r = probe.check(&sys_path, &[]);
    assert_eq!(
        r.findings[0].severity,
        Severity::ChangedPurePython,
        "{:?}",
        r.findings
    );
    assert!(
        r.findings[0].change.contains("differ"),
        "{}",
        r.findings[0].change
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// A stash folder older than the process is reported as pre-existing, with the command that
/// removes it; one that appears while the process runs keeps the restart verdict.
#[cfg(unix)]
#[test]
fn a_stash_older_than_the_process_is_preexisting() {
    let fake = FakeSite::new("stash", "site");
    std::fs::write(&fake.maps_path, fake.maps_line(false)).unwrap();
    std::fs::create_dir_all(fake.site.join("~kg")).unwrap();
    let (sys_path, modules) = (fake.sys_path(), fake.modules());
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
        + 10_000_000_000;
    for (start, expected) in [
        (later, Severity::Preexisting),
        (0, Severity::RestartRequired),
    ] {
        let mut probe = Probe::new(Config {
            maps_path: Some(fake.maps_path.clone()),
            process_start_ns: Some(start),
            ..Default::default()
        });
        let r = probe.check(&sys_path, &modules);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert_eq!(r.findings[0].severity, expected, "{:?}", r.findings);
        assert_eq!(r.findings[0].paths, vec![fake.site.join("~kg")]);
    }
    let mut probe = Probe::new(Config {
        maps_path: Some(fake.maps_path.clone()),
        process_start_ns: Some(later),
        ..Default::default()
    });
    let f = &probe.check(&sys_path, &modules).findings[0];
    let rm = format!("rm -rf '{}'", fake.site.join("~kg").display());
    assert!(f.change.contains(&rm), "{}", f.change);
}

/// Editable installs: a compat `.pth` naming the project folder, and a finder's MAPPING. A
/// compiled library rebuilt in place there (same inode) requires a restart.
/// A site directory with an editable install of `tbkit-demo` (package `demo` with a compiled
/// `_ext.so` in `proj/`): a compat `.pth` naming the project folder, or a `.pth` importing a
/// finder. Returns (base, sys.path, modules as loaded).
#[cfg(unix)]
fn editable_site(finder: bool) -> (PathBuf, Vec<PathBuf>, Vec<ModuleInfo>) {
    let base = temp_dir(if finder { "ed-finder" } else { "ed-pth" });
    let (site, proj) = (base.join("site"), base.join("proj"));
    std::fs::create_dir_all(site.join("tbkit_demo-1.0.dist-info")).unwrap();
    std::fs::write(
        site.join("tbkit_demo-1.0.dist-info/METADATA"),
        "Name: tbkit-demo\nVersion: 1.0\n\n",
    )
    .unwrap();
    std::fs::create_dir_all(proj.join("demo")).unwrap();
    std::fs::write(proj.join("demo/__init__.py"), "").unwrap();
    std::fs::write(proj.join("demo/_ext.so"), b"\x7fELF one").unwrap();
    let finder_name = "__editable___tbkit_demo_1_0_finder";
    let pth = if finder {
        format!("import {finder_name}; {finder_name}.install()\n")
    } else {
        format!("{}\n", proj.display())
    };
    std::fs::write(site.join("__editable__.tbkit_demo-1.0.pth"), pth).unwrap();
    std::fs::write(site.join(format!("{finder_name}.py")), "").unwrap();
    let mut sys_path = vec![site.clone()];
    let mut modules = vec![
        ModuleInfo {
            name: "demo".into(),
            file: Some(proj.join("demo/__init__.py")),
            ..Default::default()
        },
        ModuleInfo {
            name: "demo._ext".into(),
            file: Some(proj.join("demo/_ext.so")),
            ..Default::default()
        },
    ];
    if finder {
        modules.push(ModuleInfo {
            name: finder_name.into(),
            file: Some(site.join(format!("{finder_name}.py"))),
            editable_mapping: vec![("demo".into(), proj.join("demo"))],
            ..Default::default()
        });
    } else {
        sys_path.push(proj.clone());
    }
    (base, sys_path, modules)
}

#[cfg(unix)]
#[test]
fn editable_installs_are_followed_and_in_place_rebuilds_caught() {
    for finder in [false, true] {
        let (base, sys_path, modules) = editable_site(finder);
        let proj = base.join("proj");
        let mut probe = no_maps_probe(&base);
        assert!(probe.check(&sys_path, &modules).findings.is_empty());
        let loaded = probe.loaded_distributions(&sys_path, &[]);
        assert_eq!(loaded, vec![("tbkit-demo".to_string(), "1.0".to_string())]);
        std::fs::write(proj.join("demo/_ext.so"), b"\x7fELF two, longer").unwrap(); // in place
        let r = probe.check(&sys_path, &[]);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert_eq!(r.findings[0].distribution, "tbkit-demo");
        assert_eq!(
            r.findings[0].severity,
            Severity::RestartRequired,
            "{:?}",
            r.findings
        );
        assert!(
            r.findings[0].change.contains("rewritten in place"),
            "{}",
            r.findings[0].change
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
