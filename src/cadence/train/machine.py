"""Checks of this machine against a config: the device, and the packages the chosen attention backend,
optimizer and quantizers need.

`cadence validate` and the start of `cadence train` run them, so a missing GPU or package is reported in a
second instead of after minutes of model loading and caching. The builders keep their own checks (a
package can break between the two); these only move the report earlier.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from cadence.config.compat import Parts
from cadence.config.schema import JobConfig
from cadence.perf.attention import (
    BACKENDS,
    AttentionBackendError,
    check_backend_device,
    check_backend_package,
)
from cadence.train.precision import resolve_device

Issue = tuple[Parts, str]

# train.optimizer -> (module it imports, what to do without it)
OPTIMIZER_PACKAGES = {
    "adamw8bit": ("bitsandbytes", "install bitsandbytes (CUDA) or set train.optimizer: adamw (same maths)"),
    "prodigy": ("prodigyopt", "install prodigyopt"),
    "adamw_schedulefree": ("schedulefree", "install schedulefree"),
}
# qtype -> module; fp8 and uint4 are Cadence's own
QTYPE_PACKAGES = {
    "int8": "torchao",
    "qfloat8": "optimum.quanto",
    "qint8": "optimum.quanto",
    "qint4": "optimum.quanto",
}


def _importable(module: str) -> str | None:
    """None when `module` imports, else why not (a broken CUDA setup can raise more than ImportError)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # any import failure (a broken CUDA setup too) makes the package unusable
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class MachineNeeds:
    """The settings a machine must serve: where the run goes and which packages it imports."""

    device: str = "auto"
    attention_backend: str = "native"
    optimizer: str = "adamw"
    quantize: bool = False
    qtype: str = "qfloat8"
    quantize_te: bool = False
    qtype_te: str = "qfloat8"
    parallel_backend: str = "auto"  # the world under torchrun: parallel.backend, expert groups
    expert_parallel: bool = False
    trained_experts: int = 1

    @classmethod
    def of(cls, cfg: JobConfig) -> MachineNeeds:
        from cadence.parallel.launch import trained_experts

        m, t, kw = cfg.model, cfg.train, cfg.model.model_kwargs
        return cls(
            cfg.device,
            t.attention_backend,
            t.optimizer,
            m.quantize,
            m.qtype,
            m.quantize_te,
            m.qtype_te,
            cfg.parallel.backend,
            cfg.parallel.expert_parallel,
            len(trained_experts(m.arch, kw.train_high_noise, kw.train_low_noise)),
        )

    @classmethod
    def from_raw(cls, body: dict[str, Any]) -> MachineNeeds:
        """From a process body that did not validate: each setting that reads as its type is kept, the rest
        take their defaults (their own errors are in the config report), so the machine is still checked."""
        train = body.get("train") if isinstance(body.get("train"), dict) else {}
        model = body.get("model") if isinstance(body.get("model"), dict) else {}
        parallel = body.get("parallel") if isinstance(body.get("parallel"), dict) else {}
        wanted = {
            "device": body.get("device"),
            "attention_backend": train.get("attention_backend"),
            "optimizer": train.get("optimizer"),
            "quantize": model.get("quantize"),
            "qtype": model.get("qtype"),
            "quantize_te": model.get("quantize_te"),
            "qtype_te": model.get("qtype_te"),
            "parallel_backend": parallel.get("backend"),
            "expert_parallel": parallel.get("expert_parallel"),
        }
        defaults = cls()
        kept = {
            key: value.strip().lower() if isinstance(value, str) and key != "qtype" else value
            for key, value in wanted.items()
            if isinstance(value, type(getattr(defaults, key)))
        }
        if kept.get("optimizer") == "adamw8":  # ai-toolkit's alias (compat.VALUE_ALIASES)
            kept["optimizer"] = "adamw8bit"
        return cls(**kept)


def machine_issues(cfg: JobConfig | MachineNeeds) -> list[Issue]:
    """Every problem this machine has with the config, each at the key that asks for it."""
    needs = cfg if isinstance(cfg, MachineNeeds) else MachineNeeds.of(cfg)
    issues: list[Issue] = []
    try:
        device: torch.device | None = resolve_device(needs.device)
    except ValueError as exc:
        issues.append((("device",), str(exc).removeprefix("device: ")))
        device = None
    except RuntimeError:  # torch cannot parse it (a config that did not validate)
        issues.append((("device",), f"got {needs.device!r}; use auto, cpu, cuda, cuda:N or mps"))
        device = None
    if needs.attention_backend in BACKENDS:  # another value is a config error, reported there
        issues += _attention_issues(needs.attention_backend, device)
    optimizer = needs.optimizer
    if optimizer in OPTIMIZER_PACKAGES:
        module, advice = OPTIMIZER_PACKAGES[optimizer]
        if (why := _importable(module)) is not None:
            issues.append(
                (
                    ("train", "optimizer"),
                    f"{optimizer} needs {module}, which cannot be imported ({why}); {advice}",
                )
            )
        elif optimizer == "adamw8bit" and device is not None and device.type != "cuda":
            issues.append(
                (
                    ("train", "optimizer"),
                    f"adamw8bit runs on CUDA GPUs only, and this run is on {device.type}; {advice}",
                )
            )
    for switch, key in (("quantize", "qtype"), ("quantize_te", "qtype_te")):
        qtype = str(getattr(needs, key)).partition("|")[0].strip().lower()
        module = QTYPE_PACKAGES.get(qtype)
        if getattr(needs, switch) and module and (why := _importable(module)) is not None:
            issues.append(
                (
                    ("model", key),
                    f"{qtype!r} needs {module.split('.')[0]}, which cannot be imported ({why}); install it or use fp8",
                )
            )
    from cadence.parallel.launch import world_issues  # the torchrun world: variables, GPUs, backend

    issues += world_issues(needs.device, needs.parallel_backend, needs.expert_parallel, needs.trained_experts)
    return issues


def _attention_issues(backend: str, device: torch.device | None) -> list[Issue]:
    try:
        if device is not None:
            check_backend_device(backend, device)
        check_backend_package(backend)
    except AttentionBackendError as exc:
        return [(("train", "attention_backend"), str(exc).removeprefix("train.attention_backend: "))]
    return []
