"""What one adapted layer holds in a file: `AdapterTensors(algo, tensors by key suffix, alpha)`.

The suffixes are the LyCORIS/ComfyUI key names after the module's name, so a file writer only prefixes them:

    lora   lora_down.weight [rank, in(, k...)]   lora_up.weight [out, rank(, 1...)]
    lokr   lokr_w1 [a, c]   lokr_w2 [b, d]  or  lokr_w2_a [b, rank] + lokr_w2_b [rank, d]
           (out = a*b, in = c*d; ΔW = kron(w1, w2))
    loha   hada_w1_a [out, rank]  hada_w1_b [rank, in]  hada_w2_a [out, rank]  hada_w2_b [rank, in]
           (ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b))
    any    dora_scale: DoRA magnitude, [out, 1] (per output row) or [1, in] (per input column)

Alpha means what LyCORIS (and ComfyUI's loader) make of it: scale = alpha / rank, where rank is the inner
dimension of the low-rank factor (LoRA: down.shape[0]; LoKr: the factorized half's; LoHa: w1_b.shape[0]).
A LoKr whose two halves are full matrices has no rank: its scale is 1 and it carries no alpha (`None`).

The maths of ΔW for LoKr, LoHa and DoRA is LyCORIS's functional code (`lycoris.functional`, imported on
first use: the package pulls in optimum-quanto and transformers, ~5 s); LoRA keeps Cadence's own up @ down
(two matmuls, today's numerics). A DoRA delta also needs the base layer's weight (`base_weight`, never
saved), since W' = m · (W + ΔW) / ‖W + ΔW‖.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import ModuleType

import torch

ALGO_KEYS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_down.weight", "lora_up.weight"),
    "lokr": ("lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
}
# one key that only its algo writes, as LyCORIS's `weight_list_det`
IDENTIFYING_KEY = {"lora": "lora_down.weight", "lokr": "lokr_w1", "loha": "hada_w1_a"}
DORA_KEY = "dora_scale"
# LyCORIS keys of variants Cadence does not read (Tucker decomposition, LoKr with both halves factorized)
UNSUPPORTED_KEYS = ("lora_mid.weight", "lokr_t2", "lokr_w1_a", "lokr_w1_b", "hada_t1", "hada_t2")


@dataclass
class AdapterTensors:
    algo: str  # "lora" | "lokr" | "loha"
    tensors: dict[str, torch.Tensor]  # by key suffix, see the module docstring
    alpha: float | None  # None: no rank, so no scale (full-matrix LoKr)
    base_weight: torch.Tensor | None = field(default=None, repr=False, compare=False)  # DoRA only; not saved

    def __post_init__(self) -> None:
        if self.algo not in ALGO_KEYS:
            raise ValueError(f"unknown adapter algo {self.algo!r}; expected one of {', '.join(ALGO_KEYS)}")

    # ------------------------------------------------------------------------------------- shape
    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.algo == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.algo == "loha":
            return int(t["hada_w1_b"].shape[0])
        return int(t["lokr_w2_b"].shape[0]) if "lokr_w2_b" in t else None

    @property
    def scale(self) -> float:
        """alpha / rank (the strength every loader applies); 1 without a rank or an alpha."""
        rank = self.rank
        return float(self.alpha) / rank if rank and self.alpha is not None else 1.0

    @property
    def down(self) -> torch.Tensor:
        return self._lora("lora_down.weight")

    @property
    def up(self) -> torch.Tensor:
        return self._lora("lora_up.weight")

    def _lora(self, key: str) -> torch.Tensor:
        if self.algo != "lora":
            raise AttributeError(f"a {self.algo} adapter has no {key} (LoRA factors)")
        return self.tensors[key]

    @property
    def dora_scale(self) -> torch.Tensor | None:
        return self.tensors.get(DORA_KEY)

    @property
    def wd_on_output(self) -> bool | None:
        """DoRA's axis: True per output row ([out, 1]), False per input column ([1, in]); None: no DoRA."""
        scale = self.dora_scale
        if scale is None:
            return None
        return scale.dim() < 2 or (scale.shape[1] == 1 and scale.shape[0] == self.out_features != 1)

    @property
    def dora_axis(self) -> str | None:
        """ "output", "input" or None (no DoRA): what an adapter module built from these tensors takes."""
        axis = self.wd_on_output
        return None if axis is None else "output" if axis else "input"

    @property
    def out_features(self) -> int:
        t = self.tensors
        if self.algo == "lora":
            return int(t["lora_up.weight"].shape[0])
        if self.algo == "loha":
            return int(t["hada_w1_a"].shape[0])
        second = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"]
        return int(t["lokr_w1"].shape[0] * second.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.algo == "lora" and self.tensors["lora_down.weight"].dim() > 2

    @property
    def dtypes(self) -> set[torch.dtype]:
        return {v.dtype for v in self.tensors.values()}

    def with_alpha(self, alpha: float | None) -> AdapterTensors:
        return replace(self, alpha=alpha)

    def detached(self) -> AdapterTensors:
        """A copy whose tensors are independent clones (the base weight stays a reference)."""
        return replace(self, tensors={k: v.detach().clone() for k, v in self.tensors.items()})

    # ------------------------------------------------------------------------------------- delta
    def factor_delta(self) -> torch.Tensor:
        """scale · ΔW of the factors in fp32, shaped like the base weight (without DoRA's rescaling)."""
        t = {k: v.detach().to(torch.float32) for k, v in self.tensors.items() if k != DORA_KEY}
        return factor_delta(self.algo, t, self.scale)

    def diff_weight(self) -> torch.Tensor:
        """The layer's real weight change W' - W in fp32. DoRA needs `base_weight`; without it (a file
        read alone) this is the low-rank part only, as `factor_delta`."""
        delta = self.factor_delta()
        if self.dora_scale is None or self.base_weight is None:
            return delta
        base = self.base_weight.detach().to(device=delta.device, dtype=torch.float32)
        return dora_weight(base, delta, self.dora_scale.detach(), bool(self.wd_on_output)) - base


def lycoris(name: str) -> ModuleType:
    """`lycoris.functional.<name>`, imported on first use."""
    import importlib

    return importlib.import_module(f"lycoris.functional.{name}")


def lora_factors(down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, rank], down [rank, in·k…]) as matrices, validated."""
    if up.dim() > 2 and any(s != 1 for s in up.shape[2:]):
        raise ValueError(f"LoRA up kernel {tuple(up.shape)} is not 1x1; expected [out, rank, 1, ...]")
    up2, down2 = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
    if up2.shape[1] != down2.shape[0]:
        raise ValueError(
            f"LoRA up {tuple(up.shape)} and down {tuple(down.shape)} disagree on rank "
            f"(up.shape[1]={up2.shape[1]}, down.shape[0]={down2.shape[0]})"
        )
    return up2, down2


def factor_delta(algo: str, t: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """scale · ΔW from the factor tensors of `algo`, shaped like the base weight (differentiable)."""
    if algo == "lora":
        down = t["lora_down.weight"]
        up2, down2 = lora_factors(down, t["lora_up.weight"])
        return ((up2 @ down2) * scale).reshape(up2.shape[0], *down.shape[1:])
    if algo == "loha":
        gamma = torch.tensor(scale, dtype=t["hada_w1_a"].dtype, device=t["hada_w1_a"].device)
        return lycoris("loha").diff_weight(
            t["hada_w1_b"],
            t["hada_w1_a"],
            t["hada_w2_b"],
            t["hada_w2_a"],
            None,
            None,
            gamma=gamma,
            backend="torch",
        )
    w2, w2a, w2b = t.get("lokr_w2"), t.get("lokr_w2_a"), t.get("lokr_w2_b")
    # kron_weight takes the final scale (lycoris's diff_weight takes alpha and divides by the rank itself)
    return lycoris("lokr").kron_weight(
        t["lokr_w1"], None, None, w2, w2a, w2b, None, scale=scale, backend="torch"
    )


def dora_weight(
    base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, wd_on_output: bool
) -> torch.Tensor:
    """W' = m · (W + ΔW) / (‖W + ΔW‖ + eps) along DoRA's axis (LyCORIS's `weight_decompose`, eager)."""
    decompose = lycoris("general").weight_decompose
    return decompose(base + delta, magnitude.to(base.dtype), 1, wd_on_output, backend="torch")


def dora_magnitude(weight: torch.Tensor, wd_on_output: bool) -> torch.Tensor:
    """‖W‖ per output row ([out, 1, ...]) or per input column ([1, in, ...]) in fp32: DoRA's starting m."""
    w = weight.detach().to(torch.float32)
    ones = [1] * (w.dim() - 1)
    if wd_on_output:
        return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *ones)
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(w.shape[1], *ones).transpose(0, 1)
