"""What a source string names, decided from the string and the file system alone: no torch is
imported and no code runs, so a wrong path or a malformed gist id is answered at once.

Forms (see docs/sources.md):
- ``FOLDER``                 model.py (+ optional config.json); or only a Hugging Face config.json
- ``FILE.py[:Class]``        a Python file; ``:Class`` picks the model class
- ``CONFIG.json``            a Hugging Face config (``model_type``) built with transformers
- ``package.module:Class``   imported from ``paths`` (``--path DIR``, default the current directory)
- an example name, a gist id / URL
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Optional, Union

from tbkit import examples
from tbkit.errors import SourceError, UsageError, shorten
from tbkit.sources import files as sfiles
from tbkit.sources import gist

_CLASS_SUFFIX = re.compile(r"^(?P<src>.+):(?P<cls>[A-Za-z_]\w*)$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# ``path=`` / ``--path``: one folder or several
Paths = Union[str, os.PathLike[str], Iterable[Union[str, os.PathLike[str]]], None]


@dataclass
class Ref:
    form: str  # "example" | "folder" | "file" | "hf" | "module" | "gist"
    text: str  # the source as given (without ":Class")
    path: Optional[Path] = None  # folder / file / config.json, resolved
    module: Optional[str] = None  # dotted module name (form "module")
    class_name: Optional[str] = None  # from ":Class" or model_name=
    paths: list[Path] = field(default_factory=list)  # extra sys.path entries for this load


def short(text: object, limit: int = 80) -> str:
    return repr(shorten(" ".join(str(text).split()), limit))


def check_paths(paths: Paths) -> list[Path]:
    """``path=`` / ``--path``: one folder or a list of them, each existing; resolved Paths."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        folder = Path(os.fspath(p)).expanduser()
        kind = sfiles.what_is(folder)
        if kind != "a folder":
            raise UsageError(
                f"--path {short(os.fspath(p))} is {'missing' if kind == 'missing' else kind}, not a folder",
                "Give the folder that holds your package (the one you would run python from).",
            )
        out.append(folder.resolve())
    return out


def resolve(
    source: str, *, model_name: Optional[str] = None, paths: Paths = None, api_url: Optional[str] = None
) -> Ref:
    """The Ref a source string names; SourceError / UsageError (one paragraph) if it names nothing."""
    extra = check_paths(paths)
    text = source.strip()
    class_name = None
    m = _CLASS_SUFFIX.match(text)
    if m and not sfiles.exists(Path(text).expanduser()):
        text, class_name = m["src"], m["cls"]
    class_name = _one_name(class_name, model_name)
    path = Path(text).expanduser()
    if text and sfiles.exists(path):
        return _local(text, path.resolve(), class_name, extra)
    if class_name and _DOTTED.match(text):
        return _module(text, class_name, extra)
    if text in examples.names():
        return Ref("example", text, examples.path(text), class_name=class_name)
    if gist.looks_like_gist(text):
        gist.parse_ref(text, api_url or os.environ.get("TBKIT_GITHUB_API") or None)  # malformed → error now
        return Ref("gist", text, class_name=class_name)
    _not_found(text, class_name)


def _one_name(from_suffix: Optional[str], model_name: Optional[str]) -> Optional[str]:
    if model_name is not None and not (isinstance(model_name, str) and re.fullmatch(r"[A-Za-z_]\w*", model_name)):
        raise UsageError(
            f"model name {short(model_name)} is not a Python class or function name",
            "Give the class name as defined in the file, e.g. --model-name GPT.",
        )
    if from_suffix and model_name and from_suffix != model_name:
        raise UsageError(
            f"the source names class {from_suffix!r} but the model name says {model_name!r}",
            "Name the class once: either SOURCE:Class or --model-name / model_name=.",
        )
    return from_suffix or model_name


def _local(text: str, path: Path, class_name: Optional[str], extra: list[Path]) -> Ref:
    kind = sfiles.what_is(path)
    if kind == "a folder":
        model = path / "model.py"
        if sfiles.exists(model):
            sfiles.require_regular(model, "model file")
            return Ref("folder", text, path, class_name=class_name, paths=extra)
        present = sorted(p.name for p in path.glob("*.py"))
        if not present and sfiles.exists(path / "config.json"):
            sfiles.require_regular(path / "config.json", "config file")
            return Ref("hf", text, path / "config.json", class_name=class_name, paths=extra)
        raise SourceError(
            f"the folder {path} has no model.py"
            + (f" (Python files there: {', '.join(present[:10])})" if present else " and no config.json"),
            "Put the model code in model.py, pass the file itself as FILE.py:ClassName, "
            "or use a folder holding only a Hugging Face config.json (with model_type).",
        )
    sfiles.require_regular(path, "source")
    if path.suffix == ".py":
        return Ref("file", text, path, class_name=class_name, paths=extra)
    if path.suffix == ".json":
        return Ref("hf", text, path, class_name=class_name, paths=extra)
    raise SourceError(
        f"{path} is neither a folder, a .py file nor a config.json",
        "Pass the folder holding model.py, the model's .py file (FILE.py:ClassName), or a Hugging Face config.json.",
    )


def _module(dotted: str, class_name: str, extra: list[Path]) -> Ref:
    search = extra or [Path.cwd()]
    top = dotted.split(".")[0]
    if not any(sfiles.exists(d / f"{top}.py") or sfiles.what_is(d / top) == "a folder" for d in search):
        where = ", ".join(str(d) for d in search)
        raise SourceError(
            f"no module {top!r} (from {dotted}:{class_name}) in {where}",
            "Pass --path DIR (path= in tbkit.load) with the folder that holds the package, or run from that folder.",
        )
    return Ref("module", f"{dotted}:{class_name}", module=dotted, class_name=class_name, paths=search)


def _not_found(text: str, class_name: Optional[str]) -> NoReturn:
    if text.endswith(".py") or os.sep in text or text.startswith((".", "~")):
        raise SourceError(
            f"no such file or folder: {short(text)}", "Check the path (relative paths start at the current directory)."
        )
    if class_name:
        raise SourceError(
            f"{short(text)} is neither an existing file nor a module name (package.module) for :{class_name}",
            "Pass FILE.py:ClassName with an existing file, or package.module:ClassName with --path DIR.",
        )
    raise SourceError(
        f"{short(text)} is not an existing path, a bundled example ({', '.join(examples.names())}), "
        "a gist id (20 to 32 hexadecimal characters) or a gist URL",
        "Pass the gist id or URL from Transformer Builder, a folder with model.py, a .py file "
        "(FILE.py:ClassName) or package.module:ClassName.",
    )
