"""Loss trend statistics over a sliding window, globally and per expert.

Why this exists: the seed trainer fitted one regression over a 200-step window that mixed the high- and
low-noise experts (whose losses sit at different levels), and judged plateaus on the raw slope in loss
units per step. Cadence keeps one window per expert and reports a scale-free improvement rate.
No maintained library keeps these rolling statistics with exact resume, so they are implemented here.

Definitions (docs/metrics.md is the reference):
- slope: ordinary least squares of the values against their sample index 0..n-1 (units per step);
- r2: squared Pearson correlation of that fit (0 when the values are constant);
- cv: population standard deviation / mean of the window;
- improvement_rate: ``-slope * n / mean``, the fraction of the loss level that the fitted trend removes
  across the window (positive = improving);
- EMAs over 10/50/100 steps with ``alpha = 2 / (span + 1)``, seeded with the first value, kept from the
  first sample on (they need no minimum).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

EMA_SPANS: tuple[int, ...] = (10, 50, 100)
DEFAULT_WINDOW = 200
DEFAULT_MIN_SAMPLES = 20


@dataclass(frozen=True)
class TrendStats:
    """Statistics of one window; produced only once `min_samples` values are in it."""

    slope: float
    intercept: float
    r2: float
    cv: float | None
    mean: float
    samples: int
    improvement_rate: float


def fit_trend(values: Iterable[float]) -> TrendStats:
    """Least-squares line over sample index, plus R², CV and the scale-free improvement rate."""
    y = np.asarray(list(values), dtype=np.float64)
    n = int(y.size)
    if n < 2:
        raise ValueError(f"fit_trend needs at least 2 values, got {n}")
    x = np.arange(n, dtype=np.float64)
    x_mean, y_mean = x.mean(), y.mean()
    dx, dy = x - x_mean, y - y_mean
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    slope = sxy / sxx
    flat = syy <= n * (1e-12 * float(np.abs(y).max())) ** 2  # constant up to rounding: no trend to explain
    r2 = 0.0 if flat else (sxy * sxy) / (sxx * syy)
    mean = float(y_mean)
    std = float(np.sqrt(syy / n))  # population standard deviation
    cv = std / abs(mean) if mean != 0.0 else (0.0 if std == 0.0 else None)
    rate = -slope * n / mean if mean != 0.0 else 0.0
    return TrendStats(
        slope=float(slope),
        intercept=float(y_mean - slope * x_mean),
        r2=float(min(max(r2, 0.0), 1.0)),
        cv=cv,
        mean=mean,
        samples=n,
        improvement_rate=float(rate),
    )


class TrendWindow:
    """The last `window` finite values of one series, with EMAs over all values seen."""

    def __init__(self, window: int = DEFAULT_WINDOW, min_samples: int = DEFAULT_MIN_SAMPLES) -> None:
        if window < 2 or not 2 <= min_samples <= window:
            raise ValueError(
                f"need 2 <= min_samples <= window, got min_samples={min_samples}, window={window}"
            )
        self.window = window
        self.min_samples = min_samples
        self._values: deque[float] = deque(maxlen=window)
        self._ema: dict[int, float | None] = {span: None for span in EMA_SPANS}
        self.count = 0  # all finite values ever added (the window holds at most `window` of them)

    def add(self, value: float) -> bool:
        """Add one value; non-finite values (a skipped NaN step) are ignored and return False."""
        value = float(value)
        if not math.isfinite(value):
            return False
        self._values.append(value)
        self.count += 1
        for span, old in self._ema.items():
            a = 2.0 / (span + 1.0)
            self._ema[span] = value if old is None else a * value + (1.0 - a) * old
        return True

    @property
    def samples(self) -> int:
        return len(self._values)

    def values(self) -> list[float]:
        return list(self._values)

    def ema(self, span: int) -> float | None:
        return self._ema[span]

    def stats(self) -> TrendStats | None:
        """None until `min_samples` values are in the window (the seed's rule: 20)."""
        if len(self._values) < self.min_samples:
            return None
        return fit_trend(self._values)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python floats: JSON and torch.save both round-trip them exactly."""
        return {
            "window": self.window,
            "min_samples": self.min_samples,
            "values": list(self._values),
            "ema": {str(span): value for span, value in self._ema.items()},
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = int(state["window"])
        self.min_samples = int(state["min_samples"])
        self._values = deque((float(v) for v in state["values"]), maxlen=self.window)
        self._ema = {span: state["ema"].get(str(span)) for span in EMA_SPANS}
        self.count = int(state["count"])


def _suffix(expert: str | None) -> str:
    return f"_{expert}" if expert else ""


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class TrendTracker:
    """Global and per-expert windows for the loss, gradient stability and gradient norm.

    Field names keep the seed's meaning: `loss_*` and `grad_ema_*` (EMA of gradient stability, as in the
    seed) describe the global series; per-expert values carry `_high_noise` / `_low_noise`. The gradient
    norm, which the seed did not track, gets `grad_norm_ema_*`.
    """

    SERIES = ("loss", "stability", "grad_norm")

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        experts: Iterable[str] = ("high_noise", "low_noise"),
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        self.window = window
        self.min_samples = min_samples
        self.experts = tuple(experts)
        keys: list[str | None] = [None, *self.experts]
        self._windows: dict[str, dict[str | None, TrendWindow]] = {
            series: {key: TrendWindow(window, min_samples) for key in keys} for series in self.SERIES
        }

    def _add(self, series: str, value: float | None, expert: str | None) -> None:
        if value is None:
            return
        per_series = self._windows[series]
        per_series[None].add(value)
        if expert is not None:
            if expert not in per_series:
                raise ValueError(f"unknown expert {expert!r}; this tracker knows {list(self.experts)}")
            per_series[expert].add(value)

    def add_loss(self, loss: float | None, expert: str | None = None) -> None:
        self._add("loss", loss, expert)

    def add_gradient_stability(self, value: float | None, expert: str | None = None) -> None:
        self._add("stability", value, expert)

    def add_grad_norm(self, value: float | None, expert: str | None = None) -> None:
        self._add("grad_norm", value, expert)

    def loss_window(self, expert: str | None = None) -> TrendWindow:
        return self._windows["loss"][expert]

    def loss_stats(self, expert: str | None = None) -> TrendStats | None:
        """The statistics phase transitions use: the expert's own window (global when expert is None)."""
        return self._windows["loss"][expert].stats()

    def metrics(self) -> dict[str, float | int | None]:
        """Every trend field of one metrics line; null where a window has too few samples."""
        out: dict[str, float | int | None] = {}
        for key in [None, *self.experts]:
            sfx = _suffix(key)
            loss_window = self._windows["loss"][key]
            stats = loss_window.stats()
            out[f"loss_slope{sfx}"] = stats.slope if stats else None
            out[f"loss_r2{sfx}"] = stats.r2 if stats else None
            out[f"loss_cv{sfx}"] = _finite_or_none(stats.cv) if stats else None
            out[f"loss_improvement_rate{sfx}"] = stats.improvement_rate if stats else None
            out[f"loss_samples{sfx}"] = loss_window.samples
            for span in EMA_SPANS:
                out[f"loss_ema_{span}{sfx}"] = loss_window.ema(span)
                out[f"grad_ema_{span}{sfx}"] = self._windows["stability"][key].ema(span)
                out[f"grad_norm_ema_{span}{sfx}"] = self._windows["grad_norm"][key].ema(span)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "min_samples": self.min_samples,
            "experts": list(self.experts),
            "series": {
                series: {("global" if key is None else key): w.state_dict() for key, w in per.items()}
                for series, per in self._windows.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["experts"]) != list(self.experts):
            raise ValueError(
                f"trend state was saved for experts {state['experts']}, this run trains {list(self.experts)}"
            )
        self.window = int(state["window"])
        self.min_samples = int(state["min_samples"])
        for series, per in self._windows.items():
            saved = state["series"][series]
            for key, window in per.items():
                window.load_state_dict(saved["global" if key is None else key])
