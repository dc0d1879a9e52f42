"""Alpha phases: raise LoRA alpha in steps when an expert's loss has plateaued and training is stable.

No library does this; it reproduces the seed trainer's `alpha_schedule` with three fixes taken from the
lessons in DESIGN.md: phases reach the modules that are actually trained (the seed only touched conv
alphas, and Wan's blocks are Linear-only), every expert keeps its own phase and is judged on its own
statistics, and the plateau test uses a scale-free improvement rate (docs/metrics.md).

The loop calls `observe()` after each optimizer step with the stepping expert's trend statistics and
gradient-stability rolling mean; a returned `Transition` changes `current_alphas()` from the next step on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cadence.config.errors import ConfigError
from cadence.config.schema import AlphaPhase, AlphaSchedule, ExitCriteria
from cadence.metrics.trend import TrendStats
from cadence.schedule.alpha_presets import DEFAULT_FILL_PRESET, fill_criteria, preset_phases

logger = logging.getLogger(__name__)
CONFIG_PATH = "network.alpha_schedule"


@dataclass(frozen=True)
class Phase:
    name: str
    alpha: float
    min_steps: int
    exit_criteria: ExitCriteria | None  # None for the last phase: it never exits


@dataclass
class ExpertPlan:
    """One expert's phase list and which adapter kinds ("linear", "conv") its alphas drive."""

    phases: list[Phase]
    targets: tuple[str, ...]
    alphas: dict[str, list[float]]  # target -> alpha per phase


@dataclass
class Transition:
    expert: str
    step: int
    from_phase: str
    to_phase: str
    from_idx: int
    to_idx: int
    steps_in_phase: int
    alphas_before: dict[str, float | None]
    alphas_after: dict[str, float | None]
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _ExpertState:
    phase_idx: int = 0
    steps_in_phase: int = 0


def _criterion(value: float | None, threshold: float | None, passed: bool, advisory: bool) -> dict[str, Any]:
    """Plain Python types only, so evidence is JSON-serialisable whatever the caller passed (numpy too)."""
    if value is not None:
        value = int(value) if isinstance(value, int) else float(value)
    return {"value": value, "threshold": threshold, "passed": bool(passed), "advisory": bool(advisory)}


