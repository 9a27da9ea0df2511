"""Eval metrics: values against rouge-score/sacrebleu directly and hand counts, perplexity = exp(mean NLL),
exactMatch normalisation, checks as rates, one failing metric leaves the others."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from hypothesis import given
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from llmforge.api.evaluation import CustomCheck, EvaluationSpec
from llmforge_trainer import metrics as M

PREDS = ["the cat sat", "Paris.", "  a  B c ", '{"k": 1}', "nothing here at all"]
REFS = ["the cat sat on the mat", "paris", "A b C!!", '{"k": 1}', "something else entirely"]


def test_rouge_hand_counts():
    r = M.rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r["rouge1"][0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P=3/3, R=3/6
    assert r["rouge2"][0] == pytest.approx(2 * 1.0 * 0.4 / 1.4)  # P=2/2, R=2/5
    assert r["rougeL"][0] == pytest.approx(2 / 3)
    assert M.rouge(["x y"], ["z w"])["rougeL"] == [0.0]


def test_rouge_and_bleu_match_libraries_directly():
    s = M.score(["rouge1", "rouge2", "rougeL", "bleu"], [], PREDS, REFS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(r, p) for p, r in zip(PREDS, REFS, strict=True)]
    for k in ("rouge1", "rouge2", "rougeL"):
        assert s.scores[k] == pytest.approx(sum(d[k].fmeasure for d in direct) / len(direct))
        assert [row[k] for row in s.per_sample] == pytest.approx([d[k].fmeasure for d in direct])
    assert s.scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert 0 < s.scores["bleu"] < 100
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert s.errors == {}


def test_bleu_is_corpus_not_mean_of_sentences():
    preds, refs = ["the cat sat on the mat today", "a b"], ["the cat sat on the mat today", "c d"]
    sent_mean = sum(sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(preds, refs, strict=True)) / 2
    assert M.bleu(preds, refs) != pytest.approx(sent_mean)


@pytest.mark.parametrize(("pred", "ref", "same"), [
    ("  Paris. ", "paris", True), ("a  B\tc\n", "A b c!!", True), ("paris", "pari", False),
    ("hello, world", "hello world", False), ("¿qué?", "¿QUÉ", True), ("", "...", True), ("a.b", "a.b.", True),
])
def test_exact_match_normalisation(pred, ref, same):
    assert M.exact_match([pred], [ref]) == [same]


def test_exact_match_docstring_in_api_matches():
    """The API docstring (kubectl explain) names the four steps; each step is exercised on its own."""
    doc = EvaluationSpec.model_fields["metrics"].description
    for words in ("lower-casing", "trimming", "collapsing whitespace", "trailing punctuation"):
        assert words in doc
    assert M.normalize("ABC") == "abc"
    assert M.normalize("  abc \n") == "abc"
    assert M.normalize("a \t\n b") == "a b"
    assert M.normalize("abc?!.") == "abc" and M.normalize(".abc") == ".abc"


def test_checks_are_rates():
    checks = [CustomCheck(name="hasCat", type="contains", value="cat"),
              CustomCheck(name="digits", type="regex", value=r"\d"),
              CustomCheck(name="json", type="jsonValid")]
    s = M.score([], checks, PREDS, REFS)
    assert s.scores == {"hasCat": pytest.approx(1 / 5), "digits": pytest.approx(1 / 5), "json": pytest.approx(1 / 5)}
    assert [row["json"] for row in s.per_sample] == [False, False, False, True, False]


def test_failing_metric_reported_others_complete():
    checks = [CustomCheck.model_construct(name="broken", type="regex", value="(unclosed"),
              CustomCheck(name="ok", type="contains", value="a")]
    s = M.score(["rougeL", "perplexity", "exactMatch"], checks, PREDS, REFS)
    assert set(s.errors) == {"broken", "perplexity"}
    assert "error" in s.errors["broken"].lower() or "unterminated" in s.errors["broken"].lower()
    assert set(s.scores) == {"rougeL", "exactMatch", "ok"}
    assert s.scores["exactMatch"] == pytest.approx(3 / 5)


def test_perplexity_needs_every_sample():
    s = M.score(["perplexity"], [], PREDS, REFS, nll_sums=[1.0] * 4, token_counts=[1] * 4)
    assert "perplexity" in s.errors
    s = M.score(["perplexity"], [], PREDS, REFS, nll_sums=[1.0, 2, 3, 4, 5], token_counts=[1, 2, 3, 4, 5])
    assert s.scores["perplexity"] == pytest.approx(math.exp(15 / 15))
    with pytest.raises(ValueError):
        M.perplexity_from_sums([0.0], [0])


logprobs = st.lists(st.floats(min_value=-20, max_value=0, allow_nan=False), min_size=1, max_size=60)


@given(lp=logprobs)
def test_perplexity_is_exp_mean_nll(lp):
    expected = math.exp(-sum(lp) / len(lp))
    assert M.perplexity([-x for x in lp]) == pytest.approx(expected, rel=1e-9)


@given(lp=logprobs, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=5))
def test_perplexity_from_sample_sums_equals_pooled_tokens(lp, cuts):
    nll = [-x for x in lp]
    bounds = sorted({0, len(nll), *(c for c in cuts if c <= len(nll))})
    chunks = [nll[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    got = M.perplexity_from_sums([sum(c) for c in chunks], [len(c) for c in chunks])
    assert got == pytest.approx(M.perplexity(nll), rel=1e-9)


@given(st.text(max_size=40))
def test_normalize_idempotent_and_self_match(t):
    assert M.normalize(M.normalize(t)) == M.normalize(t)
    assert M.exact_match([t.upper() + " . "], [t])[0] == (M.normalize(t.upper() + " . ") == M.normalize(t))
