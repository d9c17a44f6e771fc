"""The load pipelines after a source has been resolved (refs.py): files (folder, .py file,
example, gist), ``package.module:Class``, Hugging Face configs and model objects. Each pins the
content, shows the provenance, runs the code (execute.py), builds the model (build.py, hf.py)
and inspects it (inspect_model.py)."""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from tbkit.errors import SourceError
from tbkit.sources import build, config_files, configs, execute, exports, hf, inspect_model
from tbkit.sources import files as sfiles
from tbkit.sources.loaded import LoadedModel, Provenance, SourceFile

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Options:
    """What every pipeline needs from ``tbkit.load``'s arguments."""

    kind: Optional[str] = None
    config_arg: Optional[dict[str, Any]] = None  # config={...}: keys over the config file's
    config_file: Optional[Path] = None  # --config FILE / config="FILE": read instead of any config.json
    expected_sha256: Optional[str] = None
    log: Optional[Callable[[str], None]] = None
    model_name: Optional[str] = None
    paths: list[Path] = field(default_factory=list)
    import_timeout: Optional[float] = None
    import_guard: bool = True
    export: bool = False  # set while loading: the code is a Transformer Builder export (exports.py)


def content_sha256(files: Mapping[str, bytes]) -> str:
    """sha256 over all files sorted by name: name, NUL, bytes, NUL for each (see Provenance)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def _pin(files: dict[str, bytes], provenance: Provenance, where: str, opts: Options) -> None:
    """Record the content in the provenance and refuse it, before any code runs, if pinned otherwise."""
    provenance.files = [SourceFile(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in sorted(files.items())]
    provenance.content_sha256 = content_sha256(files)
    if opts.expected_sha256 is not None and opts.expected_sha256 != provenance.content_sha256:
        raise SourceError(
            f"the content of {where} has sha256 {provenance.content_sha256}, not the expected {opts.expected_sha256}; "
            "the code changed since it was pinned (or the pin is wrong), so it was not run",
            "Review the change and update expected_sha256, or load the pinned revision with revision=<sha>.",
        )


def _config(
    files: dict[str, bytes], main: str, where: str, provenance: Provenance, base: Optional[Path], opts: Options
) -> dict[str, Any]:
    """The config by config_files' precedence: --config, the config.json that came with the code,
    one in a package folder above it, one in a --path folder (recorded in the provenance)."""
    if base is not None and provenance.source != "gist":  # a local source
        bundled = (files.get("config.json"), str(base / "config.json"), str(base))
        above = config_files.package_folders(base / main)[1:]
    else:
        bundled, above = (files.get("config.json"), f"config.json of {where}", where), []
    read = config_files.choose(opts.config_file, bundled, above + list(opts.paths), opts.config_arg)
    config_files.record(provenance, read)
    return read.values


def from_files(
    files: dict[str, bytes],
    main: str,
    provenance: Provenance,
    base: Optional[Path],
    opts: Options,
    notes: Optional[list[str]] = None,
) -> LoadedModel:
    """model code (+ optional config.json) → LoadedModel. ``base``: the folder the files are in
    (put on sys.path for the load, so sibling modules import), None when they live in memory."""
    where = provenance.location if provenance.source != "gist" else f"gist {provenance.gist_id}"
    _pin(files, provenance, where, opts)
    config = _config(files, main, where, provenance, base, opts)
    opts.export = exports.recognise(files[main].decode("utf-8", "replace"), config)
    if opts.log:
        opts.log(str(provenance))
    filename = str(base / main) if base is not None else f"<{where}/{main}>"
    folders = ([base] if base is not None else []) + list(opts.paths)
    module = execute.exec_model_code(
        files[main],
        filename,
        f"{main} of {where}",
        folders=folders,
        guard=opts.import_guard,
        timeout=opts.import_timeout,
        config_file=opts.config_file,
    )
    try:
        return _build(module, config, f"{main} of {where}", provenance, opts, list(notes or []))
    except BaseException:
        if sys.modules.get(module.__name__) is module:  # a failed load leaves no module behind
            del sys.modules[module.__name__]
        raise


def _build(
    module: types.ModuleType,
    config: dict[str, Any],
    label: str,
    provenance: Provenance,
    opts: Options,
    notes: list[str],
) -> LoadedModel:
    flat = build.flatten_config(config, notes)
    builder, name, how = build.pick_builder(module, config, label, opts.model_name)
    notes.append(f"model built from {name} ({how})")
    model = build.construct(builder, name, flat, notes, module, provenance=provenance, export=opts.export)
    return inspect_model.inspect_and_wrap(model, config, flat, provenance, notes, kind=opts.kind)


def from_module_name(dotted: str, class_name: str, paths: list[Path], opts: Options) -> LoadedModel:
    """``package.module:Class`` imported from ``paths`` (the package's .py files are pinned; the
    config by config_files' precedence: --config, beside the module, package folders, --path)."""
    files, root = _package_files(dotted, paths)
    provenance = Provenance(source="package", location=f"{dotted}:{class_name} (from {root})")
    _pin(files, provenance, f"{dotted}:{class_name}", opts)
    origin = execute.origin(dotted, [root])
    above = config_files.package_folders(origin, root / dotted.split(".")[0]) if origin is not None else []
    read = config_files.choose(opts.config_file, None, above + list(paths), opts.config_arg)
    config_files.record(provenance, read)
    config = read.values
    if opts.log:
        opts.log(str(provenance))
    module = execute.import_module(
        dotted, f"module {dotted}", folders=paths, guard=opts.import_guard, timeout=opts.import_timeout
    )
    return _build(module, config, f"module {dotted}", provenance, opts, [])


def _package_files(dotted: str, paths: list[Path]) -> tuple[dict[str, bytes], Path]:
    """({relative name: bytes} of the top-level package's .py files (at most 500), its folder)."""
    top = dotted.split(".")[0]
    for folder in paths:
        single = Path(folder) / f"{top}.py"
        if sfiles.exists(single):
            return {single.name: sfiles.read_bounded(single, "module file", sfiles.MAX_SOURCE_BYTES)}, Path(folder)
        package = Path(folder) / top
        if sfiles.what_is(package) == "a folder":
            found = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)[:500]
            return {
                str(p.relative_to(folder)): sfiles.read_bounded(p, "module file", sfiles.MAX_SOURCE_BYTES)
                for p in found
                if sfiles.what_is(p) == "a regular file"
            }, Path(folder)
    raise SourceError(
        f"no module {top!r} in {', '.join(map(str, paths))}", "Pass --path DIR with the package's folder."
    )


