"""What a run folder holds, as data: LoRA checkpoints per expert and step, metrics rows, the config.

Read-only and tolerant: a run may still be writing (a torn last JSONL line is skipped), and older runs
may lack fields or files. The folder layout is the one in docs/design.md ("Run folder").
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cadence.metrics.jsonl import read_metrics as read_jsonl

log = logging.getLogger(__name__)

MAIN_EXPERT = "main"  # single-expert models: {name}_{step:09d}.safetensors
_CKPT_RE = re.compile(r"^(?P<name>.+)_(?P<step>\d{9})(?:_(?P<expert>high_noise|low_noise))?\.safetensors$")


@dataclass
class RunData:
    """Everything analysis reads from one run folder."""

    run_dir: Path
    name: str
    checkpoints: dict[str, dict[int, Path]]  # expert -> step -> LoRA file (sorted by step)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one row per step, sorted, deduplicated
    config: dict[str, Any] | None = None  # the job section of config.yaml (flat layout)

    @property
    def experts(self) -> list[str]:
        order = ["high_noise", "low_noise", MAIN_EXPERT]
        return [e for e in order if e in self.checkpoints]

    @property
    def steps(self) -> list[int]:
        return sorted({s for by_step in self.checkpoints.values() for s in by_step})


def discover_checkpoints(run_dir: Path, name: str | None = None) -> tuple[str, dict[str, dict[int, Path]]]:
    """Find `{name}_{step:09d}[_expert].safetensors`; the run name is the folder name when files use it."""
    found: list[tuple[str, int, str, Path]] = []
    for path in run_dir.glob("*.safetensors"):
        match = _CKPT_RE.match(path.name)
        if match:
            expert = match.group("expert") or MAIN_EXPERT
            found.append((match.group("name"), int(match.group("step")), expert, path))
    names = Counter(item[0] for item in found)
    if name is None:
        name = (
            run_dir.name if run_dir.name in names else (names.most_common(1)[0][0] if names else run_dir.name)
        )
    checkpoints: dict[str, dict[int, Path]] = {}
    for file_name, step, expert, path in sorted(found, key=lambda item: item[1]):
        if file_name == name:
            checkpoints.setdefault(expert, {})[step] = path
    return name, checkpoints


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics JSONL file (torn last line skipped), sorted by step; a re-done step keeps its
    latest row, rows without an integer step are dropped."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(path):
        if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
            by_step[row["step"]] = row  # after a resume, the replayed step's row is the true one
    return [by_step[s] for s in sorted(by_step)]


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """config.yaml as a plain dict in the flat layout (the seed layout's first process), or None."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        log.warning("%s is not valid YAML (%s); analysing without it", path, exc)
        return None
    if not isinstance(raw, dict):
        return None
    config = raw.get("config")
    if isinstance(config, dict) and isinstance(config.get("process"), list) and config["process"]:
        job = dict(config["process"][0])
        job.setdefault("name", config.get("name"))
        return job
    return raw


def load_run(run_dir: Path | str) -> RunData:
    """Read a run folder. Raises FileNotFoundError when it is not a folder or holds no LoRA checkpoints."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise FileNotFoundError(
            f"{run_dir} is a file, not a run folder; pass the folder training_folder/name"
        )
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist; pass the folder training_folder/name")
    config = read_config(run_dir)
    config_name = config.get("name") if config else None
    name, checkpoints = discover_checkpoints(run_dir, config_name if isinstance(config_name, str) else None)
    if not checkpoints:
        raise FileNotFoundError(
            f"no LoRA checkpoints named {name}_<step:09d>[_high_noise|_low_noise].safetensors in {run_dir}; "
            "analyze needs at least one saved checkpoint"
        )
    metrics_path = run_dir / f"metrics_{name}.jsonl"
    if not metrics_path.is_file():
        candidates = sorted(run_dir.glob("metrics_*.jsonl"))
        metrics_path = candidates[0] if len(candidates) == 1 else metrics_path
    metrics = read_metrics(metrics_path)
    if not metrics:
        log.warning("no metrics rows in %s; loss/LR/stability columns will be empty", metrics_path)
    return RunData(run_dir=run_dir, name=name, checkpoints=checkpoints, metrics=metrics, config=config)


# ------------------------------------------------------------------------------------- interval stats
@dataclass(frozen=True)
class IntervalStats:
    """What the metrics say about one expert over the steps (previous checkpoint, this checkpoint]."""

    lr: float | None = None
    loss_mean: float | None = None
    loss_std: float | None = None
    loss_count: int = 0
    grad_stability: float | None = None
    eval_loss: float | None = None  # only an eval run at the checkpoint's own step (older weights otherwise)
    steps: int = 0  # steps this expert trained in the interval (its own metrics rows)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _row_lr(row: dict[str, Any], expert: str, own_row: bool) -> float | None:
    """The expert's LR in a row: `lr_{expert}`, else its `lr_{expert}_*` groups, else the row's own `lr*`."""
    exact = _num(row.get(f"lr_{expert}"))
    if exact is not None:
        return exact
    groups = [_num(v) for k, v in row.items() if k.startswith(f"lr_{expert}_")]
    groups_f = [v for v in groups if v is not None]
    if groups_f:
        return sum(groups_f) / len(groups_f)
    if not own_row:
        return None
    others = ("lr_high_noise", "lr_low_noise")
    plain = [
        _num(v) for k, v in row.items() if (k == "lr" or k.startswith("lr_")) and not k.startswith(others)
    ]
    plain_f = [v for v in plain if v is not None]
    return sum(plain_f) / len(plain_f) if plain_f else None


class IntervalAccumulator:
    """`interval_stats` of one expert, fed one row at a time (rows in step order within the interval), so a
    run's metrics are read once however many checkpoints split them: the analysis sorts every row into its
    interval in one pass, and the live checks add each step's row as it is written."""

    def __init__(self, expert: str) -> None:
        self.expert = expert
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.stab: list[float] = []  # gradient_stability_{expert} of own rows
        self.stab_plain: list[float] = []  # gradient_stability of own rows (older lines)
        self.stab_avg: float | None = None  # latest own gradient_stability_avg
        self.steps = 0
        self._key = "eval_loss" if expert == MAIN_EXPERT else f"eval_loss_{expert}"
        self._last_step: int | None = None  # the highest step seen, and the eval loss of its rows
        self._last_eval: float | None = None

    def add(self, row: dict[str, Any]) -> None:
        expert = self.expert
        own = expert == MAIN_EXPERT or row.get("expert") == expert
        if (lr := _row_lr(row, expert, own)) is not None:
            self.lrs.append(lr)
        if own:
            self.steps += 1
            if (loss := _num(row.get("loss"))) is not None:
                self.losses.append(loss)
            if (value := _num(row.get(f"gradient_stability_{expert}"))) is not None:
                self.stab.append(value)
            if (value := _num(row.get("gradient_stability"))) is not None:
                self.stab_plain.append(value)
            if (value := _num(row.get("gradient_stability_avg"))) is not None:
                self.stab_avg = value
        step = row["step"]
        if self._last_step is None or step > self._last_step:
            self._last_step, self._last_eval = step, None
        if step == self._last_step and (value := _num(row.get(self._key))) is not None:
            self._last_eval = value

    def stats(self, hi: int) -> IntervalStats:
        """The interval's statistics, ending at checkpoint step `hi` (its eval loss: that step's own)."""
        losses = self.losses
        std = None
        if len(losses) > 1:
            mean = sum(losses) / len(losses)
            std = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1))
        stability = _mean(self.stab if self.stab else self.stab_plain)
        if stability is None:
            stability = self.stab_avg
        return IntervalStats(
            lr=_mean(self.lrs),
            loss_mean=_mean(losses),
            loss_std=std,
            loss_count=len(losses),
            grad_stability=stability,
            eval_loss=self._last_eval if self._last_step == hi else None,
            steps=self.steps,
        )