def evaluate_exit(
    phase: Phase, steps_in_phase: int, stats: TrendStats | None, stability: float | None
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Every exit criterion of `phase` with its value, threshold, pass flag and advisory flag.

    Plateau: |improvement_rate| < threshold (a rising loss is no plateau either). Missing statistics
    (fewer than min_samples losses, no stability yet) fail their criterion. A criterion whose
    threshold is None passes; an advisory one is reported but never blocks.
    """
    crit = phase.exit_criteria
    if crit is None:
        return False, {"last_phase": _criterion(None, None, False, False)}
    advisory = set(crit.advisory)
    rate = stats.improvement_rate if stats else None
    r2 = stats.r2 if stats else None
    cv = stats.cv if stats else None
    checks: dict[str, tuple[float | None, float | None, bool]] = {
        "min_steps": (steps_in_phase, phase.min_steps, steps_in_phase >= phase.min_steps),
        "loss_improvement_rate_below": (
            rate,
            crit.loss_improvement_rate_below,
            crit.loss_improvement_rate_below is None
            or (rate is not None and abs(rate) < crit.loss_improvement_rate_below),
        ),
        "min_gradient_stability": (
            stability,
            crit.min_gradient_stability,
            crit.min_gradient_stability is None
            or (stability is not None and stability >= crit.min_gradient_stability),
        ),
        "min_loss_r2": (
            r2,
            crit.min_loss_r2,
            crit.min_loss_r2 is None or (r2 is not None and r2 >= crit.min_loss_r2),
        ),
        "max_loss_cv": (cv, crit.max_loss_cv, cv is not None and math.isfinite(cv) and cv < crit.max_loss_cv),
    }
    evidence: dict[str, dict[str, Any]] = {}
    ok = True
    for name, (value, threshold, passed) in checks.items():
        is_advisory = name in advisory
        evidence[name] = _criterion(value, threshold, passed, is_advisory)
        ok = ok and (passed or is_advisory)
    if stats is not None:
        evidence["loss_slope"] = _criterion(stats.slope, None, True, True)
        evidence["loss_samples"] = _criterion(stats.samples, None, True, True)
    return ok, evidence


def _resolve_phases(phases: dict[str, AlphaPhase], fill_preset: str) -> list[Phase]:
    items = list(phases.items())
    out = []
    for i, (name, phase) in enumerate(items):
        last = i == len(items) - 1
        criteria = None if last else fill_criteria(phase.exit_criteria, fill_preset)
        out.append(Phase(name, float(phase.alpha), int(phase.min_steps), criteria))
    return out


def _same_schedule(a: list[Phase], b: list[Phase]) -> bool:
    return [(p.name, p.min_steps, p.exit_criteria) for p in a] == [
        (p.name, p.min_steps, p.exit_criteria) for p in b
    ]


class AlphaPhaseScheduler:
    """Per-expert phase index and steps in phase; alphas for the trained adapter kinds."""

    def __init__(
        self,
        experts: Iterable[str],
        plans: dict[str, ExpertPlan],
        fixed: dict[str, float | None],
        enabled: bool = True,
    ) -> None:
        self.experts = tuple(experts)
        self.plans = plans
        self.fixed = fixed  # alpha per kind when no phase list drives it (None: kind not trained)
        self.enabled = enabled and bool(plans)
        self.state = {e: _ExpertState() for e in self.experts}
        self.history: list[Transition] = []
        self.last_step = 0

    # -------------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        schedule: AlphaSchedule | None,
        experts: list[str],
        trained_kinds: set[str],
        base_linear_alpha: float | None = None,
        base_conv_alpha: float | None = None,
    ) -> AlphaPhaseScheduler:
        """Resolve which phase list drives which adapter kind for each expert (see module doc)."""
        fixed: dict[str, float | None] = {
            "linear": base_linear_alpha if "linear" in trained_kinds else None,
            "conv": base_conv_alpha if "conv" in trained_kinds else None,
        }
        if schedule is None or not schedule.enabled:
            return cls(experts, {}, fixed, enabled=False)
        if schedule.linear_alpha is not None and "linear" in trained_kinds:
            fixed["linear"] = float(schedule.linear_alpha)
        plans, notes = plan_phases(schedule, experts, trained_kinds)
        for note in notes:
            logger.info(note)
        return cls(experts, plans, fixed, enabled=True)

    # --------------------------------------------------------------------------------- reading
    def _expert(self, expert: str | None) -> str:
        if expert is None:
            return self.experts[0]
        if expert not in self.state:
            raise ValueError(f"unknown expert {expert!r}; the alpha scheduler knows {list(self.experts)}")
        return expert

    def current_phase(self, expert: str | None = None) -> Phase | None:
        expert = self._expert(expert)
        plan = self.plans.get(expert)
        return plan.phases[self.state[expert].phase_idx] if plan else None

    def current_alphas(self, expert: str | None = None) -> dict[str, float | None]:
        """{"linear": alpha or None, "conv": alpha or None}; None means that kind is not trained."""
        expert = self._expert(expert)
        out = dict(self.fixed)
        plan = self.plans.get(expert)
        if plan:
            idx = self.state[expert].phase_idx
            for target in plan.targets:
                out[target] = plan.alphas[target][idx]
        return out

    # ------------------------------------------------------------------------------- observing
    def observe(
        self, step: int, expert: str | None, trend_stats: TrendStats | None, gradient_stability: float | None
    ) -> Transition | None:
        """Count one step for `expert` and move it to its next phase when every exit criterion holds.

        `trend_stats` and `gradient_stability` must be that expert's own (TrendTracker.loss_stats(expert),
        GradientStability.average(expert)). The new alphas apply from the next step on.
        """
        if not self.enabled:
            return None
        expert = self._expert(expert)
        plan, st = self.plans[expert], self.state[expert]
        st.steps_in_phase += 1
        self.last_step = step
        if st.phase_idx >= len(plan.phases) - 1:
            return None
        phase = plan.phases[st.phase_idx]
        ok, evidence = evaluate_exit(phase, st.steps_in_phase, trend_stats, gradient_stability)
        if not ok:
            return None
        before = self.current_alphas(expert)
        transition = Transition(
            expert=expert,
            step=step,
            from_phase=phase.name,
            to_phase=plan.phases[st.phase_idx + 1].name,
            from_idx=st.phase_idx,
            to_idx=st.phase_idx + 1,
            steps_in_phase=st.steps_in_phase,
            alphas_before=before,
            alphas_after={},
            evidence=evidence,
        )
        st.phase_idx += 1
        st.steps_in_phase = 0
        transition.alphas_after = self.current_alphas(expert)
        self.history.append(transition)
        logger.info("%s", describe_transition(transition))
        return transition

    def metrics(
        self, active_expert: str | None = None, transition: Transition | None = None
    ) -> dict[str, Any]:
        """alpha_enabled, phase, phase_idx, steps_in_phase, linear_alpha, conv_alpha for the expert that
        stepped, and the same per expert with a `_<expert>` suffix.

        They describe the step just trained: an expert whose phase ended at this step (`transition`) reports
        the phase and alpha it trained in; the new ones show from the next step, when they take effect.
        """
        out: dict[str, Any] = {"alpha_enabled": self.enabled}
        out.update(self._fields(self._expert(active_expert), "", transition))
        for expert in self.experts:
            if expert != "main":
                out.update(self._fields(expert, f"_{expert}", transition))
        return out

    def metrics_fields(
        self, active_expert: str | None = None, transition: Transition | None = None
    ) -> dict[str, Any]:
        """Alias of `metrics`; pass the expert that stepped (default: the first expert)."""
        return self.metrics(active_expert, transition)

    def _fields(self, expert: str, sfx: str, transition: Transition | None = None) -> dict[str, Any]:
        if transition is not None and transition.expert == expert:
            return {
                f"phase{sfx}": transition.from_phase,
                f"phase_idx{sfx}": transition.from_idx,
                f"steps_in_phase{sfx}": transition.steps_in_phase,
                f"linear_alpha{sfx}": transition.alphas_before["linear"],
                f"conv_alpha{sfx}": transition.alphas_before["conv"],
            }
        alphas = self.current_alphas(expert)
        phase = self.current_phase(expert) if self.enabled else None
        st = self.state[expert]
        return {
            f"phase{sfx}": phase.name if phase else None,
            f"phase_idx{sfx}": st.phase_idx if phase else None,
            f"steps_in_phase{sfx}": st.steps_in_phase if phase else None,
            f"linear_alpha{sfx}": alphas["linear"],
            f"conv_alpha{sfx}": alphas["conv"],
        }

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "enabled": self.enabled,
            "last_step": self.last_step,
            "experts": {
                e: {
                    "phase_idx": st.phase_idx,
                    "steps_in_phase": st.steps_in_phase,
                    "phase_names": [p.name for p in self.plans[e].phases] if e in self.plans else [],
                }
                for e, st in self.state.items()
            },
            "history": [t.to_dict() for t in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts `state_dict()`, `to_seed_json()` output, or the seed trainer's own JSON file."""
        if "cadence_state" in state:
            state = state["cadence_state"]
        if "current_phase_idx" in state and "experts" not in state:
            self._load_seed_file(state)
            return
        for expert, saved in state["experts"].items():
            if expert not in self.state:
                raise ValueError(
                    f"alpha scheduler state names expert {expert!r}; this run trains {list(self.experts)}"
                )
            names = [p.name for p in self.plans[expert].phases] if expert in self.plans else []
            if list(saved["phase_names"]) != names:
                raise ValueError(
                    f"{CONFIG_PATH}: the checkpoint's phases for {expert} are {saved['phase_names']}, the config "
                    f"has {names}; resume with the config the run started with"
                )
            self.state[expert] = _ExpertState(int(saved["phase_idx"]), int(saved["steps_in_phase"]))
        self.last_step = int(state.get("last_step", 0))
        self.history = [Transition(**t) for t in state.get("history", [])]

    def _load_seed_file(self, state: dict[str, Any]) -> None:
        """The seed kept one phase index for all experts: give every expert that position."""
        for expert, plan in self.plans.items():
            idx = min(int(state["current_phase_idx"]), len(plan.phases) - 1)
            self.state[expert] = _ExpertState(idx, int(state.get("steps_in_phase", 0)))
        self.last_step = int(state.get("total_steps", 0))
        logger.info(
            "alpha phases restored from a seed-trainer state file at phase index %s",
            state["current_phase_idx"],
        )

    def to_seed_json(self) -> dict[str, Any]:
        """Readable state like the seed's `{checkpoint}_alpha_scheduler.json` (plus Cadence's full state)."""
        first = self.experts[0]
        phase = self.current_phase(first)
        return {
            "enabled": self.enabled,
            "current_phase_idx": self.state[first].phase_idx,
            "current_phase": phase.name if phase else None,
            "steps_in_phase": self.state[first].steps_in_phase,
            "total_steps": self.last_step,
            "current_alphas": self.current_alphas(first),
            "per_expert": {
                e: {
                    "current_phase_idx": self.state[e].phase_idx,
                    "current_phase": p.name if (p := self.current_phase(e)) else None,
                    "steps_in_phase": self.state[e].steps_in_phase,
                    "current_alphas": self.current_alphas(e),
                }
                for e in self.experts
            },
            "transition_history": [t.to_dict() for t in self.history],
            "cadence_state": self.state_dict(),
        }


