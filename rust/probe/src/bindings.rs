//! The Python module `tbkit._probe`: the only place that touches Python objects. It reads
//! `sys.modules` through the C API (`PySys_GetObject`), looks at each module's `__dict__` only
//! (never `getattr`, which could run a PEP 562 `__getattr__` and import something), and hands
//! plain Rust values to the core in `probe.rs`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule, PyString, PyTuple};
use pyo3::{ffi, intern};

use crate::probe::{Config, ModuleInfo, Probe as CoreProbe};
use crate::verdict::{Finding as CoreFinding, Severity};

/// What the last walk over `sys.modules` had to skip (reported as notes, never raised).
#[derive(Default, Clone, Copy)]
struct Skipped {
    none: usize,
    not_module: usize,
    odd_file: usize,
}

#[pyclass(module = "tbkit._probe")]
struct Probe {
    core: CoreProbe,
    /// Module objects already handed to the core. Strong references keep the addresses unique.
    seen: HashSet<usize>,
    held: Vec<Py<PyAny>>,
    skipped: Skipped,
}

fn sys_object<'py>(py: Python<'py>, name: &std::ffi::CStr) -> Option<Bound<'py, PyAny>> {
    // SAFETY: attached to the interpreter; PySys_GetObject returns a borrowed reference or NULL
    // without setting an exception.
    unsafe { Bound::from_borrowed_ptr_or_opt(py, ffi::PySys_GetObject(name.as_ptr())) }
}

fn os_string(obj: &Bound<'_, PyAny>) -> Option<PathBuf> {
    if !obj.is_instance_of::<PyString>() {
        return None;
    }
    obj.extract::<OsString>().ok().map(PathBuf::from)
}

