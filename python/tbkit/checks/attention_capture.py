"""Per-head attention weights from one forward pass, whatever form the model's attention takes.

Three sources, tried together during a single forward:

1. ``nn.MultiheadAttention``: a forward pre-hook rewrites the call to ``need_weights=True,
   average_attn_weights=False`` and a forward hook records the per-head weights, then hands the
   caller exactly what it asked for (``None`` when it asked for no weights, the head average when
   it asked for the average). The attention output itself is untouched; ``capture`` also runs the
   model without hooks so callers can verify that.
2. Any other module that computes attention with ``softmax`` over a (query, key) square or with
   ``F.scaled_dot_product_attention``: a ``TorchFunctionMode`` sees those calls. Softmax outputs are
   the weights themselves; for SDPA the weights are recomputed exactly from the q, k, mask, causal
   flag and scale that the call received (softmax(QKᵀ·scale + mask)).
3. Modules that return weights in their output (a ``(out, weights)`` tuple): a forward hook picks
   up a (B, H, Tq, Tk) tensor whose rows sum to 1, unless sources 1–2 already recorded it.

Why grad mode and no fast path: ``nn.TransformerEncoderLayer`` (and ``nn.MultiheadAttention``)
take a fused C++ fast path in eval + no_grad that never calls the Python ``forward`` of the
attention module, so no hook would fire. ``capture`` therefore runs the forward with grad enabled
and ``torch.backends.mha`` fast path disabled, restoring both afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

# nn.MultiheadAttention.forward's parameters after (query, key, value), for callers that pass
# them positionally: the pre-hook turns those into keywords before rewriting two of them.
_MHA_LATER_PARAMS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


@dataclass
class AttentionMap:
    """Weights of one attention call: ``weights`` is (B, H, Tq, Tk), float32, on CPU."""

    layer: str  # qualified module name ("" is the root module)
    source: str  # "MultiheadAttention" | "softmax" | "scaled_dot_product_attention" | "returned"
    weights: torch.Tensor

    @property
    def heads(self) -> int:
        return int(self.weights.shape[1])


@dataclass
class CaptureResult:
    maps: list[AttentionMap] = field(default_factory=list)  # in call order
    output_with_capture: Optional[torch.Tensor] = None
    output_without_capture: Optional[torch.Tensor] = None
    notes: list[str] = field(default_factory=list)

    @property
    def max_output_change(self) -> float:
        """Largest |Δ| between the model output with and without capture (0.0 means identical)."""
        a, b = self.output_with_capture, self.output_without_capture
        if a is None or b is None:
            return float("nan")
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def capture(forward: Callable[[], torch.Tensor], root: nn.Module, batch: int, lengths: set[int]) -> CaptureResult:
    """Run ``forward()`` (a closure calling the model) twice: plainly, then with capture.

    ``root`` is the ``nn.Module`` to hook. ``batch`` and ``lengths`` (the sequence lengths fed in)
    tell attention squares apart from other softmax calls (a vocab softmax is (B, T, V)).
    """
    import torch

    result = CaptureResult()
    with torch.no_grad():
        result.output_without_capture = forward().detach()

    names = {m: n for n, m in root.named_modules()}
    state = _State(batch=batch, lengths=set(lengths), names=names)
    handles: list[RemovableHandle] = []
    try:
        for module in root.modules():
            if isinstance(module, torch.nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(state.mha_pre, with_kwargs=True))
                handles.append(module.register_forward_hook(state.mha_post, with_kwargs=True))
            else:
                handles.append(module.register_forward_pre_hook(state.enter))
                handles.append(module.register_forward_hook(state.leave))
        with _fastpath_disabled(), torch.enable_grad(), _FunctionSpy(state):
            out = forward()
        result.output_with_capture = out.detach()
    finally:
        for h in handles:
            h.remove()
    result.maps = state.maps
    if state.fastpath_note:
        result.notes.append(state.fastpath_note)
    return result


@contextlib.contextmanager
def _fastpath_disabled() -> Iterator[None]:
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


class _State:
    """What the hooks share during the capturing forward."""

    def __init__(self, batch: int, lengths: set[int], names: dict[nn.Module, str]) -> None:
        self.batch = batch
        self.lengths = lengths
        self.names = names
        self.maps: list[AttentionMap] = []
        self.stack: list[nn.Module] = []  # modules entered and not yet left (innermost last)
        self.mha_calls: list[tuple[bool, bool]] = []  # per active MHA call: (asked need_weights, asked average)
        self.seen: set[int] = set()  # ids of weight tensors already recorded or handed out by us
        self.keep: list[object] = []  # keep those tensors alive so their ids stay unique
        self.fastpath_note = ""

    # -- generic modules: a name stack, and returned weights ------------------------------
    def enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.stack.append(module)

    def leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        for tensor in _tensors_in(output):
            w = self._as_square(tensor, require_4d=True)
            if w is not None and id(tensor) not in self.seen and _rows_sum_to_one(w):
                self._record(self.names.get(module, "?"), "returned", w, tensor)

    # -- nn.MultiheadAttention: force per-head weights, give the caller what it asked for ----
    def mha_pre(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.stack.append(module)
        kwargs = dict(kwargs)
        for name, value in zip(_MHA_LATER_PARAMS, args[3:]):
            kwargs[name] = value
        need = kwargs.get("need_weights", True)
        avg = kwargs.get("average_attn_weights", True)
        self.mha_calls.append((need, avg))
        kwargs["need_weights"] = True
        kwargs["average_attn_weights"] = False
        return tuple(args[:3]), kwargs

    def mha_post(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> tuple[Any, Any]:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        need, avg = self.mha_calls.pop()
        attn_out, weights = output
        if weights is not None:
            w = weights.detach()
            if w.dim() == 3:  # unbatched input: (H, Tq, Tk)
                w = w.unsqueeze(0)
            self._record(self.names.get(module, "?"), "MultiheadAttention", w, weights)
        if not need:
            return attn_out, None
        if avg and weights is not None:
            handed = weights.mean(dim=-3)
            self.seen.add(id(handed))
            self.keep.append(handed)
            return attn_out, handed
        return attn_out, weights

    # -- softmax / SDPA seen by the function spy -------------------------------------------
    def inside_mha(self) -> bool:
        return bool(self.mha_calls)

    def current_name(self) -> str:
        return self.names.get(self.stack[-1], "?") if self.stack else ""

    def on_softmax(self, out: object) -> None:
        w = self._as_square(out, require_4d=False)
        if w is not None:
            self._record(self.current_name(), "softmax", w, out)

    def on_sdpa(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        w = _sdpa_weights(*args, **kwargs)
        if w is not None:
            w = self._as_square(w, require_4d=True)
        if w is not None:
            self._record(self.current_name(), "scaled_dot_product_attention", w, None)

    # -- helpers ----------------------------------------------------------------------------
    def _as_square(self, t: object, require_4d: bool) -> Optional[torch.Tensor]:
        """(B, H, Tq, Tk) view of ``t`` if it looks like attention weights of this forward."""
        import torch

        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (3, 4):
            return None
        if require_4d and t.dim() != 4:
            return None
        tq, tk = int(t.shape[-2]), int(t.shape[-1])
        if tq not in self.lengths or tk not in self.lengths:
            return None
        if t.dim() == 4:
            return t.detach() if int(t.shape[0]) == self.batch else None
        lead = int(t.shape[0])  # (B*H, Tq, Tk), the layout of hand-written multi-head code
        if lead % self.batch:
            return None
        return t.detach().reshape(self.batch, lead // self.batch, tq, tk)

    def _record(self, name: str, source: str, w: torch.Tensor, original: object) -> None:
        if original is not None:
            self.seen.add(id(original))
            self.keep.append(original)
        self.maps.append(AttentionMap(name, source, w.detach().float().cpu().clone()))


class _FunctionSpy:
    """A TorchFunctionMode that reports softmax and SDPA calls to the capture state."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.mode: Optional[contextlib.AbstractContextManager[object, Optional[bool]]] = None

    def __enter__(self) -> _FunctionSpy:
        import torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        softmaxes = {torch.softmax, F.softmax, torch.Tensor.softmax, torch.nn.functional.softmax}
        sdpa = getattr(F, "scaled_dot_product_attention", None)
        state = self.state

        class Spy(TorchFunctionMode):
            def __torch_function__(
                self,
                func: Callable[..., Any],
                types: Iterable[type],
                args: tuple[Any, ...] = (),
                kwargs: Optional[dict[str, Any]] = None,
            ) -> Any:
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                if state.inside_mha():  # recorded exactly by the MHA hooks already
                    return out
                if func in softmaxes and _softmax_over_last_dim(args, kwargs):
                    state.on_softmax(out)
                elif sdpa is not None and func is sdpa:
                    with torch.no_grad():
                        state.on_sdpa(args, kwargs)
                return out

        mode: contextlib.AbstractContextManager[object, Optional[bool]] = Spy()
        self.mode = mode
        mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Optional[bool]:
        assert self.mode is not None  # set by __enter__
        return self.mode.__exit__(*exc)


