"""Alpha-phase presets: the seed trainer's video and image thresholds and phase lists.

The numbers are the seed's (README of the Relaxis fork: video = Wan 2.2 I2V example, image = its FLUX
example). One meaning changed on purpose: `loss_improvement_rate_below` is compared with Cadence's
scale-free improvement rate (fraction of the loss level that the fitted trend removes across the
window), not with the seed's raw slope in loss units per step. With a 200-step window and a loss near
0.1, the video threshold 0.005 corresponds to a raw slope of 0.005 * 0.1 / 200 = 2.5e-6 per step; the
seed's raw 0.005 per step was met by any flow-matching loss. See docs/metrics.md.
"""

from __future__ import annotations

from cadence.config.schema import AlphaPhase, ExitCriteria

PRESET_CRITERIA: dict[str, dict[str, float]] = {
    "video": {
        "loss_improvement_rate_below": 0.005,
        "min_gradient_stability": 0.50,
        "min_loss_r2": 0.01,
        "max_loss_cv": 0.5,
    },
    "image": {
        "loss_improvement_rate_below": 0.001,
        "min_gradient_stability": 0.55,
        "min_loss_r2": 0.1,
        "max_loss_cv": 0.5,
    },
}

# (name, alpha, min_steps) in order; the last phase has no exit.
PRESET_PHASES: dict[str, tuple[tuple[str, float, int], ...]] = {
    "video": (("foundation", 8.0, 2000), ("balance", 14.0, 3000), ("emphasis", 20.0, 2000)),
    "image": (("foundation", 64.0, 1000), ("balance", 128.0, 2000), ("emphasis", 192.0, 1000)),
}

DEFAULT_FILL_PRESET = "video"  # Cadence is video-first: missing criteria default to the video thresholds


def preset_criteria(name: str) -> ExitCriteria:
    if name not in PRESET_CRITERIA:
        raise ValueError(f"unknown alpha preset {name!r}; expected one of {sorted(PRESET_CRITERIA)}")
    return ExitCriteria(**PRESET_CRITERIA[name])


def preset_phases(name: str) -> dict[str, AlphaPhase]:
    """The seed's phase list for a preset, with the preset's exit criteria on all but the last phase."""
    if name not in PRESET_PHASES:
        raise ValueError(f"unknown alpha preset {name!r}; expected one of {sorted(PRESET_PHASES)}")
    rows = PRESET_PHASES[name]
    phases: dict[str, AlphaPhase] = {}
    for i, (phase_name, alpha, min_steps) in enumerate(rows):
        criteria = preset_criteria(name) if i < len(rows) - 1 else None
        phases[phase_name] = AlphaPhase(alpha=alpha, min_steps=min_steps, exit_criteria=criteria)
    return phases


def fill_criteria(criteria: ExitCriteria | None, preset: str) -> ExitCriteria:
    """Fields the user did not write take the preset's value; fields they wrote (even null) stay."""
    base = PRESET_CRITERIA[preset]
    if criteria is None:
        return ExitCriteria(**base)
    values = criteria.model_dump()
    for key, value in base.items():
        if key not in criteria.model_fields_set:
            values[key] = value
    return ExitCriteria(**values)
