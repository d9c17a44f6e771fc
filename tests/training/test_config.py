"""tbkit.train / tbkit.search keep their keyword API: each call builds a TrainConfig / SearchConfig
from the keywords, and a mistyped keyword is one paragraph naming the valid ones."""

from __future__ import annotations

import pytest

from tbkit.errors import UsageError
from tbkit.training.config import SearchConfig, TrainConfig, from_options


def test_keywords_set_over_a_given_config():
    cfg = from_options(TrainConfig, TrainConfig(epochs=5, lr=1e-2), {"lr": 3e-4})
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (5, 3e-4, 16)


def test_an_unknown_keyword_names_the_valid_ones():
    with pytest.raises(UsageError) as err:
        from_options(TrainConfig, None, {"epoch": 2})
    assert "'epoch' is not an option of TrainConfig" in str(err.value) and "epochs" in str(err.value)


def test_train_and_search_refuse_bad_values_before_loading_anything():
    import tbkit

    with pytest.raises(UsageError, match="epochs=0"):
        tbkit.train("no/such/model.py", epochs=0)
    with pytest.raises(UsageError, match="n_trials=0"):
        tbkit.search("no/such/model.py", n_trials=0)
    with pytest.raises(UsageError, match="learning_rate"):
        tbkit.train("no/such/model.py", learning_rate=1e-3)


def test_a_trial_trains_with_the_search_budget():
    run = SearchConfig(epochs=2, batch_size=8, device="cpu").trial(lr=1e-3, weight_decay=0.1, warmup_steps=3, seed=7)
    assert (run.epochs, run.batch_size, run.device, run.seed, run.warmup_steps) == (2, 8, "cpu", 7, 3)
