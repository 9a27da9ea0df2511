"""llmforge-eval: score a LoRA adapter against its base on held-out data, write the report, end with a verdict.

Copy-paste::

    python -m llmforge_trainer.tiny --out /tmp/tiny --data /tmp/tiny-data --format chat
    llmforge-eval --spec examples/evaluation.yaml --adapter /tmp/run/adapter --base /tmp/tiny \\
        --output /tmp/eval-out --termination-log /tmp/eval-result.json

Inputs:

* ``--spec``: an Evaluation resource (``kind: Evaluation``) or its bare ``spec``, YAML or JSON.
* The model: ``--adapter`` and ``--base`` win; else ``spec.model.adapterUri`` and ``spec.model.baseModel``
  (``uri``, else the hub ``name``). The operator resolves ``fineTuneJobRef`` and passes both flags, so the pod
  never reads the FineTuneJob. gs://, file:// and local paths work for adapter, base, dataset and output.
* ``--output`` (else ``spec.output.uri``): a directory that receives ``report.jsonl`` (one row per sample:
  prompt, reference, both predictions, per-sample metrics) and ``results.json`` (scores, delta, errors, gate).
* ``--backend auto|transformers|vllm``: vLLM when it imports and a GPU is visible (``auto``). Extra vLLM
  engine arguments as JSON in ``$LLMFORGE_VLLM_ENGINE_ARGS``, e.g. ``{"max_model_len": 4096}``.

Outputs: the files above, an MLflow run when ``spec.tracking.mlflow`` is set (an unreachable server is
reported, not fatal), and ``contract.EvalResult`` as compact JSON at the termination-message path
(``--termination-log``, else ``$LLMFORGE_TERMINATION_LOG``, else /dev/termination-log). Exit code 0 when
the evaluation ran (whether or not the gate passed: the gate is a verdict, not a crash), 2 for bad input
(spec, data, model), 1 otherwise. See docs/evaluation.md and docs/reporting-contract.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmforge.api import contract
from llmforge.api.evaluation import EvalResults, EvaluationSpec, Sample
from llmforge.api.gate import check_thresholds

from .errors import TrainError, invalid_input

log = logging.getLogger("llmforge.eval")

SAMPLES_IN_RESULT = 3
SAMPLE_CHARS = 200
MODEL_CARD = ("config.json", "adapter_config.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmforge-eval", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="Evaluation resource or spec (YAML/JSON)")
    p.add_argument("--adapter", help="LoRA adapter directory (overrides spec.model.adapterUri)")
    p.add_argument("--base", help="base model directory or hub id (overrides spec.model.baseModel)")
    p.add_argument("--output", help="output directory (overrides spec.output.uri)")
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "vllm"])
    p.add_argument("--termination-log", help="where EvalResult goes (default $LLMFORGE_TERMINATION_LOG "
                                             f"or {contract.TERMINATION_LOG})")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def load_spec(path: str) -> tuple[EvaluationSpec, dict]:
    """(spec, metadata) from an Evaluation resource or a bare spec."""
    import yaml
    from pydantic import ValidationError

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise invalid_input("InvalidSpec", f"{path}: cannot read the spec: {exc}") from exc
    if not isinstance(doc, dict):
        raise invalid_input("InvalidSpec", f"{path}: expected a mapping")
    metadata = doc.get("metadata") or {}
    raw = doc["spec"] if "spec" in doc and ("kind" in doc or "apiVersion" in doc or "metadata" in doc) else doc
    try:
        return EvaluationSpec.model_validate(raw), metadata
    except ValidationError as exc:
        lines = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]]
        raise invalid_input("InvalidSpec", f"{path}: invalid Evaluation spec:\n" + "\n".join(lines)) from exc


def resolve_model(spec: EvaluationSpec, adapter: str | None, base: str | None) -> tuple[str, str]:
    """(adapter URI, base URI or hub id): flags first, then the spec."""
    adapter = adapter or spec.model.adapter_uri
    if base is None and spec.model.base_model is not None:
        base = spec.model.base_model.uri or spec.model.base_model.name
    if not adapter or not base:
        ref = spec.model.fine_tune_job_ref
        hint = (f" (fineTuneJobRef {ref.name} is resolved by the operator, which passes --adapter and --base)"
                if ref else "")
        raise invalid_input("InvalidSpec", f"no {'adapter' if not adapter else 'base model'} to evaluate{hint}")
    return adapter, base


def load_conversations(uri: str, fmt: str) -> list[list[dict[str, str]]]:
    """Every record of the eval file as a conversation ending with the reference reply; any invalid record
    fails the run (every sample must be evaluated and counted)."""
    from . import data

    parsed = data.read_file(uri, fmt)
    if parsed.issues:
        raise data._fail_listing(parsed.issues, len(parsed.issues) + len(parsed.examples))
    if not parsed.examples:
        raise invalid_input("InvalidData", f"{uri}: no records")
    if parsed.format == "text":
        raise invalid_input("InvalidData", f"{uri}: the text format has no reference reply to compare "
                            "predictions with; use alpaca, chat or prompt-completion")
    return [ex.message_dicts() for ex in parsed.examples]


def _local(uri: str, scratch: Path, what: str) -> str:
    """Local directory for a model URI (gs:// is downloaded); anything not path-like is a hub id."""
    from . import storage

    reason = "BadBaseModel" if what == "base" else "InvalidSpec"
    if uri.startswith("gs://"):
        path = storage.local_copy(uri, scratch / what)
        if not any(path.iterdir()) if path.is_dir() else True:
            raise invalid_input(reason, f"{what} {uri}: nothing there")
        return str(path)
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    if os.path.exists(local):
        return os.path.abspath(local)
    if uri.startswith("file://") or os.path.isabs(uri) or uri.startswith(".") or what == "adapter":
        raise invalid_input(reason, f"{what} {uri}: not found")
    return uri  # a hub id such as meta-llama/Llama-3.1-8B


def make_backend(kind: str, base_dir: str, adapter_dir: str, seed: int) -> Any:
    from . import evaluate as E

    chosen = E.pick_backend(kind)
    try:
        if chosen == "vllm":
            extra = json.loads(os.environ.get("LLMFORGE_VLLM_ENGINE_ARGS") or "{}")
            return E.VLLMBackend(base_dir, adapter_dir, max_lora_rank=_lora_rank(adapter_dir), seed=seed, **extra)
        return E.HFBackend(base_dir, adapter_dir)
    except (OSError, ValueError) as exc:
        raise invalid_input("BadBaseModel", f"cannot load base {base_dir} with adapter {adapter_dir}: {exc}") from exc


def _lora_rank(adapter_dir: str) -> int:
    """vLLM's max_lora_rank must be one of its supported sizes and at least the adapter's r."""
    try:
        r = int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("r", 8))
    except (OSError, ValueError):
        r = 64
    for size in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= size:
            return size
    return r


