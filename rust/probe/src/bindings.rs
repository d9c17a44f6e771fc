//! The Python module `tbkit._probe`: the only place that touches Python objects. It reads
//! `sys.modules` through the C API (`PySys_GetObject`), looks at each module's `__dict__` only
//! (never `getattr`, which could run a PEP 562 `__getattr__` and import something), and hands
//! plain Rust values to the core in `probe.rs`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule, PyString};
use pyo3::{ffi, intern};

use crate::probe::{Config, ModuleInfo, Probe as CoreProbe};
use crate::verdict::Finding;

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
            if value.is_none() {
                skipped.none += 1;
                continue;
            }
            let Ok(module) = value.cast::<PyModule>() else {
                skipped.not_module += 1;
                continue;
            };
            let ptr = value.as_ptr() as usize;
            if self.seen.contains(&ptr) {
                continue;
            }
            let Ok(name) = key
                .cast::<PyString>()
                .map(|s| s.to_string_lossy().into_owned())
            else {
                skipped.not_module += 1;
                continue;
            };
            self.seen.insert(ptr);
            self.held.push(value.clone().unbind());
            let dict = module.dict();
            let file = match dict.get_item(intern!(py, "__file__")) {
                Ok(Some(f)) if !f.is_none() => match os_string(&f) {
                    Some(p) => Some(p),
                    None => {
                        skipped.odd_file += 1;
                        None
                    }
                },
                Ok(_) => None,
                Err(_) => {
                    skipped.odd_file += 1;
                    None
                }
            };
            let version = if name.contains('.') {
                None
            } else {
                match dict.get_item(intern!(py, "__version__")) {
                    Ok(Some(v)) if v.is_instance_of::<PyString>() => v
                        .cast::<PyString>()
                        .ok()
                        .map(|s| s.to_string_lossy().into_owned()),
                    _ => None,
                }
            };
            out.push(ModuleInfo {
                name,
                file,
                version,
            });
        }
        self.skipped.none = skipped.none;
        self.skipped.not_module = skipped.not_module;
        self.skipped.odd_file += skipped.odd_file;
        out
    }
}

fn finding_dict<'py>(py: Python<'py>, f: &Finding) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("distribution", &f.distribution)?;
    d.set_item("loaded_version", f.loaded_version.as_deref())?;
    d.set_item("disk_version", f.disk_version.as_deref())?;
    d.set_item("change", &f.change)?;
    let paths = PyList::empty(py);
    for p in &f.paths {
        paths.append(p.as_os_str())?;
    }
    d.set_item("paths", paths)?;
    d.set_item("severity", f.severity.as_str())?;
    Ok(d)
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

    /// `{"findings": [dict, ...], "notes": [str, ...]}`.
    fn check<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let modules = self.new_modules(py);
        let sys_path = read_sys_path(py);
        let report = self.core.check(&sys_path, &modules);
        let findings = PyList::empty(py);
        for f in &report.findings {
            findings.append(finding_dict(py, f)?)?;
        }
        let mut notes = report.notes;
        let s = self.skipped;
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
        let out = PyDict::new(py);
        out.set_item("findings", findings)?;
        out.set_item("notes", notes)?;
        Ok(out)
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

/// The GNU build-id of an ELF file on disk as hex, or None.
#[pyfunction]
fn build_id(path: PathBuf) -> PyResult<Option<String>> {
    crate::elf::build_id_of_file(&path)
        .map(|id| id.map(|b| crate::elf::hex(&b)))
        .map_err(|e| PyRuntimeError::new_err(format!("cannot read {}: {e}", path.display())))
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
    m.add_class::<Probe>()?;
    m.add_function(wrap_pyfunction!(build_id, m)?)?;
    m.add_function(wrap_pyfunction!(loaded_build_ids, m)?)?;
    Ok(())
}