def _softmax_over_last_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    x = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if x is None or dim is None or not hasattr(x, "dim"):
        return False
    return dim in (-1, x.dim() - 1)


def _sdpa_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    **_ignored: Any,
) -> Optional[torch.Tensor]:
    """softmax(QKᵀ·scale + mask) exactly as ``F.scaled_dot_product_attention`` defines it."""
    import torch

    if query.dim() < 3:
        return None
    q, k = query.detach().float(), key.detach().float()
    if q.dim() == 3:
        q, k = q.unsqueeze(1), k.unsqueeze(1)
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: share each key head
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * factor
    tq, tk = scores.shape[-2], scores.shape[-1]
    if is_causal:
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        m = attn_mask.detach()
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.float()
    return torch.softmax(scores, dim=-1)


def _tensors_in(output: object) -> list[torch.Tensor]:
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    if isinstance(output, dict):
        return [t for t in output.values() if isinstance(t, torch.Tensor)]
    return []


def _rows_sum_to_one(w: torch.Tensor) -> bool:
    import torch

    if w.numel() == 0 or bool((w < 0).any()):
        return False
    sums = w.float().sum(dim=-1)
    return bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3))


def describe_nothing_found(root: nn.Module) -> str:
    """Why no weights could be captured, in words, for the SKIP row."""
    kinds = sorted({type(m).__name__ for m in root.modules()})
    shown = ", ".join(kinds[:12]) + (", …" if len(kinds) > 12 else "")
    return (
        "no attention weights could be captured: the forward made no nn.MultiheadAttention call, no "
        "softmax over a (query, key) square, no F.scaled_dot_product_attention call, and no module "
        f"returned (B, heads, query, key) weights (module types seen: {shown}). If the model attends "
        "with a custom kernel, return the weights from the attention module's forward as "
        "(output, weights) so they can be checked"
    )
