//! Reading installed distributions with plain file I/O: `*.dist-info` directory names, the
//! `Version:` header of METADATA, RECORD lines and top_level.txt. No Python is involved (Python's
//! importlib.metadata would import email, csv, zipfile, ...).

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

/// PEP 503 normalised name: lower case, runs of `-`, `_`, `.` collapsed to `-`.
pub fn canonicalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `numpy-2.0.2.dist-info` -> ("numpy", "2.0.2"). The name part is escaped (`-` -> `_`) by the
/// wheel spec, so the first `-` separates name and version.
pub fn parse_dist_info_name(dir_name: &str) -> Option<(&str, &str)> {
    let stem = dir_name.strip_suffix(".dist-info")?;
    let (name, version) = stem.split_once('-')?;
    if name.is_empty() || version.is_empty() {
        return None;
    }
    Some((name, version))
}

/// A header field of METADATA (RFC 822 style): scans up to the first blank line only.
pub fn metadata_field<R: BufRead>(reader: R, field: &str) -> io::Result<Option<String>> {
    for line in reader.split(b'\n') {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.is_empty() {
            break; // end of headers: the body (long description) follows
        }
        let text = String::from_utf8_lossy(line);
        if let Some((key, value)) = text.split_once(':') {
            if key.eq_ignore_ascii_case(field) {
                return Ok(Some(value.trim().to_string()));
            }
        }
    }
    Ok(None)
}

pub fn read_metadata_version(dist_info: &Path) -> io::Result<Option<String>> {
    let file = fs::File::open(dist_info.join("METADATA"))?;
    metadata_field(io::BufReader::with_capacity(8192, file), "Version")
}

/// The path column of one RECORD line (CSV: the path may be quoted, `""` escapes a quote).
pub fn record_path(line: &str) -> Option<String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None // unterminated quote: malformed line
    } else {
        Some(line.split(',').next().unwrap_or("").to_string()).filter(|p| !p.is_empty())
    }
}

/// The first path component of every RECORD entry that lies inside the site directory
/// (`../../bin/f2py` style entries are outside it and skipped).
pub fn record_top_components(record: &str) -> Vec<String> {
    let mut tops: Vec<String> = Vec::new();
    for line in record.lines() {
        if let Some(path) = record_path(line) {
            let first = path.split('/').next().unwrap_or("");
            if first.is_empty() || first == ".." || first == "." || first.ends_with(".dist-info") {
                continue;
            }
            if !tops.iter().any(|t| t == first) {
                tops.push(first.to_string());
            }
        }
    }
    tops
}

pub fn parse_top_level(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.split('/').next().unwrap_or(l).to_string())
        .collect()
}

/// One `*.dist-info` directory found in a site directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistInfoDir {
    pub canonical: String,
    pub dir_name: String,
    pub version_in_name: String,
    /// The directory's inode and change time when listed ((0, 0) where unknown): a dist-info
    /// reinstalled under the same name is a new directory, so a new ctime (the file system may
    /// hand it the old inode number, freed a moment before).
    pub stamp: (u64, i128),
}

/// What a site directory holds, as far as the probe cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub dist_infos: HashMap<String, DistInfoDir>,
    /// Entries starting with `~`: pip's stash of a package being replaced (`~umpy` for `numpy`).
    pub stash: Vec<String>,
    /// `*.pth` files: editable installs put their project folder or their finder there.
    pub pth: Vec<String>,
}

#[cfg(unix)]
fn entry_stamp(entry: &fs::DirEntry) -> (u64, i128) {
    use std::os::unix::fs::MetadataExt;
    match entry.metadata() {
        Ok(m) => (
            m.ino(),
            m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        ),
        Err(_) => (0, 0),
    }
}

#[cfg(not(unix))]
fn entry_stamp(_entry: &fs::DirEntry) -> (u64, i128) {
    (0, 0)
}

pub fn list_site_dir(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((dist, version)) = parse_dist_info_name(name) {
            let canonical = canonicalize(dist);
            listing.dist_infos.insert(
                canonical.clone(),
                DistInfoDir {
                    canonical,
                    dir_name: name.to_string(),
                    version_in_name: version.to_string(),
                    stamp: entry_stamp(&entry),
                },
            );
        } else if name.starts_with('~') {
            listing.stash.push(name.to_string());
        } else if name.ends_with(".pth") {
            listing.pth.push(name.to_string());
        }
    }
    listing.stash.sort();
    listing.pth.sort();
    Ok(listing)
}

