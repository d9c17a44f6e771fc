"""From a config and a module of model code to an ``nn.Module``: flatten the config, pick the
class (or builder function), construct it — with a config object when the constructor takes one.

Running the code is execute.py's job; parsing config.json is configs.py's.
"""

from __future__ import annotations

import inspect
import re
import types
from typing import TYPE_CHECKING, Any, Callable, Optional

from tbkit.errors import SourceError, shorten
from tbkit.sources import advice, config_files, configs, exports

if TYPE_CHECKING:
    from torch import nn

    from tbkit.sources.loaded import Provenance

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


def _node_type(node: dict[str, Any]) -> str:
    for key in ("type", "nodeType", "node_type", "kind"):
        value = node.get(key)
        if isinstance(value, str):
            return value.lower()
    ident = str(node.get("id", ""))
    return re.sub(r"_\d+.*$", "", ident).lower()


def flatten_config(config: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Flat view of a config: top-level keys, plus sizes derived from a ``nodes`` list.

    Explicit top-level keys win over derived ones (a disagreement is noted)."""
    flat = {k: v for k, v in config.items() if k not in META_KEYS}
    nodes = config.get("nodes")
    if nodes is None:
        return flat
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise SourceError(
            "the config has a 'nodes' entry that is not a list of objects",
            'Each node must look like {"id": "mhsa_0", "type": "mhsa", "params": {...}}; export the model again.',
        )
    derived: dict[str, int] = {}
    attention_nodes = 0
    for node in nodes:
        ntype = _node_type(node)
        params = node.get("params") or {}
        if not isinstance(params, dict):
            raise SourceError(
                f"node {node.get('id', '?')!r} in the config has 'params' that is not an object",
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
                f"the config says {key}={flat[key]!r} but its nodes imply {value!r}; the top-level value was kept"
            )
        flat.setdefault(key, value)
    return flat


# ---- picking and constructing --------------------------------------------------------------
def defined_modules(module: types.ModuleType) -> dict[str, type[nn.Module]]:
    """nn.Module subclasses defined in this file (not imported into it)."""
    import torch.nn as nn

    return {
        k: v
        for k, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
    }


def pick_builder(
    module: types.ModuleType, config: dict[str, Any], label: str, model_name: Optional[str] = None
) -> tuple[Callable[..., Any], str, str]:
    """(callable, name, how): the name asked for (``:Class`` / model_name=, then config
    model_name), then CustomTransformer / Model / build_model(), then the single nn.Module class
    defined in the file, then the single one no other class of the file uses (the top model)."""
    candidates = defined_modules(module)
    wanted, asked_by = (model_name, "model name") if model_name is not None else (config.get("model_name"), None)
    if wanted is not None:
        return _named(module, wanted, asked_by or "config model_name", candidates, label)
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
    roots = _unused_by_others(candidates)
    if len(roots) == 1:
        return candidates[roots[0]], roots[0], "the only nn.Module class in the file that no other class uses"
    raise SourceError(
        f"{label} defines several nn.Module classes ({', '.join(sorted(candidates))}) and none is named "
        "CustomTransformer or Model, so tbkit cannot tell which one is the model",
        "Name it: tbkit run FILE.py:ClassName (or --model-name ClassName), tbkit.load(..., model_name='ClassName'), "
        'or "model_name" in the config.',
    )


def _named(
    module: types.ModuleType, wanted: object, asked_by: str, candidates: dict[str, type[nn.Module]], label: str
) -> tuple[Callable[..., Any], str, str]:
    import torch.nn as nn

    obj = vars(module).get(wanted) if isinstance(wanted, str) else None
    if (
        not isinstance(wanted, str)
        or obj is None
        or not callable(obj)
        or (inspect.isclass(obj) and not issubclass(obj, nn.Module))
    ):
        listed = ", ".join(sorted(candidates)) or "none"
        raise SourceError(
            f"{asked_by} {shorten(repr(wanted), 80)} names no nn.Module class or builder function in {label} "
            f"(nn.Module classes defined there: {listed})",
            'Use one of those: FILE.py:ClassName, --model-name ClassName, model_name= or "model_name" in the config.',
        )
    return obj, wanted, asked_by


def _unused_by_others(candidates: dict[str, type[nn.Module]]) -> list[str]:
    """Candidate classes whose name appears in no other candidate's source (read from the file)."""
    sources: dict[str, str] = {}
    for name, cls in candidates.items():
        try:
            sources[name] = inspect.getsource(cls)
        except (OSError, TypeError):
            return []
    return sorted(
        name
        for name in candidates
        if not any(re.search(rf"\b{re.escape(name)}\b", src) for other, src in sources.items() if other != name)
    )


def _keyword_arguments(
    builder: Callable[..., Any],
    name: str,
    flat: dict[str, Any],
    notes: list[str],
    module: Optional[types.ModuleType],
    provenance: Optional[Provenance],
) -> dict[str, Any]:
    """The arguments for the builder: a config object when it takes one, else the config keys its
    signature names (unknown keys noted, missing required ones named)."""
    found = configs.config_class(builder, module)
    if found is not None:
        param, cls = found
        obj = configs.build_object(cls, flat, f"{name}()", config_files.named(provenance))
        given = ", ".join(sorted(flat)) or "none; the class defaults"
        notes.append(f"config object: {name}({param}={cls.__name__}(...)) built from the config keys ({given})")
        return {param: obj}
    try:
        params = dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        params = {}
    P = inspect.Parameter
    takes_var_kw = any(p.kind is P.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    kwargs = dict(flat) if takes_var_kw else {k: v for k, v in flat.items() if k in named}
    unused = sorted(set(flat) - set(kwargs))
    if (named or takes_var_kw) and unused:
        notes.append(f"config keys not taken by {name}(): {', '.join(unused)} (not passed to the constructor)")
    missing = [
        k
        for k, p in params.items()
        if p.default is P.empty and p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL) and k not in kwargs
    ]
    if missing:
        raise SourceError(
            f"{name}() requires {', '.join(missing)}, {config_files.lacks(provenance)}",
            config_files.add_keys_hint(provenance, ", ".join(missing)),
        )
    return kwargs


def construct(
    builder: Callable[..., Any],
    name: str,
    flat: dict[str, Any],
    notes: list[str],
    module: Optional[types.ModuleType] = None,
    provenance: Optional[Provenance] = None,
    export: bool = False,
) -> nn.Module:
    """Call the builder (seeded) with the arguments ``_keyword_arguments`` chose; ``provenance``
    names the config file read (or where tbkit looked) in the messages; ``export``: the code is a
    Transformer Builder export (exports.py), the only case where "export it again" is advice."""
    import torch
    import torch.nn as nn

    kwargs = _keyword_arguments(builder, name, flat, notes, module, provenance)
    try:
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: fork_rng(devices=[]) restores just that one, and
            # torch.manual_seed would also reseed (and so disturb) the caller's CUDA generators.
            torch.default_generator.manual_seed(SEED)
            model = builder(**kwargs)
    except Exception as err:
        shown = ", ".join(f"{k}={shorten(repr(v), 60)}" for k, v in kwargs.items())
        raise SourceError(
            f"building {name}({shorten(shown, 300)}) raised {type(err).__name__}: {shorten(' '.join(str(err).split()), 300)}",
            advice.for_exception(err)
            or f"Check the constructor against {config_files.named(provenance)} (names and values){exports.again(export)}.",
        ) from None
    if not isinstance(model, nn.Module):
        raise SourceError(
            f"{name}() returned a {type(model).__name__}, not a torch.nn.Module",
            "Make build_model() (or the chosen class) return the model itself.",
        )
    return model