def describe_transition(t: Transition) -> str:
    """One log line with all the evidence."""
    changes = ", ".join(
        f"{kind} alpha {t.alphas_before[kind]:g} -> {t.alphas_after[kind]:g}"
        for kind in ("linear", "conv")
        if t.alphas_before.get(kind) is not None and t.alphas_before[kind] != t.alphas_after.get(kind)
    )
    parts = []
    for name, e in t.evidence.items():
        value = e["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        mark = "ok" if e["passed"] else ("advisory-fail" if e["advisory"] else "FAIL")
        parts.append(
            f"{name}={shown}"
            + (f" (threshold {e['threshold']:g}, {mark})" if e["threshold"] is not None else "")
        )
    return (
        f"alpha phase [{t.expert}] {t.from_phase} -> {t.to_phase} at step {t.step} after {t.steps_in_phase} "
        f"steps; {changes or 'alphas unchanged'} from this expert's next training step; evidence: "
        + "; ".join(parts)
    )


def plan_phases(
    schedule: AlphaSchedule, experts: Iterable[str], trained_kinds: set[str]
) -> tuple[dict[str, ExpertPlan], list[str]]:
    """Each expert's plan (which phase list drives which adapter kind) and the notes saying how the config's
    lists were mapped; `cadence validate` prints them, training logs them."""
    fill = schedule.preset or DEFAULT_FILL_PRESET
    notes: set[str] = set()
    plans = {expert: _plan_for_expert(schedule, expert, trained_kinds, fill, notes) for expert in experts}
    return plans, sorted(notes)


def _plan_for_expert(
    schedule: AlphaSchedule, expert: str, trained_kinds: set[str], fill: str, notes: set[str]
) -> ExpertPlan:
    override = (schedule.per_expert or {}).get(expert)
    prefix = f"{CONFIG_PATH}.per_expert.{expert}" if override else CONFIG_PATH
    conv = (
        override.conv_alpha_phases if override and override.conv_alpha_phases else None
    ) or schedule.conv_alpha_phases
    lin = (override.alpha_phases if override and override.alpha_phases else None) or schedule.alpha_phases
    if conv is None and lin is None and schedule.preset:
        conv = preset_phases(schedule.preset)
    if conv is None and lin is None:
        raise ConfigError(
            [
                (
                    CONFIG_PATH,
                    "enabled: true but no phases: set conv_alpha_phases, alpha_phases or preset: video|image",
                )
            ]
        )
    for name, phases in (("conv_alpha_phases", conv), ("alpha_phases", lin)):
        if phases is not None and len(phases) == 0:
            raise ConfigError([(f"{prefix}.{name}", "is empty; list at least one phase or remove the key")])
    lists: dict[str, dict[str, AlphaPhase]] = {}
    if conv is not None and "conv" in trained_kinds:
        lists["conv"] = conv
    elif conv is not None and lin is None:
        lists["linear"] = conv
        steps = " -> ".join(f"{n}({p.alpha:g})" for n, p in conv.items())
        notes.add(
            f"{CONFIG_PATH}.conv_alpha_phases: no Conv adapters are trained (these blocks are Linear-only), "
            f"so the phases {steps} are applied to the trained Linear adapters instead"
            + (
                f" (replacing the fixed linear_alpha {schedule.linear_alpha:g})"
                if schedule.linear_alpha
                else ""
            )
        )
    elif conv is not None:
        notes.add(
            f"{CONFIG_PATH}.conv_alpha_phases: no Conv adapters are trained; ignored (alpha_phases drive "
            "the Linear adapters)"
        )
    if lin is not None:
        lists["linear"] = lin
    resolved = {kind: _resolve_phases(phases, fill) for kind, phases in lists.items()}
    kinds = tuple(resolved)
    if len(kinds) == 2 and not _same_schedule(resolved["linear"], resolved["conv"]):
        raise ConfigError(
            [
                (
                    prefix,
                    "conv_alpha_phases and alpha_phases both apply (Conv and Linear adapters are "
                    "trained) but differ in phase names, min_steps or exit_criteria; they share one "
                    "phase position, so make them match (only alpha may differ)",
                )
            ]
        )
    return ExpertPlan(
        phases=resolved[kinds[0]],
        targets=kinds,
        alphas={kind: [p.alpha for p in resolved[kind]] for kind in kinds},
    )