def _truncate(text: str | None) -> str | None:
    if text is None or len(text) <= SAMPLE_CHARS:
        return text
    return text[: SAMPLE_CHARS - 1] + "…"


def results_document(spec: EvaluationSpec, outcome: Any, adapter: str, base: str, failed: list[str]) -> dict:
    """results.json: everything in the EvalResult plus the gate verdict and timings."""
    return {
        "model": {"adapterUri": adapter, "base": base},
        "dataset": {"uri": spec.dataset.uri, "maxSamples": spec.dataset.max_samples, "seed": spec.dataset.seed},
        "backend": outcome.backend,
        "samplesEvaluated": outcome.samples_evaluated,
        "finetuned": outcome.finetuned,
        "base": outcome.base,
        "delta": outcome.delta,
        "errors": outcome.errors,
        "passed": not failed,
        "failedThresholds": failed,
        "thresholds": {k: v.dump() for k, v in (spec.thresholds or {}).items()},
        "timings": outcome.timings,
    }


def write_outputs(output_uri: str, outcome: Any, doc: dict) -> str:
    """report.jsonl and results.json under ``output_uri``; returns the report URI."""
    from . import storage

    report_uri = storage.join(output_uri, "report.jsonl")
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in outcome.rows)
    storage.write_bytes(report_uri, body.encode())
    storage.write_bytes(storage.join(output_uri, "results.json"),
                        (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())
    return report_uri


def log_mlflow(spec: EvaluationSpec, metadata: dict, doc: dict, output_uri: str) -> tuple[Any, str | None]:
    """(MlflowStatus or None, warning or None). Never raises: a tracking outage must not fail the evaluation."""
    if spec.tracking is None or spec.tracking.mlflow is None:
        return None, None
    from llmforge.api.common import MlflowStatus

    cfg = spec.tracking.mlflow
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        import mlflow

        mlflow.set_tracking_uri(cfg.tracking_uri)
        exp = mlflow.set_experiment(cfg.experiment)
        name = metadata.get("name") or "evaluation"
        tags = {"llmforge.kind": "Evaluation", "llmforge.name": name,
                "llmforge.namespace": metadata.get("namespace", "")}
        with mlflow.start_run(run_name=f"eval-{name}", tags=tags) as run:
            mlflow.log_params({"adapter": doc["model"]["adapterUri"][:500], "base": doc["model"]["base"][:500],
                               "dataset": spec.dataset.uri[:500], "samples": doc["samplesEvaluated"],
                               "seed": spec.dataset.seed, "backend": doc["backend"],
                               "max_new_tokens": spec.generation.max_new_tokens,
                               "temperature": spec.generation.temperature, "output": output_uri[:500]})
            metrics = {f"finetuned.{k}": v for k, v in doc["finetuned"].items()}
            metrics |= {f"base.{k}": v for k, v in (doc["base"] or {}).items()}
            metrics |= {f"delta.{k}": v for k, v in doc["delta"].items()}
            metrics["passed"] = float(doc["passed"])
            mlflow.log_metrics(metrics)
            mlflow.log_dict(doc, "results.json")
            run_id, exp_id = run.info.run_id, exp.experiment_id
        url = f"{cfg.tracking_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
        return MlflowStatus(run_id=run_id, experiment_id=exp_id, url=url), None
    except Exception as exc:  # noqa: BLE001 - tolerated outage
        msg = f"MLflow at {cfg.tracking_uri} unavailable, results not tracked: {type(exc).__name__}: {exc}"
        log.warning(msg)
        try:
            import mlflow

            mlflow.end_run()
        except Exception:  # noqa: BLE001
            pass
        return None, msg[:400]


def run(args: argparse.Namespace) -> contract.EvalResult:
    """The evaluation proper; raises TrainError for a failure with a contract reason."""
    from . import evaluate as E

    spec, metadata = load_spec(args.spec)
    adapter_uri, base_uri = resolve_model(spec, args.adapter, args.base)
    output_uri = args.output or spec.output.uri
    if not output_uri:
        raise invalid_input("InvalidSpec", "no output directory: set spec.output.uri or pass --output")
    conversations = load_conversations(spec.dataset.uri, spec.dataset.format)
    log.info("eval: %d records in %s; evaluating up to %d", len(conversations), spec.dataset.uri,
             spec.dataset.max_samples)
    with tempfile.TemporaryDirectory(prefix="llmforge-eval-") as scratch:
        adapter_dir = _local(adapter_uri, Path(scratch), "adapter")
        base_dir = _local(base_uri, Path(scratch), "base")
        backend = make_backend(args.backend, base_dir, adapter_dir, spec.dataset.seed)
        log.info("eval: backend %s, adapter %s, base %s", backend.name, adapter_uri, base_uri)
        outcome = E.evaluate(spec, backend, conversations)
    failed = check_thresholds(spec.thresholds, outcome.finetuned, outcome.base)
    doc = results_document(spec, outcome, adapter_uri, base_uri, failed)
    report_uri = write_outputs(output_uri, outcome, doc)
    mlflow_status, mlflow_warning = log_mlflow(spec, metadata, doc, output_uri)

    log.info("eval: %d samples; finetuned %s; base %s", outcome.samples_evaluated, outcome.finetuned, outcome.base)
    log.info("eval: gate %s%s", "passed" if not failed else "FAILED", "".join(f"\n  {f}" for f in failed))
    samples = [Sample(prompt=_truncate(r["prompt"]), reference=_truncate(r["reference"]),
                      prediction=_truncate(r["prediction"]), base_prediction=_truncate(r.get("basePrediction")))
               for r in outcome.rows[:SAMPLES_IN_RESULT]]
    results = EvalResults(finetuned=outcome.finetuned, base=outcome.base, delta=outcome.delta or None,
                          errors=outcome.errors or None)
    if not outcome.finetuned:
        raise TrainError("MetricError", "no metric could be computed: "
                         + "; ".join(f"{k}: {v}" for k, v in outcome.errors.items()))
    return contract.EvalResult(phase="Succeeded", message=mlflow_warning, results=results,
                               samples_evaluated=outcome.samples_evaluated, samples=samples,
                               report_uri=report_uri, mlflow=mlflow_status)


def write_termination(result: contract.EvalResult, path: str | None) -> None:
    path = path or os.environ.get("LLMFORGE_TERMINATION_LOG") or contract.TERMINATION_LOG
    try:
        Path(path).write_text(contract.encode_result(result))
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.monotonic()
    code = contract.EXIT_OK
    try:
        result = run(args)
    except TrainError as exc:
        result = contract.EvalResult(phase="Failed", reason=exc.reason, message=exc.message)
        code = exc.exit_code
    except MemoryError as exc:
        result = contract.EvalResult(phase="Failed", reason="OutOfMemory", message=f"out of memory: {exc}")
        code = contract.EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - every failure ends in a readable result
        name = type(exc).__name__
        reason = "OutOfMemory" if "OutOfMemory" in name else "Error"
        result = contract.EvalResult(phase="Failed", reason=reason, message=f"{name}: {exc}")
        code = contract.EXIT_FAILED
        log.exception("eval failed")
    if result.phase == "Failed":
        log.error("eval: %s: %s", result.reason, result.message)
    write_termination(result, args.termination_log)
    log.info("eval: %s in %.1fs", result.phase, time.monotonic() - t0)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
