"""A resume names a changed adapter type (or DoRA switched) instead of blaming the targets or the rank."""

from __future__ import annotations

import pytest
import torch

from cadence.config.schema import NetworkConfig, NetworkKwargs
from cadence.models.tiny import _transformer
from cadence.networks.lora import LoRANetwork
from cadence.train.resume_check import adapter_kinds, resume_mismatches


@pytest.fixture(scope="module")
def root() -> torch.nn.Module:
    return _transformer("wan22_14b_i2v")


def _saved(root, cfg: NetworkConfig) -> dict[str, torch.Tensor]:
    return {f"high_noise::{k}": v for k, v in LoRANetwork(root, cfg, name="high_noise").state_dict().items()}


@pytest.mark.parametrize(
    ("before", "after", "words"),
    [
        (
            NetworkConfig(linear=4),
            NetworkConfig(type="lokr"),
            "trained LoRA adapters, this config builds LoKr",
        ),
        (
            NetworkConfig(type="loha"),
            NetworkConfig(linear=4),
            "trained LoHa adapters, this config builds LoRA",
        ),
        (NetworkConfig(linear=4), NetworkConfig(type="dora"), "builds DoRA+LoRA"),
        (
            NetworkConfig(type="lokr"),
            NetworkConfig(type="lokr", lokr_full_rank=False, linear=2),
            "lokr_full_rank or the rank",
        ),
        (
            NetworkConfig(type="dora"),
            NetworkConfig(type="dora", network_kwargs=NetworkKwargs(wd_on_output=True)),
            "wd_on_output changed",
        ),
    ],
)
def test_changed_adapter_is_named(root, before, after, words) -> None:
    now = {"high_noise": LoRANetwork(root, after, name="high_noise")}
    problems = resume_mismatches(_saved(root, before), {}, now, "adamw")
    assert len(problems) == 1 and words in problems[0], problems


def test_adapter_kinds_from_parameter_names(root) -> None:
    keys = LoRANetwork(root, NetworkConfig(type="loha", network_kwargs=NetworkKwargs(dora_wd=True)), name="x")
    assert adapter_kinds(keys.state_dict()) == ["DoRA", "LoHa"]
