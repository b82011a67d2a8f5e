"""Sweep settings and the mapping from a Tune trial's sampled values to a ``FinetuneConfig``.

Searched fields: learning rate, LoRA r and alpha, warmup ratio, epochs. A field left out of
``search`` keeps the base config's value. Each field is a ``Dist``:
``{kind: loguniform, values: [1e-5, 1e-3]}``, ``{kind: choice, values: [8, 16]}`` or
``{kind: grid, values: [...]}`` (every value, times ``num_samples``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from chipforge.config import Config
from training.config import FinetuneConfig

# search field → dotted FinetuneConfig field
TARGETS: dict[str, str] = {
    "lr": "optim.lr",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "warmup_ratio": "optim.warmup_ratio",
    "epochs": "optim.epochs",
}


class Dist(Config):
    kind: Literal["loguniform", "uniform", "choice", "grid"]
    values: list[float | int]

    @model_validator(mode="after")
    def _check(self) -> "Dist":
        if self.kind in ("loguniform", "uniform") and len(self.values) != 2:
            raise ValueError(f"{self.kind} takes values: [low, high]")
        if not self.values:
            raise ValueError("values must not be empty")
        return self

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))


class SearchSpace(Config):
    lr: Dist | None = None
    lora_r: Dist | None = None
    lora_alpha: Dist | None = None
    warmup_ratio: Dist | None = None
    epochs: Dist | None = None


class AshaSettings(Config):
    """ASHA over ``training_iteration`` = number of evaluations a trial has reported."""

    max_t: int = Field(100, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)


def param_space(search: SearchSpace) -> dict[str, Any]:
    return {name: dist.to_tune() for name, dist in search if dist is not None}


def apply_trial(base: FinetuneConfig, trial: dict[str, Any]) -> FinetuneConfig:
    """``base`` with the trial's sampled values set (validated like any config)."""
    data = base.model_dump(mode="json")
    for name, value in trial.items():
        if name not in TARGETS:
            raise KeyError(f"unknown search field {name!r}; known: {sorted(TARGETS)}")
        node = data
        *parents, leaf = TARGETS[name].split(".")
        for p in parents:
            node = node[p]
        node[leaf] = int(value) if leaf in ("r", "alpha", "epochs") else float(value)
    return FinetuneConfig.model_validate(data)
