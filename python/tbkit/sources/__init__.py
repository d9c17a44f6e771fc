"""Where models come from: ``tbkit.load(source)`` → ``LoadedModel``.

Source forms (docs/sources.md shows each with a command):
- ``None``                          the default bundled example (``tiny_gpt``)
- an ``nn.Module`` instance / class  used as is / constructed from ``config``
- ``FOLDER``                        model.py + optional config.json, or a Hugging Face config.json alone
- ``FILE.py[:Class]``               a Python file (config.json beside it is optional)
- ``CONFIG.json``                   a Hugging Face config (``model_type``), built with transformers
- ``package.module:Class``          imported with ``path=`` folders (default: the current directory)
- a bundled example name            e.g. ``"tiny_gpt"``
- a gist                            ``<id>``, ``<id>@<sha>``, ``https://gist.github.com/<owner>/<id>[/<sha>]``,
                                    ``https://api.github.com/gists/<id>[/<sha>]``

The source is resolved without importing torch (refs.py), so a wrong path is answered at once.
Modules: refs.py (what the source names), files.py (safe reads), pipeline.py (the load steps),
remote.py + gist.py + cache.py (gists), execute.py (running code: import_guard.py, time_limit.py,
advice.py), configs.py (config.json and config objects), build.py (pick and construct), hf.py
(Hugging Face configs), inspect_model.py (facts from the real modules, forward contract).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from tbkit import examples
from tbkit.errors import SourceError
from tbkit.sources import files as sfiles
from tbkit.sources import pipeline, refs, remote, time_limit
from tbkit.sources.loaded import LoadedModel, Provenance, SourceFile
from tbkit.sources.pipeline import content_sha256

if TYPE_CHECKING:
    from typing import ParamSpec, TypeGuard, TypeVar

    from torch import nn

    P = ParamSpec("P")
    R = TypeVar("R")

__all__ = ["load", "resolve", "LoadedModel", "Provenance", "SourceFile", "content_sha256"]

DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_FILE_BYTES = 5 * 1024 * 1024


def _keeps_caller_state(func: Callable[P, R]) -> Callable[P, R]:
    """Loading runs model code: whatever it does to random states, torch globals or the working
    folder is undone when the load returns (the caller's process is left as it was)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from tbkit.checks.run_guard import caller_state

        with caller_state():
            return func(*args, **kwargs)

    return wrapper


@_keeps_caller_state
def load(
    source: object = None,
    *,
    revision: Optional[str] = None,
    kind: Optional[str] = None,
    config: Union[dict[str, Any], str, os.PathLike[str], None] = None,
    model_name: Optional[str] = None,
    path: refs.Paths = None,
    import_timeout: Optional[float] = None,
    import_guard: bool = True,
    expected_sha256: Optional[str] = None,
    cache_dir: Union[str, os.PathLike[str], None] = None,
    api_url: Optional[str] = None,
    token: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    retries: int = 3,
    backoff: float = 0.5,
    max_rate_wait: float = 10.0,
    offline: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
) -> LoadedModel:
    """Load a model and the facts tbkit needs about it; SourceError (one paragraph) if it cannot.

    ``config``: a dict of keys over the config file's, or a JSON file read instead of config.json
    (docs/sources.md, "Configs"); ``model_name`` picks the class (= ``SOURCE:Class``); ``path``: folder(s)
    on ``sys.path`` for this load only; ``import_timeout`` bounds running the model code (default 60 s,
    0 = none); ``import_guard=False`` runs files that train or read data at import; ``expected_sha256`` is
    checked before any code runs; ``log`` gets the provenance before the code runs. Gist options:
    docs/sources.md (``GITHUB_TOKEN``, ``TBKIT_GITHUB_API``, ``TBKIT_OFFLINE``).
    """
    opts = pipeline.Options(
        kind=kind,
        **_config_options(config),
        expected_sha256=str(expected_sha256).strip().lower() if expected_sha256 is not None else None,
        log=log,
        model_name=model_name,
        import_timeout=time_limit.resolve(import_timeout),
        import_guard=bool(import_guard),
    )
    if source is None:
        source = examples.DEFAULT
    if _is_model_object(source):
        _no_revision(revision, "a model object")
        return pipeline.from_object(source, opts)
    ref = resolve(source, model_name=model_name, path=path, api_url=api_url)
    opts.model_name, opts.paths = ref.class_name, list(ref.paths)
    if ref.form != "gist":
        _no_revision(revision, "a local path" if ref.form != "example" else "a bundled example")
        return _load_local(ref, opts)
    offline = os.environ.get("TBKIT_OFFLINE") == "1" if offline is None else bool(offline)
    g = remote.GistOptions(
        revision, cache_dir, api_url, token, timeout, max_file_bytes, retries, backoff, max_rate_wait, offline
    )
    return remote.load_gist(ref.text, g, opts)


def resolve(
    source: object, *, model_name: Optional[str] = None, path: refs.Paths = None, api_url: Optional[str] = None
) -> refs.Ref:
    """What ``source`` names (a ``refs.Ref``), checked without importing torch or running code:
    the CLI calls this first so that a wrong path or gist id is answered at once."""
    if source is None:
        source = examples.DEFAULT
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise SourceError(
            f"tbkit.load got a {type(source).__name__}, which is not a model source",
            "Pass a gist id or URL, a folder, a .py file, an nn.Module (instance or class) or an example name "
            f"({', '.join(examples.names())}).",
        )
    return refs.resolve(source, model_name=model_name, paths=path, api_url=api_url)


def _load_local(ref: refs.Ref, opts: pipeline.Options) -> LoadedModel:
    if ref.form == "module":  # refs._module sets the module and class names
        return pipeline.from_module_name(cast(str, ref.module), cast(str, ref.class_name), ref.paths, opts)
    path = cast(Path, ref.path)  # every other local form has its path (refs._local, examples.path)
    if ref.form == "hf":
        return pipeline.from_hf_config(path, opts)
    if ref.form == "file":
        files = {path.name: sfiles.read_bounded(path, "model file", sfiles.MAX_SOURCE_BYTES)}
        cfg = path.parent / "config.json"
        if path.name != "config.json" and sfiles.exists(cfg):
            files["config.json"] = sfiles.read_bounded(cfg, "config file", sfiles.MAX_CONFIG_BYTES)
        provenance = Provenance(source="file", location=str(path))
        return pipeline.from_files(files, path.name, provenance, path.parent, opts)
    source = "example" if ref.form == "example" else "folder"
    provenance = Provenance(source=source, location=ref.text if source == "example" else str(path))
    return pipeline.from_files(sfiles.read_folder(path), "model.py", provenance, path, opts)


def _config_options(config: object) -> dict[str, Any]:
    """``config=``: a dict (keys over the config file's) or a path (the file read, checked now)."""
    from tbkit.sources import config_files

    return {
        "config_arg": config if isinstance(config, dict) else None,
        "config_file": config_files.explicit_path(config),
    }


def _is_model_object(source: object) -> TypeGuard[Union[nn.Module, type[nn.Module]]]:
    """An nn.Module instance or class; without torch imported, nothing can be one (no import here)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "nn"):
        return False
    nn = torch.nn
    return isinstance(source, nn.Module) or (isinstance(source, type) and issubclass(source, nn.Module))


def _no_revision(revision: Optional[str], what: str) -> None:
    if revision is not None:
        raise SourceError(f"revision= applies to gists only, but the source is {what}", "Leave revision out.")
