"""The Evaluation gate: every failed bound is named with its numbers; missing/undefined numbers never pass."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from llmforge.api.evaluation import EvaluationSpec, Threshold
from llmforge.api.gate import check_thresholds, delta, ratio

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_all_bounds_pass_and_fail_with_numbers():
    th = {"rougeL": Threshold(min=0.5, min_delta_to_base=0.1, min_ratio_to_base=1.5),
          "perplexity": Threshold(max=5.0, max_delta_to_base=-1.0, max_ratio_to_base=0.8)}
    good = check_thresholds(th, {"rougeL": 0.75, "perplexity": 3.0}, {"rougeL": 0.24, "perplexity": 7.0})
    assert good == []
    bad = check_thresholds(th, {"rougeL": 0.3, "perplexity": 6.0}, {"rougeL": 0.25, "perplexity": 6.5})
    assert len(bad) == 6, bad
    text = "\n".join(bad)
    for piece in ("rougeL 0.3 < min 0.5", "perplexity 6 > max 5", "minDeltaToBase 0.1", "maxDeltaToBase -1",
                  "minRatioToBase 1.5", "maxRatioToBase 0.8", "6 / 6.5", "6 - 6.5", "0.3 - 0.25"):
        assert piece in text, (piece, bad)


def test_base_alone_fails_tuned_passes():
    """The same absolute gate, applied to base scores as if they were the model under test, fails."""
    th = {"rougeL": Threshold(min=0.5), "perplexity": Threshold(max=5.0)}
    base = {"rougeL": 0.24, "perplexity": 7.0}
    assert check_thresholds(th, {"rougeL": 0.75, "perplexity": 3.0}, base) == []
    assert len(check_thresholds(th, base, None)) == 2


def test_missing_metric_and_missing_base_fail():
    th = {"bleu": Threshold(min=0.0), "rougeL": Threshold(min_delta_to_base=0.0, max_ratio_to_base=10)}
    out = check_thresholds(th, {"rougeL": 0.5}, None)
    assert any(s.startswith("bleu: no fine-tuned score") for s in out)
    assert sum("needs a base score" in s for s in out) == 2
    assert check_thresholds(th, {"rougeL": 0.5, "bleu": 1.0}, {"rougeL": 0.5}) == []


def test_nan_never_passes():
    th = {"m": Threshold(min=0.0), "n": Threshold(max=1.0), "r": Threshold(min_delta_to_base=-1e9)}
    out = check_thresholds(th, {"m": math.nan, "n": math.nan, "r": math.nan}, {"r": 1.0})
    assert len(out) == 3, out


def test_dict_thresholds_in_wire_form():
    spec = EvaluationSpec.model_validate({
        "model": {"adapterUri": "/a", "baseModel": {"uri": "/b"}}, "dataset": {"uri": "/d"},
        "thresholds": {"perplexity": {"maxRatioToBase": 0.8}}})
    raw = {k: v.dump() for k, v in spec.thresholds.items()}
    assert check_thresholds(raw, {"perplexity": 9.0}, {"perplexity": 10.0}) == \
        check_thresholds(spec.thresholds, {"perplexity": 9.0}, {"perplexity": 10.0})
    assert len(check_thresholds(raw, {"perplexity": 9.0}, {"perplexity": 10.0})) == 1


def test_ratio_base_zero():
    assert ratio(0.0, 0.0) == 1.0
    assert ratio(0.5, 0.0) == math.inf
    assert check_thresholds({"m": Threshold(min_ratio_to_base=2)}, {"m": 0.5}, {"m": 0.0}) == []
    assert len(check_thresholds({"m": Threshold(max_ratio_to_base=2)}, {"m": 0.5}, {"m": 0.0})) == 1


def test_delta():
    assert delta({"a": 3.0, "b": 1.0, "c": 2.0}, {"a": 1.0, "c": 2.5}) == {"a": 2.0, "c": -0.5}
    assert delta({"a": 1.0}, None) == {}


@given(ft=finite, lo=finite, hi=finite)
def test_absolute_bounds_property(ft, lo, hi):
    out = check_thresholds({"m": Threshold(min=lo, max=hi)}, {"m": ft})
    assert len(out) == int(ft < lo) + int(ft > hi)


@given(ft=finite, b=finite, dlo=finite, dhi=finite)
def test_delta_bounds_property(ft, b, dlo, dhi):
    out = check_thresholds({"m": Threshold(min_delta_to_base=dlo, max_delta_to_base=dhi)}, {"m": ft}, {"m": b})
    d = ft - b
    assert len(out) == int(d < dlo) + int(d > dhi)
    assert delta({"m": ft}, {"m": b}) == {"m": d}


@given(ft=finite, b=positive, rlo=finite, rhi=finite)
def test_ratio_bounds_property(ft, b, rlo, rhi):
    out = check_thresholds({"m": Threshold(min_ratio_to_base=rlo, max_ratio_to_base=rhi)}, {"m": ft}, {"m": b})
    r = ft / b
    assert len(out) == int(r < rlo) + int(r > rhi)
    for line in out:
        assert line.startswith("m: finetuned / base")


@given(scores=st.dictionaries(st.sampled_from(["rougeL", "bleu", "perplexity", "x"]), finite, min_size=1))
def test_own_scores_as_bounds_always_pass(scores):
    """A model always meets thresholds set exactly at its own scores, relative to itself."""
    th = {k: Threshold(min=v, max=v, min_delta_to_base=0, max_delta_to_base=0) for k, v in scores.items()}
    assert check_thresholds(th, scores, scores) == []
    # ...and one nudge above any score fails exactly that metric
    k = sorted(scores)[0]
    th[k] = Threshold(min=scores[k] + max(1.0, abs(scores[k])))
    out = check_thresholds(th, scores, scores)
    assert len(out) == 1 and out[0].startswith(k)
