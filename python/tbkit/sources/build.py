"""From source files to an ``nn.Module``: read the config, run model.py in its own module, pick
the class, construct it.

model.py is executed as a fresh ``types.ModuleType`` — never in the caller's (notebook's)
globals — under a unique name ``tbkit_user_model_<hash>``. The module is registered in
``sys.modules`` because classes defined in it must be importable by name for ``pickle`` /
``torch.save(model)`` / dataclasses; the hash makes the name unique per content.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import linecache
import re
import sys
import traceback
import types
from typing import Optional

from tbkit.errors import SourceError

# Config keys that describe the export rather than constructor arguments.
META_KEYS = {
    "model_name",
    "kind",
    "nodes",
    "edges",
    "connections",
    "description",
    "name",
    "version",
    "exporter",
    "metadata",
}
SEED = 0  # construction is seeded so a load is reproducible (inside fork_rng: the caller's RNG is untouched)


# ---- config --------------------------------------------------------------------------------
def parse_config(raw: Optional[bytes], where: str) -> dict:
    """config.json bytes → dict; SourceError naming the problem."""
    if raw is None:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SourceError(f"{where} is not UTF-8 text", "Re-save config.json as UTF-8 JSON.") from None
    except json.JSONDecodeError as err:
        raise SourceError(
            f"{where} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})",
            "Fix the JSON (or export the model again), or pass config={...} to tbkit.load.",
        ) from None
    if not isinstance(data, dict):
        raise SourceError(
            f"{where} holds a JSON {type(data).__name__}, but a config must be a JSON object",
            'Write it as {"vocab_size": ..., "d_model": ..., ...} or with a "nodes" list.',
        )
    return data


_NODE_ALIASES = {
    "vocab_size": ("vocab_size", "num_embeddings", "vocabSize", "n_vocab"),
    "d_model": ("d_model", "embedding_dim", "embed_dim", "dModel", "hidden_size", "n_embd"),
    "nhead": ("nhead", "num_heads", "n_heads", "heads", "numHeads", "n_head"),
    "max_len": (
        "max_len",
        "max_seq_len",
        "max_position_embeddings",
        "num_positions",
        "block_size",
        "context_length",
        "maxLen",
    ),
    "dim_feedforward": ("dim_feedforward", "d_ff", "ffn_dim", "hidden_dim", "intermediate_size"),
}


def _node_type(node: dict) -> str:
    for key in ("type", "nodeType", "node_type", "kind"):
        if isinstance(node.get(key), str):
            return node[key].lower()
    ident = str(node.get("id", ""))
    return re.sub(r"_\d+.*$", "", ident).lower()


def flatten_config(config: dict, notes: list) -> dict:
    """Flat view of a config: top-level keys, plus sizes derived from a ``nodes`` list.

    Explicit top-level keys win over derived ones (a disagreement is noted)."""
    flat = {k: v for k, v in config.items() if k not in META_KEYS}
    nodes = config.get("nodes")
    if nodes is None:
        return flat
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise SourceError(
            "config.json has a 'nodes' entry that is not a list of objects",
            'Each node must look like {"id": "mhsa_0", "type": "mhsa", "params": {...}}; export the model again.',
        )
    derived: dict = {}
    attention_nodes = 0
    for node in nodes:
        ntype = _node_type(node)
        params = node.get("params") or {}
        if not isinstance(params, dict):
            raise SourceError(
                f"node {node.get('id', '?')!r} in config.json has 'params' that is not an object",
                "Export the model again, or fix that node's params.",
            )
        is_position = "pos" in ntype
        if ntype.startswith(("mhsa", "attention", "multihead", "self_attention", "mha")):
            attention_nodes += 1
        for key, aliases in _NODE_ALIASES.items():
            for alias in aliases:
                if alias in params and isinstance(params[alias], int) and not isinstance(params[alias], bool):
                    if key == "vocab_size" and is_position:
                        derived.setdefault("max_len", params[alias])  # a position table's rows are positions
                        continue
                    derived.setdefault(key, params[alias])
                    break
    if attention_nodes:
        derived.setdefault("num_layers", attention_nodes)
    for key, value in derived.items():
        if key in flat and flat[key] != value:
            notes.append(
                f"config.json says {key}={flat[key]!r} but its nodes imply {value!r}; the top-level value was kept"
            )
        flat.setdefault(key, value)
    return flat


# ---- model code ----------------------------------------------------------------------------
def exec_model_code(raw: bytes, filename: str, label: str, siblings=()) -> types.ModuleType:
    """Run model.py in a fresh module; SourceError for non-UTF-8, syntax errors, missing imports,
    or anything the code raises while being defined. ``siblings``: the other file names of the
    source, to tell "imports a file next to it" apart from "needs a package installed"."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(
            f"{label} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})",
            "Re-save the file as UTF-8 (Python source must be UTF-8).",
        ) from None
    digest = hashlib.sha256(raw).hexdigest()[:16]
    name = f"tbkit_user_model_{digest}"
    # Let tracebacks and inspect.getsource show the code even when it lives only in memory.
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    try:
        code = compile(text, filename, "exec", dont_inherit=True)
    except SyntaxError as err:
        raise SourceError(
            f"{label} has a syntax error at line {err.lineno}: {err.msg}",
            "Fix that line (or export the model again); tbkit runs the file unchanged.",
        ) from None
    module = types.ModuleType(name, f"model code loaded by tbkit from {label}")
    module.__file__ = filename
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except ModuleNotFoundError as err:
        sys.modules.pop(name, None)
        missing = err.name or str(err)
        top = missing.split(".")[0]
        if f"{top}.py" in siblings or top in siblings:
            raise SourceError(
                f"{label} imports {top!r}, which is a file of the same source, not an installed package; tbkit runs "
                "model.py as one self-contained module and does not put its folder on sys.path (a second model "
                f"with its own {top}.py would silently get the first one's)",
                f"Paste the code of {top}.py into model.py (Transformer Builder exports are a single file).",
            ) from None
        raise SourceError(
            f"{label} imports {missing!r}, which is not installed in this Python",
            f"Install it through the gate with tbkit.install({missing.split('.')[0]!r}) (it refuses installs that would break "
            "this session), or remove the import from the model code.",
        ) from None
    except (Exception, SystemExit) as err:
        sys.modules.pop(name, None)
        raise SourceError(
            f"running {label} raised {type(err).__name__}: {_one_line(err)}{_where(err, filename)}",
            "Fix the model code at that line; it must only define the model when run.",
        ) from None
    return module


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or "(no message)"