/// A `str` item of a module's `__dict__` (never `getattr`).
fn str_item(dict: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> Option<String> {
    match dict.get_item(key) {
        Ok(Some(v)) => v
            .cast::<PyString>()
            .ok()
            .map(|s| s.to_string_lossy().into_owned()),
        _ => None,
    }
}

/// An editable finder's `MAPPING` (`{"pkg": "/project/pkg"}`): exact `str` keys and values only,
/// so reading it runs no Python code.
fn finder_mapping(dict: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> Vec<(String, PathBuf)> {
    let Ok(Some(mapping)) = dict.get_item(key) else {
        return Vec::new();
    };
    let Ok(mapping) = mapping.cast_exact::<PyDict>() else {
        return Vec::new();
    };
    mapping
        .iter()
        .filter_map(|(k, v)| {
            let k = k
                .cast_exact::<PyString>()
                .ok()?
                .to_string_lossy()
                .into_owned();
            Some((k, os_string(&v)?))
        })
        .collect()
}

fn read_sys_path(py: Python<'_>) -> Vec<PathBuf> {
    let Some(path) = sys_object(py, c"path") else {
        return Vec::new();
    };
    let Ok(list) = path.cast::<PyList>() else {
        return Vec::new();
    };
    list.iter().filter_map(|item| os_string(&item)).collect()
}

impl Probe {
    /// One entry of the copied `sys.modules`, if it is a module not handed to the core before.
    fn read_module(
        &mut self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        skipped: &mut Skipped,
    ) -> Option<ModuleInfo> {
        if value.is_none() {
            skipped.none += 1;
            return None;
        }
        let Ok(module) = value.cast::<PyModule>() else {
            skipped.not_module += 1;
            return None;
        };
        let ptr = value.as_ptr() as usize;
        if self.seen.contains(&ptr) {
            return None;
        }
        let Ok(name) = key
            .cast::<PyString>()
            .map(|s| s.to_string_lossy().into_owned())
        else {
            skipped.not_module += 1;
            return None;
        };
        self.seen.insert(ptr);
        self.held.push(value.clone().unbind());
        let dict = module.dict();
        let file = match dict.get_item(intern!(py, "__file__")) {
            Ok(Some(f)) if !f.is_none() => {
                let p = os_string(&f);
                skipped.odd_file += usize::from(p.is_none());
                p
            }
            Ok(_) => None,
            Err(_) => {
                skipped.odd_file += 1;
                None
            }
        };
        let top_level = !name.contains('.');
        let version = if top_level {
            str_item(&dict, intern!(py, "__version__"))
        } else {
            None
        };
        let editable_mapping = if top_level && name.starts_with("__editable__") {
            finder_mapping(&dict, intern!(py, "MAPPING"))
        } else {
            Vec::new()
        };
        Some(ModuleInfo {
            name,
            file,
            version,
            editable_mapping,
        })
    }

    /// Modules added to `sys.modules` since the last call.
    fn new_modules(&mut self, py: Python<'_>) -> Vec<ModuleInfo> {
        let mut out = Vec::new();
        let Some(modules) = sys_object(py, c"modules") else {
            return out;
        };
        let Ok(modules) = modules.cast::<PyDict>() else {
            return out;
        };
        // First a read-only pass over the live dict: type checks and pointer lookups only, which
        // run no Python code, so the dict cannot change under us. Usually nothing is new and we
        // are done without copying.
        let any_new = modules.iter().any(|(_, v)| {
            !v.is_none()
                && v.is_instance_of::<PyModule>()
                && !self.seen.contains(&(v.as_ptr() as usize))
        });
        if !any_new {
            return out;
        }
        // Something is new: copy the items before looking into module dicts (a dict lookup can,
        // in odd cases, run Python code that could touch sys.modules).
        let Ok(copy) = modules.copy() else { return out };
        let mut skipped = Skipped::default();
        for (key, value) in copy.iter() {
            if let Some(info) = self.read_module(py, &key, &value, &mut skipped) {
                out.push(info);
            }
        }
        self.skipped.none = skipped.none;
        self.skipped.not_module = skipped.not_module;
        self.skipped.odd_file += skipped.odd_file;
        out
    }
}

/// Severities as the Python side spells them (`tbkit._probe.SEVERITIES`).
const SEVERITIES: [Severity; 5] = [
    Severity::RestartRequired,
    Severity::ChangedPurePython,
    Severity::Benign,
    Severity::Preexisting,
    Severity::ProbeDegraded,
];

// Named under the package (`tbkit._probe.ProbeError`), as the classes are: `__module__` is what
// tracebacks, pickling and `except` clauses written from the repr go by.
create_exception!(
    tbkit._probe,
    ProbeError,
    PyException,
    "Base class of the errors the probe raises."
);
create_exception!(
    tbkit._probe,
    UnreadableFileError,
    ProbeError,
    "A file the probe was asked to read could not be read."
);

/// One distribution whose files on disk no longer match what this process loaded. Frozen, so it
/// compares and hashes by value (findings can be set members and dict keys).
#[pyclass(module = "tbkit._probe", frozen, get_all, eq, hash)]
#[derive(PartialEq, Eq, Hash)]
struct Finding {
    /// Canonical name, e.g. "numpy"; "(probe)" for the probe's own limits.
    distribution: String,
    loaded_version: Option<String>,
    disk_version: Option<String>,
    /// A human sentence.
    change: String,
    paths: Vec<OsString>,
    /// One of `SEVERITIES`.
    severity: String,
}

impl Finding {
    fn from_core(f: CoreFinding) -> Self {
        Finding {
            distribution: f.distribution,
            loaded_version: f.loaded_version,
            disk_version: f.disk_version,
            change: f.change,
            paths: f.paths.into_iter().map(PathBuf::into_os_string).collect(),
            severity: f.severity.as_str().to_string(),
        }
    }
}

#[pymethods]
impl Finding {
    #[new]
    #[pyo3(signature = (distribution, loaded_version, disk_version, change, paths=None, severity="restart_required"))]
    fn new(
        distribution: String,
        loaded_version: Option<String>,
        disk_version: Option<String>,
        change: String,
        paths: Option<Vec<OsString>>,
        severity: &str,
    ) -> PyResult<Self> {
        if !SEVERITIES.iter().any(|s| s.as_str() == severity) {
            return Err(PyValueError::new_err(format!(
                "unknown severity {severity:?}; one of {:?}",
                SEVERITIES.map(Severity::as_str)
            )));
        }
        Ok(Finding {
            distribution,
            loaded_version,
            disk_version,
            change,
            paths: paths.unwrap_or_default(),
            severity: severity.to_string(),
        })
    }

    /// JSON-ready: `{"distribution": ..., "paths": [str, ...], ...}`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("distribution", &self.distribution)?;
        d.set_item("loaded_version", self.loaded_version.as_deref())?;
        d.set_item("disk_version", self.disk_version.as_deref())?;
        d.set_item("change", &self.change)?;
        d.set_item("paths", PyList::new(py, &self.paths)?)?;
        d.set_item("severity", &self.severity)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Finding(distribution={:?}, loaded_version={:?}, disk_version={:?}, change={:?}, paths={:?}, severity={:?})",
            self.distribution, self.loaded_version, self.disk_version, self.change, self.paths, self.severity
        )
    }

    fn __str__(&self) -> String {
        let mut versions = self.loaded_version.clone().unwrap_or_else(|| "?".into());
        if self.disk_version != self.loaded_version {
            versions += &format!(
                " (on disk: {})",
                self.disk_version.as_deref().unwrap_or("none")
            );
        }
        format!(
            "{} {versions}: {} [{}]",
            self.distribution, self.change, self.severity
        )
    }
}

