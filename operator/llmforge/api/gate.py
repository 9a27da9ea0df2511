"""The Evaluation pass/fail gate: pure functions over scores, shared by llmforge-eval and the operator.

``check_thresholds`` names every failed bound of ``spec.thresholds`` with the numbers that failed it, so
the Passed condition and ``status.failedThresholds`` say exactly what to fix. ``delta`` is the
``status.results.delta`` map. No direction is assumed: for a lower-is-better metric such as perplexity the
user picks the bound that means "better" (``max``, ``maxDeltaToBase``, ``maxRatioToBase``).

Rules, chosen so that a gate never passes on missing or undefined numbers:

* A threshold on a metric with no fine-tuned score (not requested, or it failed to compute) fails.
* A relative bound (delta or ratio) with no base score fails.
* NaN anywhere fails the bounds it takes part in.
* Ratio with base 0: 1.0 when the fine-tuned score is 0 too, else +/-inf (so ``minRatioToBase``
  passes and ``maxRatioToBase`` fails for a positive fine-tuned score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .evaluation import Threshold

__all__ = ["check_thresholds", "delta", "ratio"]


def delta(finetuned: Mapping[str, float], base: Mapping[str, float] | None) -> dict[str, float]:
    """``finetuned - base`` for every metric scored on both models (sorted by name)."""
    if not base:
        return {}
    return {k: float(finetuned[k]) - float(base[k]) for k in sorted(finetuned) if k in base}


def ratio(finetuned: float, base: float) -> float:
    """``finetuned / base``, with the base-0 convention in the module docstring."""
    if base == 0:
        if finetuned == 0:
            return 1.0
        return math.copysign(math.inf, finetuned) if not math.isnan(finetuned) else math.nan
    return finetuned / base


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _as_threshold(t: Threshold | Mapping[str, Any]) -> Threshold:
    return t if isinstance(t, Threshold) else Threshold.model_validate(t)


def check_thresholds(
    thresholds: Mapping[str, Threshold | Mapping[str, Any]] | None,
    finetuned: Mapping[str, float],
    base: Mapping[str, float] | None = None,
) -> list[str]:
    """Every failed bound, one readable line each, in threshold-name order; empty means the gate passed.

    ``thresholds`` maps a metric or check name to a :class:`Threshold` (or its wire/python dict form).
    """
    failures: list[str] = []
    for name in sorted(thresholds or {}):
        t = _as_threshold(thresholds[name])
        if name not in finetuned or finetuned[name] is None:
            failures.append(f"{name}: no fine-tuned score (metric not requested or failed to compute)")
            continue
        ft = float(finetuned[name])
        for bound, value in (("min", t.min), ("max", t.max)):
            if value is None:
                continue
            ok = ft >= value if bound == "min" else ft <= value
            if not ok:  # NaN compares False: fails
                op = "<" if bound == "min" else ">"
                if math.isnan(ft):
                    op = "is NaN, needs " + (">=" if bound == "min" else "<=")
                failures.append(f"{name} {_fmt(ft)} {op} {bound} {_fmt(value)}")

        relative = (
            ("minDeltaToBase", t.min_delta_to_base, "delta", "min"),
            ("maxDeltaToBase", t.max_delta_to_base, "delta", "max"),
            ("minRatioToBase", t.min_ratio_to_base, "ratio", "min"),
            ("maxRatioToBase", t.max_ratio_to_base, "ratio", "max"),
        )
        wanted = [r for r in relative if r[1] is not None]
        if not wanted:
            continue
        if not base or name not in base or base[name] is None:
            for label, value, _, _ in wanted:
                failures.append(f"{name}: {label} {_fmt(value)} needs a base score, and there is none")
            continue
        b = float(base[name])
        for label, value, kind, side in wanted:
            observed = ft - b if kind == "delta" else ratio(ft, b)
            ok = observed >= value if side == "min" else observed <= value
            if not ok:
                op = "<" if side == "min" else ">"
                what = (f"finetuned - base = {_fmt(ft)} - {_fmt(b)} = {_fmt(observed)}" if kind == "delta"
                        else f"finetuned / base = {_fmt(ft)} / {_fmt(b)} = {_fmt(observed)}")
                failures.append(f"{name}: {what} {op} {label} {_fmt(value)}")
    return failures