def _where(err: BaseException, filename: str) -> str:
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    return f" (line {lines[-1]})" if lines else ""


# ---- picking and constructing --------------------------------------------------------------
def defined_modules(module: types.ModuleType) -> dict:
    """nn.Module subclasses defined in this file (not imported into it)."""
    import torch.nn as nn

    return {
        k: v
        for k, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
    }


def pick_builder(module: types.ModuleType, config: dict, label: str) -> tuple:
    """(callable, name, how): config model_name, then CustomTransformer / Model / build_model(),
    then the single nn.Module subclass defined in the file."""
    import torch.nn as nn

    candidates = defined_modules(module)
    listed = ", ".join(sorted(candidates)) or "none"
    wanted = config.get("model_name")
    if wanted is not None:
        obj = vars(module).get(wanted) if isinstance(wanted, str) else None
        if obj is None or not callable(obj) or (inspect.isclass(obj) and not issubclass(obj, nn.Module)):
            raise SourceError(
                f"config model_name {wanted!r} names no nn.Module class or builder function in {label} "
                f"(nn.Module classes defined there: {listed})",
                "Set model_name in config.json (or pass config={'model_name': ...}) to one of those.",
            )
        return obj, wanted, "config model_name"
    for name in ("CustomTransformer", "Model"):
        if name in candidates:
            return candidates[name], name, f"the conventional class name {name}"
    build = vars(module).get("build_model")
    if inspect.isfunction(build):
        return build, "build_model", "the build_model() function"
    if len(candidates) == 1:
        ((name, cls),) = candidates.items()
        return cls, name, "the only nn.Module subclass defined in the file"
    if not candidates:
        raise SourceError(
            f"{label} defines no nn.Module subclass (classes imported into it do not count) and no build_model() function",
            "Check this is the model file; it must define the model class, e.g. class CustomTransformer(nn.Module).",
        )
    raise SourceError(
        f"{label} defines several nn.Module classes ({listed}) and none is named CustomTransformer or Model, "
        "so tbkit cannot tell which one is the model",
        "Choose one with \"model_name\" in config.json or config={'model_name': '<class>'} in tbkit.load.",
    )


def construct(builder, name: str, flat: dict, notes: list):
    """Call the builder: without arguments if it takes none (the exporter's style), else with the
    config keys its signature names (unknown keys noted, missing required ones named)."""
    import torch
    import torch.nn as nn

    try:
        params = dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        params = {}
    P = inspect.Parameter
    takes_var_kw = any(p.kind is P.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    if takes_var_kw:
        kwargs = dict(flat)
    else:
        kwargs = {k: v for k, v in flat.items() if k in named}
    if named or takes_var_kw:
        unused = sorted(set(flat) - set(kwargs))
        if unused:
            notes.append(f"config keys not taken by {name}(): {', '.join(unused)} (not passed to the constructor)")
    missing = [
        k
        for k, p in params.items()
        if p.default is P.empty and p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL) and k not in kwargs
    ]
    if missing:
        raise SourceError(
            f"{name}() requires {', '.join(missing)}, which the config does not provide",
            f"Add {', '.join(missing)} to config.json, or pass config={{...}} to tbkit.load with those keys.",
        )
    try:
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: fork_rng(devices=[]) restores just that one, and
            # torch.manual_seed would also reseed (and so disturb) the caller's CUDA generators.
            torch.random.default_generator.manual_seed(SEED)
            model = builder(**kwargs)
    except Exception as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise SourceError(
            f"building {name}({shown}) raised {type(err).__name__}: {_one_line(err)}",
            "Check the constructor against config.json (names and values), or export the model again.",
        ) from None
    if not isinstance(model, nn.Module):
        raise SourceError(
            f"{name}() returned a {type(model).__name__}, not a torch.nn.Module",
            "Make build_model() (or the chosen class) return the model itself.",
        )
    return model
