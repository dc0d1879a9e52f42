"""`train.health`: which weight/loss/motion health checks run during training and which ones stop the run.

The rules themselves live in `cadence.tools.health` (shared with `cadence analyze`); this module holds only
the config model so the schema does not import the analysis code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Preset = Literal["motion", "character"]
RuleId = Literal[
    "weight_ratio_low",
    "weight_ratio_unreached",
    "weight_ratio_high",
    "low_noise_outgrowing",
    "high_noise_magnitude_low",
    "lr_ratio_low",
    "lr_ratio_high",
    "loss_rising",
    "gradient_unstable",
    "motion_tame",
    "motion_excess",
]


class HealthConfig(BaseModel):
    """`train.health` in a job config: which checks run, how often, and which ones stop the run."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset | None = None
    every: int | None = Field(
        None,
        ge=1,
        description="steps between checks, each saving a checkpoint (its advice names checkpoints); "
        "None = at each checkpoint save",
    )
    stop_on: list[RuleId] = Field(default_factory=list)
    thresholds: dict[RuleId, float | None] = Field(
        default_factory=dict,
        description="rule id -> threshold; a number also turns the rule on, null turns it off",
    )

    @model_validator(mode="after")
    def _stop_rules_active(self) -> HealthConfig:
        from cadence.tools.health import RULES, active_thresholds  # rules live with the analysis code

        active = active_thresholds(self)
        for rule in self.stop_on:
            if RULES[rule].final_only:
                raise ValueError(
                    f"train.health.stop_on: rule {rule!r} judges the level reached by the end of a run, "
                    "so it cannot stop one; `cadence analyze` reports it, remove it from stop_on"
                )
            if rule not in active:
                raise ValueError(
                    f"train.health.stop_on: rule {rule!r} is not active with preset {self.preset!r}; "
                    f"give it a threshold in train.health.thresholds or remove it"
                )
        return self
