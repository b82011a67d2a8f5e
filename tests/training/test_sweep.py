from __future__ import annotations

import pytest
from pydantic import ValidationError

from training.config import FinetuneConfig
from training.sweep import Dist, SearchSpace, apply_trial, param_space


def test_apply_trial_sets_searched_fields_only():
    base = FinetuneConfig(phase="routing")
    cfg = apply_trial(base, {"lr": 0.01, "lora_r": 32.0, "lora_alpha": 64, "warmup_ratio": 0.1, "epochs": 3})
    assert (cfg.optim.lr, cfg.lora.r, cfg.lora.alpha, cfg.optim.warmup_ratio, cfg.optim.epochs) == (0.01, 32, 64, 0.1, 3)
    assert cfg.phase == "routing" and cfg.lora.target_modules == base.lora.target_modules
    with pytest.raises(KeyError):
        apply_trial(base, {"momentum": 0.9})


def test_param_space_maps_distributions():
    space = param_space(SearchSpace(lr=Dist(kind="loguniform", values=[1e-5, 1e-3]),
                                    lora_r=Dist(kind="choice", values=[8, 16]),
                                    epochs=Dist(kind="grid", values=[1, 2])))
    assert set(space) == {"lr", "lora_r", "epochs"}
    assert space["epochs"] == {"grid_search": [1, 2]}
    assert 1e-5 <= space["lr"].sample() <= 1e-3 and space["lora_r"].sample() in (8, 16)
    with pytest.raises(ValidationError):
        Dist(kind="loguniform", values=[1e-5])