def from_hf_config(path: Path, opts: Options) -> LoadedModel:
    """A Hugging Face config.json → transformers model (random init, offline)."""
    if opts.config_file is not None:
        raise SourceError(
            f"the source {path} is itself a Hugging Face config, so --config {opts.config_file} has nothing to add to",
            f"Load the config you mean as the source (tbkit run {opts.config_file}), or pass config={{...}} to "
            "override single keys.",
        )
    files = {"config.json": sfiles.read_bounded(path, "config file", sfiles.MAX_CONFIG_BYTES)}
    provenance = Provenance(source="huggingface", location=str(path))
    _pin(files, provenance, str(path), opts)
    provenance.config_file, provenance.config_sha256 = str(path), provenance.files[0].sha256
    config = {**configs.parse(files["config.json"], str(path)), **(opts.config_arg or {})}
    if not hf.is_hf_config(config):
        raise SourceError(
            f"{path} has no model_type, so it is not a Hugging Face config, and there is no model.py beside it",
            'Add "model_type" (e.g. "gpt2") to use transformers, or put the model code in model.py.',
        )
    if opts.log:
        opts.log(str(provenance))
    notes: list[str] = []
    model, kind, reason = hf.build(config, str(path), opts.model_name, notes)
    flat = build.flatten_config({k: v for k, v in config.items() if k != "model_type"}, notes)
    if opts.kind is not None:
        kind, reason = opts.kind, None
    return inspect_model.inspect_and_wrap(model, config, flat, provenance, notes, kind=kind, kind_reason=reason)


def from_object(obj: Union[nn.Module, type[nn.Module]], opts: Options) -> LoadedModel:
    """An nn.Module instance (used as is) or class (constructed from ``config``)."""
    import torch.nn as nn

    if opts.expected_sha256 is not None:
        raise SourceError(
            "expected_sha256 can only be checked for code loaded from files, and the source is a model object",
            "Load the model from its gist, folder or .py file to pin its content, or drop expected_sha256.",
        )
    cls = obj if isinstance(obj, type) else type(obj)
    provenance = Provenance(source="module", location=f"{cls.__module__}:{cls.__qualname__}")
    read = config_files.choose(opts.config_file, None, [], opts.config_arg)
    if opts.config_file is not None:
        config_files.record(provenance, read)
    if opts.log:
        opts.log(str(provenance))
    config = read.values
    notes: list[str] = []
    flat = build.flatten_config(config, notes)
    model = (
        obj
        if isinstance(obj, nn.Module)
        else build.construct(obj, cls.__qualname__, flat, notes, provenance=provenance)
    )
    return inspect_model.inspect_and_wrap(model, config, flat, provenance, notes, kind=opts.kind)
