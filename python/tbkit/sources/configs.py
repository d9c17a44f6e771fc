"""config.json: parsed with bounds (size, nesting depth), and turned into a config *object* when
the model's constructor takes one (a ``@dataclass`` such as nanoGPT's ``GPTConfig``, or the one
``*Config`` class of the file).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Any, Callable, Optional

from tbkit.errors import SourceError
from tbkit.sources.files import MAX_CONFIG_BYTES

MAX_DEPTH = 64  # a model config is a few levels deep; Python's parser would overflow its stack
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def parse(raw: Optional[bytes], where: str) -> dict[str, Any]:
    """config.json bytes → dict; SourceError naming the problem (and the limit, for bounds)."""
    if raw is None:
        return {}
    if len(raw) > MAX_CONFIG_BYTES:
        raise SourceError(
            f"{where} is {len(raw)} bytes, over the limit of {MAX_CONFIG_BYTES} bytes for a config",
            "Check this is the model's config; keep large data (vocabularies, weights) out of it.",
        )
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError:
        raise SourceError(f"{where} is not UTF-8 text", "Re-save it as UTF-8 JSON.") from None
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise SourceError(
            f"{where} nests objects/lists more than {MAX_DEPTH} levels deep (the limit for a config)",
            "Flatten the config; a model config is a few levels deep.",
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(
            f"{where} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})",
            "Fix the JSON at that place, or pass another config with --config FILE (config= in tbkit.load).",
        ) from None
    if not isinstance(data, dict):
        raise SourceError(
            f"{where} holds a JSON {type(data).__name__}, but a config must be a JSON object",
            'Write it as {"vocab_size": ..., "d_model": ..., ...} or with a "nodes" list.',
        )
    return data


def _depth(text: str) -> int:
    """Deepest bracket nesting outside strings (stops counting past the limit)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        depth += 1 if m.group(0) in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
    return deepest


# ---- config objects ------------------------------------------------------------------------
def config_class(builder: Callable[..., Any], module: Optional[types.ModuleType]) -> Optional[tuple[str, type]]:
    """(parameter name, class) when ``builder`` takes a config object: a parameter annotated with
    a dataclass, or a single parameter while the file defines exactly one ``*Config`` class."""
    try:
        params = [
            p
            for p in inspect.signature(builder).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        ]
    except (TypeError, ValueError):
        return None
    hints = _hints(builder)
    for p in params:
        cls = hints.get(p.name)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return p.name, cls
    if len(params) == 1 and module is not None:
        own = [
            v
            for k, v in vars(module).items()
            if inspect.isclass(v) and k.endswith("Config") and v.__module__ == module.__name__
        ]
        if len(own) == 1:
            return params[0].name, own[0]
    return None


def _hints(builder: Callable[..., Any]) -> dict[str, Any]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable string annotations: fall back to the module's names
        glb = getattr(target, "__globals__", {})
        raw = getattr(target, "__annotations__", {})
        return {k: glb.get(v, v) if isinstance(v, str) else v for k, v in raw.items()}


def build_object(cls: type, flat: dict[str, Any], owner: str, source: str = "the config") -> object:
    """An instance of the config class from the config keys: unknown keys → SourceError naming
    them (and ``source``, the config they came from), missing keys → the class defaults."""
    known = _fields(cls)
    unknown = sorted(set(flat) - known) if known is not None else []
    if known is not None and unknown:  # unknown keys exist only when the fields are known
        raise SourceError(
            f"config keys {', '.join(unknown)} are not fields of {cls.__name__}, which {owner} takes "
            f"(its fields: {', '.join(sorted(known)) or 'none'}; the keys come from {source})",
            f"Remove or rename those keys in that config (or config={{...}}) to match {cls.__name__}.",
        )
    try:
        if _has_own_init(cls):
            return cls(**flat)
        obj = cls()
        for key, value in flat.items():
            setattr(obj, key, value)
        return obj
    except Exception as err:
        raise SourceError(
            f"building {cls.__name__} from the config raised {type(err).__name__}: {err}",
            f"Check the config values against {cls.__name__}.",
        ) from None


def _fields(cls: type[Any]) -> Optional[set[str]]:
    """Names the config class accepts; None when it takes anything (``**kwargs``)."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}
    if _has_own_init(cls):
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return {k for k in params if k != "self"}
    return {k for k in vars(cls) if not k.startswith("_") and not callable(vars(cls)[k])}


def _has_own_init(cls: type) -> bool:
    return any("__init__" in vars(c) for c in cls.__mro__ if c is not object)