/// The distribution an editable install's `.pth` file belongs to, from its name:
/// `__editable__.{name}-{version}.pth` (setuptools), `_{name}.pth` (hatchling, flit, pdm),
/// `{name}.pth`. The caller checks that a dist-info of that name exists.
pub fn pth_distribution(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".pth")?;
    let stem = stem
        .strip_prefix("__editable__.")
        .or_else(|| stem.strip_prefix('_'))
        .unwrap_or(stem);
    let name = stem.split('-').next().unwrap_or(stem);
    let name = name.strip_prefix("editable_impl_").unwrap_or(name);
    (!name.is_empty()).then(|| canonicalize(name))
}

/// What one `.pth` file adds: directories (one per line) and modules it imports (`import X; ...`),
/// which for editable installs are the finders that map package names to project folders.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PthContent {
    pub dirs: Vec<PathBuf>,
    pub imports: Vec<String>,
}

pub fn parse_pth(text: &str, site: &Path) -> PthContent {
    let mut out = PthContent::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("import ") {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            if !name.is_empty() {
                out.imports.push(name);
            }
        } else {
            out.dirs.push(site.join(line)); // an absolute line replaces `site` (Path::join)
        }
    }
    out
}

/// An order-independent digest of the files a RECORD lists with a hash: what they contain,
/// whichever installer wrote the RECORD. Skipped: the dist-info's own files (pip and uv write
/// INSTALLER, RECORD, direct_url.json differently), compiled `*.pyc` (pip's compile step), and
/// entries outside the site directory (scripts, whose launchers each installer writes itself).
/// `None` when no entry carries a hash (nothing could be compared).
pub fn record_content_digest(record: &[u8]) -> Option<(u64, usize)> {
    use std::hash::{Hash, Hasher};
    let (mut sum, mut count) = (0u64, 0usize);
    // bytes, no allocation: torch's RECORD alone has ~20 000 lines, read once per distribution
    for line in record.split(|&b| b == b'\n') {
        let Some((path, hash)) = record_path_and_hash(line) else {
            continue;
        };
        let first = path.split(|&b| b == b'/').next().unwrap_or(b"");
        if hash.is_empty()
            || path.starts_with(b"..")
            || path.starts_with(b"/")
            || path.ends_with(b".pyc")
            || first.ends_with(b".dist-info")
        {
            continue;
        }
        let mut h = std::hash::DefaultHasher::new();
        (path, hash).hash(&mut h);
        sum = sum.wrapping_add(h.finish());
        count += 1;
    }
    (count > 0).then_some((sum, count))
}

/// The path (still CSV-quoted if it was) and hash columns of one RECORD line.
fn record_path_and_hash(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (path, rest) = if line.first() == Some(&b'"') {
        // a quoted path ends at a quote followed by a comma
        let end = line.windows(2).skip(1).position(|w| w == b"\",")? + 1;
        (&line[1..end], &line[end + 2..])
    } else {
        let comma = line.iter().position(|&b| b == b',')?;
        (&line[..comma], &line[comma + 1..])
    };
    let hash = rest.split(|&b| b == b',').next().unwrap_or(b"");
    (!path.is_empty()).then_some((path, hash))
}

/// [`record_content_digest`] of the RECORD in a dist-info directory.
pub fn content_digest(dist_info: &Path) -> io::Result<Option<(u64, usize)>> {
    Ok(record_content_digest(&fs::read(dist_info.join("RECORD"))?))
}

