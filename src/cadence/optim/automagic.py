"""Automagic: the seed trainer's self-tuning optimizer, re-implemented from its published algorithm.

No maintained library ships it, and users' configs name it (seed 003 runs it with per-expert bounds), so
Cadence implements the same mathematics:

1. second moment of the gradient, Adafactor style: for tensors with >= 2 dims a factored estimate
   (EMAs of the row means and column means of ``grad**2 + eps``), for 1-D tensors a full EMA;
   ``update = grad / sqrt(v_hat)``;
2. RMS clipping: ``update /= max(1, rms(update) / clip_threshold)``;
3. a per-element learning-rate mask, starting at the group's ``lr``: where the sign of this update
   (``update > 0``) equals the sign of the element's previous update the mask grows by ``lr_bump``,
   elsewhere it shrinks by ``lr_bump``; it is then clamped to ``[min_lr, max_lr]``;
4. decoupled weight decay ``p -= weight_decay * mask * p``, then ``p -= mask * update``.

Differences from the seed, on purpose: a parameter's first update compares no signs (the seed compared
against an all-"negative" initial polarity); the mask is kept in float32 (the seed re-quantized it to
8 bits every step, which made resume inexact). Like the seed, bfloat16 parameters are updated in float32
and written back with stochastic rounding (an update of 1e-5 is below bf16's resolution and would vanish
with round-to-nearest); the rounding noise comes from a generator re-seeded from (rounding_seed, step),
so runs and resumes stay bit-reproducible without saving generator state. float16 rounds to nearest.

Idle experts: a parameter whose grad is None is skipped, and its stored sign waits. When its expert trains
again, the first update is compared with that sign (its own last update, however many steps ago), so the
mask keeps adapting across expert switches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

logger = logging.getLogger(__name__)

OPTION_KEYS = ("lr", "min_lr", "max_lr", "lr_bump", "beta2", "eps", "clip_threshold", "weight_decay")
EXPERT_PREFIXES = ("high_noise_", "low_noise_")
MAX_START_LR = 1e-3  # the seed forces a start lr above this to 1e-6: automagic is not prodigy


def _first_eps(eps: float | tuple[float, ...] | list[float]) -> float:
    """The seed's eps is a pair (1e-30, 1e-3) of which only the first is used."""
    return float(eps[0]) if isinstance(eps, tuple | list) else float(eps)


