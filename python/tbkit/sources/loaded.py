"""What every source produces: a model, the facts taken from its real modules, and where it came from."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from tbkit.errors import mask_credentials
from tbkit.sources.conventions import call, unwrap_output  # noqa: F401 — unwrap_output: re-exported

if TYPE_CHECKING:
    import torch

KINDS = ("decoder", "encoder", "seq2seq")


@dataclass
class SourceFile:
    name: str
    size: int
    sha256: str


@dataclass
class Provenance:
    """Where the model code came from. Shown on load and carried into every report."""

    source: str  # "gist" | "folder" | "file" | "module" | "example"
    location: str  # gist id / path / "module:Class" / example name
    owner: Optional[str] = None
    gist_id: Optional[str] = None
    revision: Optional[str] = None  # always set for gists: the resolved, pinned revision
    fetched_at: Optional[str] = None  # ISO 8601 UTC
    from_cache: bool = False
    files: list[SourceFile] = field(default_factory=list)
    content_sha256: Optional[str] = None  # over all files, sorted by name (name, NUL, bytes, NUL)
    config_file: Optional[str] = None  # the config file read (sources/config_files.py), if any
    config_sha256: Optional[str] = None
    config_looked: list[str] = field(default_factory=list)  # where config.json was looked for, when none was read

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["location"] = mask_credentials(self.location)  # a URL's user:password@ is never recorded
        return out

    def __str__(self) -> str:
        where = self.location
        if self.source == "gist":
            where = f"gist {self.gist_id} by {self.owner or 'unknown owner'} at revision {self.revision}"
            if self.from_cache:
                where += " (from cache)"
        lines = [f"model code from {mask_credentials(where)}"]
        if self.content_sha256:
            lines.append(f"content sha256 {self.content_sha256}")
        lines += [f"  {f.name}: {f.size} bytes, sha256 {f.sha256}" for f in self.files]
        if self.config_file:
            lines.append(f"config from {mask_credentials(self.config_file)}, sha256 {self.config_sha256}")
        elif self.config_looked:
            lines.append(f"no config file read (looked for config.json in {', '.join(self.config_looked)})")
        return "\n".join(lines)


@dataclass
class LoadedModel:
    """A model ready for checks.

    ``vocab_size`` and ``max_len`` come from the real modules (input embedding rows, positional
    table / declared limit), never from the config alone; disagreements go to ``notes``.
    ``max_len`` is None when the model has no hard limit that could be found.
    """

    module: Any  # torch.nn.Module
    config: dict[str, Any]
    kind: str  # one of KINDS
    kind_reason: str  # "declared", "from config 'kind'", or "inferred: <why>"
    vocab_size: int
    max_len: Optional[int]
    provenance: Provenance
    notes: list[str] = field(default_factory=list)  # human-readable findings made while loading
    pad_token_id: int = 0
    # set when forward returns every position only when given targets (nanoGPT style): the name of
    # that parameter; forward() then passes the input ids (the decoder ids for seq2seq) as targets
    targets_argument: Optional[str] = None

    # how the model is called (layout, mask, inputs): measured or declared per run, see
    # tbkit.sources.conventions; None = what the forward's signature alone says
    conventions: Any = None

    # ---- the forward contract -------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Call the model and return one tensor: (B, T, V) logits or (B, T, H) hidden states.

        ``attention_mask`` is 1 for real tokens, 0 for padding (the HF convention); it is handed
        over under the model's own mask parameter, dtype and polarity, and inputs are transposed
        for a sequence-first model (``tbkit.sources.conventions.call``). For seq2seq,
        ``decoder_input_ids`` defaults to ``input_ids`` and T is the decoder length.
        """
        return call(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)

    __call__ = forward

    def with_module(self, module: Any) -> LoadedModel:
        """The same facts around another module of the same design (a copy to train, a fresh
        instance, a reference model on the same data); nothing read from the old module's forward
        is carried over."""
        return dataclasses.replace(self, module=module)

    @property
    def accepts_attention_mask(self) -> bool:
        return "attention_mask" in self._forward_params()

    def _forward_params(self) -> dict[str, inspect.Parameter]:
        cached: Optional[dict[str, inspect.Parameter]] = self.__dict__.get("_params_cache")
        if cached is None:
            cached = dict(inspect.signature(self.module.forward).parameters)
            self.__dict__["_params_cache"] = cached
        return cached

    def summary(self) -> str:
        return (
            f"{type(self.module).__name__}: {self.kind} ({self.kind_reason}), vocab {self.vocab_size}, "
            f"max length {self.max_len if self.max_len is not None else 'unbounded'}\n{self.provenance}"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # printer: IPython's PrettyPrinter
        """IPython shows the summary and provenance (not the dataclass dump) when a cell ends in a load."""
        printer.text("LoadedModel(...)" if cycle else "\n".join([self.summary(), *(f"note: {n}" for n in self.notes)]))
