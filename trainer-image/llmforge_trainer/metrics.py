"""Evaluation metrics: ROUGE (rouge-score), corpus BLEU (sacrebleu), exact match, perplexity, custom checks.

Pure functions over strings and per-sample negative log-likelihoods; no model here (see evaluate.py).
Definitions (also in docs/evaluation.md):

* ``rouge1``/``rouge2``/``rougeL``: mean over samples of rouge-score's F-measure, default tokenizer, no
  stemmer. Range 0-1.
* ``bleu``: sacrebleu ``corpus_bleu`` with its defaults (13a tokenizer, exp smoothing), one reference per
  sample. Range 0-100, as sacrebleu reports it.
* ``exactMatch``: fraction of samples whose prediction equals the reference after :func:`normalize`
  (lower-case, trim, collapse whitespace, drop trailing punctuation). Range 0-1.
* ``perplexity``: ``exp(mean NLL)`` over every reference completion token of every sample (token-weighted,
  teacher-forced), natural log. Lower is better.
* custom checks: fraction of predictions that pass (``contains``: substring; ``regex``: ``re.search``;
  ``jsonValid``: ``json.loads`` of the whitespace-trimmed prediction succeeds). Range 0-1.

A metric that cannot be computed becomes an entry in ``errors`` and the others still complete.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")


def normalize(text: str) -> str:
    """exactMatch normalisation: lower-case, trim, collapse whitespace runs to one space, then drop any
    trailing punctuation (Unicode category P*) and trim again. ``"  Paris. "`` -> ``"paris"``."""
    text = " ".join(text.lower().split())
    end = len(text)
    while end and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[:end].rstrip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
    """Per-sample exact match after :func:`normalize`."""
    _same_length(predictions, references)
    return [normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)]


def rouge(predictions: Sequence[str], references: Sequence[str],
          kinds: Sequence[str] = ROUGE_METRICS) -> dict[str, list[float]]:
    """Per-sample rouge-score F-measures for each kind (``rouge_scorer.score(target, prediction)``)."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=False)
    out: dict[str, list[float]] = {k: [] for k in kinds}
    for p, r in zip(predictions, references, strict=True):
        s = scorer.score(r, p)
        for k in kinds:
            out[k].append(float(s[k].fmeasure))
    return out


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0-100) with one reference stream."""
    import sacrebleu

    _same_length(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def perplexity(token_nlls: Iterable[float]) -> float:
    """``exp(mean(nll))`` of per-token negative log-likelihoods (natural log)."""
    values = [float(x) for x in token_nlls]
    if not values:
        raise ValueError("no tokens to score")
    return math.exp(math.fsum(values) / len(values))


def perplexity_from_sums(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Corpus perplexity from per-sample NLL sums and token counts: ``exp(sum(nll) / sum(tokens))``,
    equal to :func:`perplexity` over all tokens pooled."""
    total = sum(int(n) for n in token_counts)
    if total <= 0:
        raise ValueError("no reference completion tokens to score")
    return math.exp(math.fsum(float(x) for x in nll_sums) / total)


def check_passes(check: Any, predictions: Sequence[str]) -> list[bool]:
    """Per-sample pass/fail of one custom check (an ``llmforge.api.evaluation.CustomCheck`` or dict)."""
    kind = _get(check, "type")
    value = _get(check, "value")
    if kind == "contains":
        if not value:
            raise ValueError("contains needs a value")
        return [value in p for p in predictions]
    if kind == "regex":
        if not value:
            raise ValueError("regex needs a value")
        pattern = re.compile(value)
        return [pattern.search(p) is not None for p in predictions]
    if kind == "jsonValid":
        return [_json_ok(p) for p in predictions]
    raise ValueError(f"unknown check type {kind!r}")


def _json_ok(text: str) -> bool:
    try:
        json.loads(text.strip())
    except ValueError:
        return False
    return True


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} references")


def _mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("no samples")
    return math.fsum(xs) / len(xs)


@dataclass
class Scores:
    """Aggregate scores by metric name, per-metric errors, and per-sample values (same order as input)."""

    scores: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    per_sample: list[dict[str, Any]] = field(default_factory=list)


def score(
    metrics: Sequence[str],
    checks: Sequence[Any],
    predictions: Sequence[str],
    references: Sequence[str],
    nll_sums: Sequence[float] | None = None,
    token_counts: Sequence[int] | None = None,
) -> Scores:
    """Compute every requested metric and check, each isolated: one failure -> ``errors[name]``."""
    n = len(predictions)
    out = Scores(per_sample=[{} for _ in range(n)])

    def attempt(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any failure is reported for this metric only
            out.errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            out.scores.pop(name, None)

    def do_rouge(kinds: list[str]) -> None:
        per = rouge(predictions, references, kinds)
        for k in kinds:
            out.scores[k] = _mean(per[k])
            for row, v in zip(out.per_sample, per[k], strict=True):
                row[k] = v

    kinds = [m for m in ROUGE_METRICS if m in metrics]
    if kinds:
        try:
            do_rouge(kinds)
        except Exception as exc:  # noqa: BLE001
            for k in kinds:
                out.errors[k] = f"{type(exc).__name__}: {exc}"[:300]

    if "bleu" in metrics:
        attempt("bleu", lambda: out.scores.__setitem__("bleu", bleu(predictions, references)))

    if "exactMatch" in metrics:
        def do_em() -> None:
            em = exact_match(predictions, references)
            out.scores["exactMatch"] = _mean([float(x) for x in em])
            for row, v in zip(out.per_sample, em, strict=True):
                row["exactMatch"] = v
        attempt("exactMatch", do_em)

    if "perplexity" in metrics:
        def do_ppl() -> None:
            if nll_sums is None or token_counts is None:
                raise ValueError("no log-likelihoods were computed")
            if len(nll_sums) != n or len(token_counts) != n:
                raise ValueError(f"log-likelihoods for {len(nll_sums)} of {n} samples")
            out.scores["perplexity"] = perplexity_from_sums(nll_sums, token_counts)
            for row, s, c in zip(out.per_sample, nll_sums, token_counts, strict=True):
                row["nll"] = float(s)
                row["tokens"] = int(c)
        attempt("perplexity", do_ppl)

    for check in checks:
        name = _get(check, "name")

        def do_check(check: Any = check, name: str = name) -> None:
            passes = check_passes(check, predictions)
            out.scores[name] = _mean([float(x) for x in passes])
            for row, v in zip(out.per_sample, passes, strict=True):
                row[name] = v
        attempt(name, do_check)
    return out