/// Which top-level names a distribution provides: top_level.txt when present (small), else the
/// first components of RECORD (which also names vendored `X.libs` directories).
pub fn provided_tops(dist_info: &Path) -> io::Result<Vec<String>> {
    match fs::read_to_string(dist_info.join("top_level.txt")) {
        Ok(text) => return Ok(parse_top_level(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::read_to_string(dist_info.join("RECORD")) {
        Ok(text) => Ok(record_top_components(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Every RECORD path of a distribution (for resolving namespace packages shared by several
/// distributions, e.g. `nvidia/`).
pub fn record_paths(dist_info: &Path) -> io::Result<Vec<PathBuf>> {
    let text = fs::read_to_string(dist_info.join("RECORD"))?;
    Ok(text
        .lines()
        .filter_map(record_path)
        .map(PathBuf::from)
        .collect())
}

/// Compare versions loosely enough that `2026.05.20` equals `2026.5.20` and `2.15.0+cu132`
/// (a module's `__version__`) equals `2.15.0` (METADATA without the local label), and strictly
/// enough that any real upgrade or downgrade differs.
pub fn versions_match(a: &str, b: &str) -> bool {
    let (pa, la) = split_local(a);
    let (pb, lb) = split_local(b);
    if let (Some(la), Some(lb)) = (la, lb) {
        if !la.eq_ignore_ascii_case(lb) {
            return false;
        }
    }
    normalise_public(pa) == normalise_public(pb)
}

fn split_local(v: &str) -> (&str, Option<&str>) {
    let v = v.trim();
    match v.split_once('+') {
        Some((p, l)) => (p, Some(l)),
        None => (v, None),
    }
}

/// Tokens of digits (as numbers) and letters, with trailing zero release parts removed.
fn normalise_public(v: &str) -> Vec<String> {
    let v = v.trim().trim_start_matches(['v', 'V']).to_ascii_lowercase();
    let mut tokens: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut digits = false;
    let flush = |cur: &mut String, digits: bool, tokens: &mut Vec<String>| {
        if !cur.is_empty() {
            if digits {
                let t = cur.trim_start_matches('0');
                tokens.push(if t.is_empty() { "0".into() } else { t.into() });
            } else {
                tokens.push(cur.clone());
            }
            cur.clear();
        }
    };
    for c in v.chars() {
        if c.is_ascii_digit() {
            if !digits {
                flush(&mut cur, digits, &mut tokens);
            }
            digits = true;
            cur.push(c);
        } else if c.is_alphanumeric() {
            if digits {
                flush(&mut cur, digits, &mut tokens);
            }
            digits = false;
            cur.push(c);
        } else {
            flush(&mut cur, digits, &mut tokens);
        }
    }
    flush(&mut cur, digits, &mut tokens);
    // 1.0 == 1.0.0: drop trailing "0" release parts (only when everything is numeric)
    if tokens.iter().all(|t| t.chars().all(|c| c.is_ascii_digit())) {
        while tokens.len() > 1 && tokens.last().map(|t| t == "0").unwrap_or(false) {
            tokens.pop();
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonicalize("Typing_Extensions"), "typing-extensions");
        assert_eq!(canonicalize("zope.interface"), "zope-interface");
        assert_eq!(canonicalize("a__-.b"), "a-b");
        assert_eq!(canonicalize("numpy"), "numpy");
    }

    #[test]
    fn dist_info_dir_names() {
        assert_eq!(
            parse_dist_info_name("numpy-2.0.2.dist-info"),
            Some(("numpy", "2.0.2"))
        );
        assert_eq!(
            parse_dist_info_name("nvidia_cublas_cu12-12.4.5.8.dist-info"),
            Some(("nvidia_cublas_cu12", "12.4.5.8"))
        );
        assert_eq!(parse_dist_info_name("numpy.libs"), None);
        assert_eq!(parse_dist_info_name("-1.dist-info"), None);
    }

    #[test]
    fn metadata_version_header_only() {
        let text = "Metadata-Version: 2.1\r\nName: numpy\r\nVersion: 2.0.2\r\nSummary: x\r\n\r\nVersion: 9.9 in the body\n";
        assert_eq!(
            metadata_field(text.as_bytes(), "Version")
                .unwrap()
                .as_deref(),
            Some("2.0.2")
        );
        assert_eq!(
            metadata_field(text.as_bytes(), "name").unwrap().as_deref(),
            Some("numpy")
        );
        let body_only = "Name: x\n\nVersion: 1\n";
        assert_eq!(
            metadata_field(body_only.as_bytes(), "Version").unwrap(),
            None
        );
    }

    #[test]
    fn record_lines() {
        assert_eq!(
            record_path("numpy/__init__.py,sha256=abc,123").as_deref(),
            Some("numpy/__init__.py")
        );
        assert_eq!(
            record_path("numpy-2.0.2.dist-info/RECORD,,").as_deref(),
            Some("numpy-2.0.2.dist-info/RECORD")
        );
        assert_eq!(
            record_path("\"odd, \"\"name\"\".py\",sha256=x,1").as_deref(),
            Some("odd, \"name\".py")
        );
        assert_eq!(record_path("\"unterminated,sha256=x,1"), None);
        assert_eq!(record_path(""), None);
        let record = "numpy/__init__.py,sha256=a,1\nnumpy.libs/libx.so,sha256=b,2\n../../bin/f2py,sha256=c,3\nnumpy-2.0.2.dist-info/METADATA,,\nnumpy/_core/x.so,,\n";
        assert_eq!(
            record_top_components(record),
            vec!["numpy".to_string(), "numpy.libs".to_string()]
        );
    }

    #[test]
    fn record_digests_compare_content_not_bytes() {
        let pip = "yaml/__init__.py,sha256=AAA,10\nyaml/_yaml.so,sha256=BBB,20\n\
                   yaml/__pycache__/x.cpython-311.pyc,sha256=CCC,5\n../../bin/x,sha256=DDD,3\n\
                   PyYAML-6.0.2.dist-info/INSTALLER,sha256=pip,4\nPyYAML-6.0.2.dist-info/RECORD,,\n";
        let uv = "PyYAML-6.0.2.dist-info/INSTALLER,sha256=uv,3\nyaml/_yaml.so,sha256=BBB,20\n\
                  ../../bin/x,sha256=EEE,3\nyaml/__init__.py,sha256=AAA,10\n";
        let a = record_content_digest(pip.as_bytes()).unwrap();
        assert_eq!(a.1, 2);
        assert_eq!(Some(a), record_content_digest(uv.as_bytes()));
        let changed = uv.replace("AAA", "ZZZ");
        assert_ne!(Some(a), record_content_digest(changed.as_bytes()));
        assert_eq!(record_content_digest(b"a/__init__.py,,\n"), None);
        assert_eq!(
            record_path_and_hash(b"\"a,b.py\",sha256=Q,1"),
            Some((&b"a,b.py"[..], &b"sha256=Q"[..]))
        );
    }

    #[test]
    fn editable_pth_files() {
        assert_eq!(
            pth_distribution("__editable__.tbkit_cdemo-1.0.pth").as_deref(),
            Some("tbkit-cdemo")
        );
        assert_eq!(pth_distribution("_my_pkg.pth").as_deref(), Some("my-pkg"));
        assert_eq!(
            pth_distribution("_editable_impl_my_pkg.pth").as_deref(),
            Some("my-pkg")
        );
        let site = Path::new("/sp");
        let c = parse_pth(
            "# comment\n/proj/src\nrel\nimport __editable___x_1_0_finder; __editable___x_1_0_finder.install()\n",
            site,
        );
        assert_eq!(
            c.dirs,
            vec![PathBuf::from("/proj/src"), PathBuf::from("/sp/rel")]
        );
        assert_eq!(c.imports, vec!["__editable___x_1_0_finder".to_string()]);
    }

    #[test]
    fn top_level_file() {
        assert_eq!(parse_top_level("_yaml\nyaml\n\n"), vec!["_yaml", "yaml"]);
    }

    #[test]
    fn version_comparison() {
        assert!(versions_match("2026.05.20", "2026.5.20"));
        assert!(versions_match("2.15.0+cu132", "2.15.0"));
        assert!(versions_match("1.0", "1.0.0"));
        assert!(versions_match("v1.2", "1.2"));
        assert!(!versions_match("2.0.2", "2.2.6"));
        assert!(!versions_match("1.26.4", "2.0.2"));
        assert!(!versions_match("2.0.0rc1", "2.0.0"));
        assert!(!versions_match("2.15.0+cu132", "2.15.0+cpu"));
    }

    #[test]
    fn listing_a_site_dir() {
        let dir = std::env::temp_dir().join(format!("tbkit-probe-site-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("numpy-2.0.2.dist-info")).unwrap();
        fs::create_dir_all(dir.join("~umpy")).unwrap();
        fs::create_dir_all(dir.join("numpy")).unwrap();
        fs::write(
            dir.join("numpy-2.0.2.dist-info/METADATA"),
            "Name: numpy\nVersion: 2.0.2\n\nbody",
        )
        .unwrap();
        fs::write(
            dir.join("numpy-2.0.2.dist-info/RECORD"),
            "numpy/__init__.py,,\nnumpy.libs/a.so,,\n",
        )
        .unwrap();
        let listing = list_site_dir(&dir).unwrap();
        assert_eq!(listing.dist_infos["numpy"].version_in_name, "2.0.2");
        assert_eq!(listing.stash, vec!["~umpy".to_string()]);
        let di = dir.join("numpy-2.0.2.dist-info");
        assert_eq!(
            read_metadata_version(&di).unwrap().as_deref(),
            Some("2.0.2")
        );
        assert_eq!(
            provided_tops(&di).unwrap(),
            vec!["numpy".to_string(), "numpy.libs".to_string()]
        );
        fs::write(di.join("top_level.txt"), "numpy\n").unwrap();
        assert_eq!(provided_tops(&di).unwrap(), vec!["numpy".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
