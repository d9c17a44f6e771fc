"""tbkit.train trains a copy unless in_place=True, and a copy can lie (LESSONS: "A copy that lies"):
minGPT's block calls its MLP through a lambda closing over the ORIGINAL submodule, so a deepcopy
still runs the original's MLP. Such a copy is refused before any training, with the way out."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import models as M
from tbkit.errors import UsageError
from tbkit.training.copies import closures_over_own_submodules, copy_loaded


def test_a_lambda_over_an_own_submodule_is_found():
    model = M.build(M.MinGPTClosureDecoder)
    assert closures_over_own_submodules(model) == ["blocks.0.mlp", "blocks.1.mlp"]


def test_deepcopy_rebinds_methods_and_partials_but_not_closures():
    """deepcopy copies a bound method's __self__ and a partial's arguments along with the model (no
    lie), but a function is copied by reference, so a closure inside a partial still lies."""

    class Holder(torch.nn.Module):
        def __init__(self, target: torch.nn.Module) -> None:
            super().__init__()
            self.call = target.forward  # rebound to the copy's target by deepcopy
            self.part = functools.partial(torch.nn.Module.__call__, target)  # argument copied too

    lin = torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(lin, Holder(lin))
    assert closures_over_own_submodules(model) == []

    model[1].hidden = functools.partial(lambda x, scale: lin(x) * scale, scale=2.0)
    assert closures_over_own_submodules(model) == ["0"]


def test_an_ordinary_model_copies_cleanly():
    """and a closure found is one a deepcopy really shares: the copy's lambda runs the original."""
    lying = M.build(M.MinGPTClosureDecoder)
    twin = copy.deepcopy(lying)
    assert twin.blocks[0].mlpf is lying.blocks[0].mlpf

    model = M.build(M.HealthyDecoder)
    assert closures_over_own_submodules(model) == []
    assert copy_loaded(M.loaded(model)).module is not model


def test_train_refuses_a_lying_copy_and_leaves_the_model_untouched(tmp_path):
    pytest.importorskip("lightning", reason="lightning is a tier3 extra (scripts/test.sh installs .[all])")
    import tbkit

    model = M.build(M.MinGPTClosureDecoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError, match=r"blocks\.0\.mlp.*in_place=True"):
        tbkit.train(M.loaded(model), synthetic=True, epochs=1, max_steps=2, checkpoint_dir=tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_search_refuses_a_lying_copy_before_any_trial(tmp_path):
    pytest.importorskip("optuna", reason="optuna is a tier3 extra (scripts/test.sh installs .[all])")
    import tbkit

    storage = tmp_path / "hpo.db"
    with pytest.raises(UsageError, match=r"builds a fresh model.*stored lambda"):
        tbkit.search(
            M.loaded(M.build(M.MinGPTClosureDecoder)), synthetic=True, n_trials=1, storage=f"sqlite:///{storage}"
        )
    assert not storage.exists()  # refused before a study was created


def test_the_hpo_check_skips_a_model_it_cannot_copy_and_says_why(tmp_path):
    import io

    import tbkit

    report = tbkit.run(
        M.loaded(M.build(M.MinGPTClosureDecoder)),
        checks=["hpo"],
        options={"synthetic": True},
        out_dir=tmp_path,
        progress=False,
        stream=io.StringIO(),
    )
    (row,) = report.rows
    assert row.status.value == "SKIP" and "blocks.0.mlp" in row.detail and "tbkit.search(lambda" in row.detail