class Automagic(torch.optim.Optimizer):
    """Adafactor-style factored second moment + per-element sign-driven learning rates.

    Per-group options (each group may override any of them): lr (initial per-element lr), min_lr,
    max_lr, lr_bump, beta2, eps, clip_threshold, weight_decay.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-6,
        min_lr: float = 1e-7,
        max_lr: float = 1e-3,
        lr_bump: float = 1e-6,
        beta2: float = 0.999,
        eps: float | tuple[float, ...] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
        rounding_seed: int = 0,
    ) -> None:
        defaults = dict(
            lr=lr,
            min_lr=min_lr,
            max_lr=max_lr,
            lr_bump=lr_bump,
            beta2=beta2,
            eps=eps,
            clip_threshold=clip_threshold,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)
        for index, group in enumerate(self.param_groups):
            self._check_group(index, group)
        self._step_count = 0
        self.rounding_seed = rounding_seed
        self._generators: dict[torch.device, torch.Generator] = {}

    @staticmethod
    def _check_group(index: int, group: dict[str, Any]) -> None:
        name = group.get("expert", index)
        if group["lr"] > MAX_START_LR:
            logger.warning(
                "automagic: start lr %.3g of param group %s is above %.0e; using 1e-6 as the seed trainer "
                "does (automagic raises the lr itself up to max_lr; set train.lr to 1e-6 to silence this)",
                group["lr"],
                name,
                MAX_START_LR,
            )
            group["lr"] = 1e-6
        if not 0 < group["min_lr"] <= group["max_lr"]:
            raise ValueError(
                f"automagic param group {name}: need 0 < min_lr <= max_lr, got min_lr={group['min_lr']}, "
                f"max_lr={group['max_lr']}; fix train.optimizer_params"
            )
        if not 0 <= group["beta2"] < 1 or group["lr_bump"] < 0 or group["clip_threshold"] <= 0:
            raise ValueError(
                f"automagic param group {name}: need 0 <= beta2 < 1, lr_bump >= 0, clip_threshold > 0; got "
                f"beta2={group['beta2']}, lr_bump={group['lr_bump']}, clip_threshold={group['clip_threshold']}"
            )

    # ----------------------------------------------------------------------------------- stepping
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_count += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("automagic does not support sparse gradients")
                self._step_param(p, group)
        return loss

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        state["step"] = 0
        state["last_step"] = None
        state["lr_mask"] = torch.full(p.shape, float(group["lr"]), dtype=torch.float32, device=p.device)
        state["last_sign"] = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
        if p.dim() >= 2:
            state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], dtype=torch.float32, device=p.device)
            state["exp_avg_sq_col"] = torch.zeros(
                p.shape[:-2] + p.shape[-1:], dtype=torch.float32, device=p.device
            )
        else:
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        return state

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p] if len(self.state[p]) else self._init_state(p, group)
        grad = p.grad.to(torch.float32)
        beta2 = float(group["beta2"])
        sq = grad * grad + _first_eps(group["eps"])
        if p.dim() >= 2:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2).add_(sq.mean(dim=-1), alpha=1.0 - beta2)
            col.mul_(beta2).add_(sq.mean(dim=-2), alpha=1.0 - beta2)
            r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
            c_factor = col.unsqueeze(-2).rsqrt()
            update = r_factor * c_factor * grad
        else:
            v = state["exp_avg_sq"]
            v.mul_(beta2).add_(sq, alpha=1.0 - beta2)
            update = v.rsqrt() * grad
        rms = update.norm(2) / (update.numel() ** 0.5)
        update.div_((rms / float(group["clip_threshold"])).clamp(min=1.0))

        sign = update > 0
        mask = state["lr_mask"]
        # Compare with this parameter's own previous update. An expert that sat idle (grad None, skipped)
        # keeps the sign of its last real update, so its first step back compares like-for-like; comparing
        # only on consecutive optimizer steps would freeze the mask when experts alternate every step.
        if state["step"] > 0:
            bump = float(group["lr_bump"])
            mask = torch.where(sign == state["last_sign"], mask + bump, mask - bump)
        mask = mask.clamp(min=float(group["min_lr"]), max=float(group["max_lr"]))
        state["lr_mask"] = mask
        state["last_sign"] = sign
        state["last_step"] = self._step_count
        state["step"] += 1

        work = p.detach().to(torch.float32) if p.dtype != torch.float32 else p.data
        if group["weight_decay"] != 0:
            work.sub_(work * mask * float(group["weight_decay"]))
        work.sub_(update * mask)
        if work is not p.data:
            if p.dtype == torch.bfloat16:
                _copy_stochastic(p.data, work, self._rounding_generator(p.device))
            else:
                p.data.copy_(work)

    def _rounding_generator(self, device: torch.device) -> torch.Generator:
        """Seeded from (rounding_seed, step): the noise of a step does not depend on earlier steps."""
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        gen.manual_seed(self.rounding_seed * 1_000_003 + self._step_count)
        return gen

    # ----------------------------------------------------------------------------------- reading
    def get_learning_rates(self) -> list[float]:
        """Per group: the mean of the lr mask over all its elements (the group lr before any step)."""
        rates: list[float] = []
        for group in self.param_groups:
            total, count = 0.0, 0
            for p in group["params"]:
                mask = self.state[p].get("lr_mask") if p in self.state else None
                if mask is not None:
                    total += float(mask.sum(dtype=torch.float64))
                    count += mask.numel()
            rates.append(total / count if count else float(group["lr"]))
        return rates

    def get_avg_learning_rate(self, group: int | None = None) -> float:
        """Mean lr of one group (by index), or the mean over groups when group is None."""
        rates = self.get_learning_rates()
        if group is not None:
            return rates[group]
        return sum(rates) / len(rates)

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["automagic_step"] = self._step_count
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore everything exactly (no dtype casts: masks and moments stay float32)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"automagic state has {len(saved_groups)} param groups, the optimizer has "
                f"{len(self.param_groups)}; the checkpoint was made with a different network/config"
            )
        index_to_param: dict[int, torch.Tensor] = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"automagic param group {gi}: checkpoint has {len(saved['params'])} tensors, "
                    f"the optimizer has {len(group['params'])}"
                )
            for key, value in saved.items():
                if key != "params":
                    group[key] = value
            index_to_param.update(zip(saved["params"], group["params"], strict=True))
        self.state.clear()
        for index, saved_state in state_dict["state"].items():
            p = index_to_param[int(index)]
            self.state[p] = {
                k: v.detach().clone().to(p.device) if torch.is_tensor(v) else v
                for k, v in saved_state.items()
            }
        self._step_count = int(state_dict.get("automagic_step", 0))


def _copy_stochastic(target: torch.Tensor, source: torch.Tensor, gen: torch.Generator) -> None:
    """Round float32 `source` into bfloat16 `target` up or down with probability by distance.

    Adds uniform random bits below bfloat16's 16 kept bits of the float32 pattern, then truncates.
    """
    noise = torch.randint(0, 1 << 16, source.shape, dtype=torch.int32, device=source.device, generator=gen)
    bits = source.contiguous().view(torch.int32) + noise
    bits.bitwise_and_(-65536)  # keep sign, exponent and the 7 bfloat16 mantissa bits
    target.copy_(bits.view(torch.float32))


def automagic_groups_from_params(
    optimizer_params: dict[str, Any], groups: list[dict[str, Any]]
) -> list[dict]:
    """Map `train.optimizer_params` onto param groups.

    Plain keys (`lr_bump`, `min_lr`, ...) apply to every group; `high_noise_<key>` / `low_noise_<key>`
    apply to groups tagged `expert="high_noise"` / `"low_noise"` and win over plain keys. Returns new
    group dicts (the input is not modified).
    """
    plain: dict[str, Any] = {}
    per_expert: dict[str, dict[str, Any]] = {"high_noise": {}, "low_noise": {}}
    for key, value in optimizer_params.items():
        prefix = next((pre for pre in EXPERT_PREFIXES if key.startswith(pre)), None)
        base = key[len(prefix) :] if prefix else key
        if base not in OPTION_KEYS:
            allowed = ", ".join(OPTION_KEYS)
            raise ValueError(
                f"train.optimizer_params.{key}: not an automagic option; expected one of {allowed}, "
                f"optionally prefixed with high_noise_ or low_noise_"
            )
        if prefix:
            per_expert[prefix[:-1]][base] = value
        else:
            plain[base] = value
    out: list[dict] = []
    for group in groups:
        merged = dict(group)
        merged.update(plain)
        merged.update(per_expert.get(group.get("expert"), {}))
        if "eps" in merged and isinstance(merged["eps"], list):
            merged["eps"] = tuple(merged["eps"])
        out.append(merged)
    return out