/// What one check found: findings of any severity, and notes on what was skipped.
#[pyclass(module = "tbkit._probe", frozen, get_all)]
struct Report {
    findings: Py<PyTuple>,
    notes: Py<PyTuple>,
}

#[pymethods]
impl Probe {
    /// `maps_path`: where to read the memory map (tests point it at a missing file to simulate a
    /// system without /proc). `exclude`: standard-library directories. `always_read_maps`: no
    /// shortcut, read the maps on every check.
    #[new]
    #[pyo3(signature = (maps_path=None, exclude=Vec::new(), always_read_maps=false))]
    fn new(maps_path: Option<PathBuf>, exclude: Vec<PathBuf>, always_read_maps: bool) -> Self {
        let exclude = exclude
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        Probe {
            core: CoreProbe::new(Config {
                maps_path,
                exclude,
                always_read_maps,
                process_start_ns: None,
            }),
            seen: HashSet::new(),
            held: Vec::new(),
            skipped: Skipped::default(),
        }
    }

    /// Record the identity of what is loaded now (the baseline; extended on every call).
    fn observe(&mut self, py: Python<'_>) {
        let modules = self.new_modules(py);
        let sys_path = read_sys_path(py);
        self.core.observe(&sys_path, &modules);
    }

    /// Compare what is loaded with what is on disk now.
    fn check(&mut self, py: Python<'_>) -> PyResult<Report> {
        let modules = self.new_modules(py);
        let sys_path = read_sys_path(py);
        let report = self.core.check(&sys_path, &modules);
        let findings: Vec<Bound<'_, Finding>> = report
            .findings
            .into_iter()
            .map(|f| Bound::new(py, Finding::from_core(f)))
            .collect::<PyResult<_>>()?;
        let mut notes = report.notes;
        notes.extend(self.skipped_notes());
        Ok(Report {
            findings: PyTuple::new(py, findings)?.unbind(),
            notes: PyTuple::new(py, notes)?.unbind(),
        })
    }

    /// Canonical distribution name -> version for every installed distribution with a module
    /// in `sys.modules`.
    fn loaded_distributions<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let modules = self.new_modules(py);
        let sys_path = read_sys_path(py);
        let out = PyDict::new(py);
        for (name, version) in self.core.loaded_distributions(&sys_path, &modules) {
            out.set_item(name, version)?;
        }
        Ok(out)
    }
}

impl Probe {
    fn skipped_notes(&self) -> Vec<String> {
        let s = self.skipped;
        let mut notes = Vec::new();
        if s.not_module > 0 {
            notes.push(format!(
                "{} entries of sys.modules are not modules; skipped",
                s.not_module
            ));
        }
        if s.odd_file > 0 {
            notes.push(format!(
                "{} modules have a __file__ that is not a path string; skipped",
                s.odd_file
            ));
        }
        notes
    }
}

/// The GNU build-id of an ELF file on disk as hex, or None.
#[pyfunction]
fn build_id(path: PathBuf) -> PyResult<Option<String>> {
    crate::elf::build_id_of_file(&path)
        .map(|id| id.map(|b| crate::elf::hex(&b)))
        .map_err(|e| UnreadableFileError::new_err(format!("cannot read {}: {e}", path.display())))
}

/// Build-ids of the shared objects loaded in this process: `[(path, hex), ...]`.
#[pyfunction]
fn loaded_build_ids(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for (p, id) in crate::elf::loaded_build_ids() {
        out.append((p.as_os_str(), crate::elf::hex(&id)))?;
    }
    Ok(out)
}

#[pymodule]
fn _probe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SEVERITIES", SEVERITIES.map(Severity::as_str))?;
    m.add("ProbeError", m.py().get_type::<ProbeError>())?;
    m.add(
        "UnreadableFileError",
        m.py().get_type::<UnreadableFileError>(),
    )?;
    m.add_class::<Probe>()?;
    m.add_class::<Finding>()?;
    m.add_class::<Report>()?;
    m.add_function(wrap_pyfunction!(build_id, m)?)?;
    m.add_function(wrap_pyfunction!(loaded_build_ids, m)?)?;
    Ok(())
}