class ValueAtStep:
    """`value_at` fed one row at a time: the finite value of `key` on the rows of the highest step seen."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.step: int | None = None
        self.value: float | None = None

    def add(self, row: dict[str, Any]) -> None:
        step = row["step"]
        if self.step is None or step > self.step:
            self.step, self.value = step, None
        if step == self.step and (value := _num(row.get(self.key))) is not None:
            self.value = value

    def at(self, step: int) -> float | None:
        return self.value if self.step == step else None


def interval_stats(rows: list[dict[str, Any]], lo: int, hi: int, expert: str) -> IntervalStats:
    """Mean LR, loss mean/std (sample), gradient stability and own step count of `expert` in (lo, hi],
    and its eval loss at step hi. Only the expert's own rows count: the other expert's rows repeat its
    latest per-expert values, which describe older steps."""
    accumulator = IntervalAccumulator(expert)
    for row in rows:
        if lo < row["step"] <= hi:
            accumulator.add(row)
    return accumulator.stats(hi)


def value_at(rows: list[dict[str, Any]], step: int, key: str) -> float | None:
    """The finite value of `key` on the row of `step` (e.g. the run-wide eval_loss of a checkpoint)."""
    values = [v for r in rows if r["step"] == step and (v := _num(r.get(key))) is not None]
    return values[-1] if values else None
