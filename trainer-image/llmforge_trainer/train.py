"""One training attempt: trl's SFTTrainer/SFTConfig driven by the FineTuneJob, plus our guarantees.

The loop is trl's; this module is glue, and the guarantees are callbacks (`callbacks.py`: progress and the
NaN guard, preemption, checkpoint publishing) over the attempt's state (`attempt.py`).

On start the newest *complete* checkpoint under the output URI is downloaded and resumed from (optimizer,
scheduler, RNG and data position included, by transformers). Output: ``adapter/``, optional ``merged/``,
``training_report.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from llmforge.api import contract
from llmforge.api.finetunejob import FineTuneJob

from . import data as data_mod
from . import model as model_mod
from . import report as report_mod
from . import storage
from .attempt import Attempt, Preemption, RunOptions, rank, world_size
from .callbacks import callbacks
from .errors import TrainError
from .progress import ProgressExporter
from .tracking import Tracker, flatten, job_tags

log = logging.getLogger("llmforge.train")


def packed_batching(batch_size: int, grad_accum: int, packing: bool, attn: str) -> tuple[int, int, str | None]:
    """(per-device batch, gradient accumulation, note). Padding-free packing flattens a whole batch into one
    sequence; flash-attention's varlen kernels attend within each example, but SDPA computes the flattened
    sequence's full (masked) attention, quadratic in batch x maxSeqLength. Without flash-attention we therefore
    feed one packed sequence per micro-batch and accumulate ``batchSize`` times more: the same tokens per
    optimizer step, a fraction of the attention work."""
    if packing and attn != "flash_attention_2" and batch_size > 1:
        return 1, grad_accum * batch_size, (
            f"packing without flash-attention ({attn}): 1 packed sequence per micro-batch and gradient "
            f"accumulation {grad_accum} x {batch_size} = {grad_accum * batch_size}, same tokens per optimizer step")
    return batch_size, grad_accum, None


def sft_config(spec: Any, output_dir: Path, fmt: str, has_cuda: bool, has_validation: bool,
               strategy: str = "single", notes: list[str] | None = None, attn: str | None = None):
    """SFTConfig from the spec: one field per spec field, plus the settings our guarantees rely on."""
    from trl import SFTConfig

    t = spec.training
    attn = attn or model_mod.attn_implementation()
    batch, accum, pack_note = packed_batching(t.batch_size, t.gradient_accumulation_steps, t.packing, attn)
    if pack_note and notes is not None:
        notes.append(pack_note)
    optim, note = model_mod.resolve_optimizer(t.optimizer, has_cuda)
    if note and notes is not None:
        notes.append(note)
    compute = spec.quantization.compute_dtype if spec.method == "qlora" else "bfloat16"
    kwargs: dict[str, Any] = {}
    if strategy == "fsdp":
        kwargs["fsdp"] = "full_shard auto_wrap"
        kwargs["fsdp_config"] = {"use_orig_params": False, "cpu_ram_efficient_loading": True,
                                 "sync_module_states": True, "backward_prefetch": "backward_pre"}
    if world_size() > 1:
        kwargs["ddp_find_unused_parameters"] = False
    if has_validation:
        kwargs["eval_strategy"] = "steps" if t.eval_steps else "epoch"
        if t.eval_steps:
            kwargs["eval_steps"] = t.eval_steps
    else:
        kwargs["eval_strategy"] = "no"
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        optim=optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_length=t.max_seq_length,
        packing=t.packing,
        packing_strategy="bfd",  # padding-free: sequences concatenated, attention kept per example
        eval_packing=False,
        completion_only_loss=t.completion_only_loss if fmt != "text" else None,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=compute == "bfloat16",
        fp16=compute == "float16" and has_cuda,
        use_cpu=not has_cuda,
        seed=t.seed,
        data_seed=t.seed,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # the NaN guard must see the real loss
        save_strategy="steps",
        save_steps=spec.checkpoint.every_steps,
        save_total_limit=spec.checkpoint.keep,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
        **kwargs,
    )


def _resume(at: Attempt, scratch: Path) -> Path | None:
    """Download the newest complete checkpoint (if any) into scratch; returns its local path."""
    found = storage.latest_checkpoint(at.spec.output.uri)
    if found is None:
        return None
    step, uri = found
    local = scratch / f"resume-rank{rank()}" / f"checkpoint-{step}"
    if local.exists():
        shutil.rmtree(local)
    storage.download_dir(uri, local)
    (local / storage.MARKER).unlink(missing_ok=True)
    at.resumed_from, at.checkpoint = step, (step, uri)
    at.exporter.set(checkpoint_step=step)
    if at.main:
        log.info("resume: from %s (step %d)", uri, step)
    return local


def _timed(at: Attempt, name: str):
    class _T:
        def __enter__(self):
            self.t0 = time.time()

        def __exit__(self, *exc):
            at.durations[name] = round(time.time() - self.t0, 3)
    return _T()


def _check_preempted(at: Attempt) -> None:
    if at.preemption.requested:
        raise _Preempted()


class _Preempted(Exception):
    """SIGTERM before training started: nothing new to save."""


def execute(at: Attempt) -> None:
    """Run the attempt, filling ``at``. Raises TrainError on failure; returns normally on success or preemption."""
    spec, opts = at.spec, at.opts
    scratch = Path(opts.work_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    has_cuda = model_mod.cuda_available()

    with _timed(at, "resume_lookup_seconds"):
        resume_dir = _resume(at, scratch)
    at.tracker.start(resume=resume_dir is not None, run_name=at.job.metadata.get("name"))
    _check_preempted(at)

    with _timed(at, "load_tokenizer_seconds"):
        path, described = model_mod.resolve_model_source(spec, scratch)
        tokenizer = model_mod.load_tokenizer(path, spec, described)
    with _timed(at, "data_seconds"):
        at.data = data_mod.prepare(spec.dataset, tokenizer, spec.training.max_seq_length, spec.training.seed,
                                   on_progress=log.info if at.main else (lambda _m: None))
    _check_preempted(at)

    with _timed(at, "load_model_seconds"):
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if has_cuda and opts.strategy != "fsdp" else None
        base = model_mod.load_base_model(path, spec, described, device_map=device_map, fsdp=opts.strategy == "fsdp")
        model = model_mod.prepare_for_training(base, spec)
    counts = model_mod.parameter_counts(model)
    _check_preempted(at)

    from datasets import Dataset
    from trl import SFTTrainer

    out_dir = scratch / "hf"
    if resume_dir is None and out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = sft_config(spec, out_dir, at.data.format, has_cuda, bool(at.data.validation), opts.strategy, at.notes)
    for note in at.notes:
        log.info("note: %s", note)
    progress_cb, preempt_cb, ckpt_cb = callbacks()
    train_ds = Dataset.from_list(at.data.train)
    eval_ds = Dataset.from_list(at.data.validation) if at.data.validation else None
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer,
                         callbacks=[progress_cb(at), preempt_cb(at), ckpt_cb(at), *opts.callbacks])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our ProgressCallback prints one readable line instead
    at.trainer = trainer  # for tests and extra callbacks
    at.params = resolved_params(spec, cfg, at.data, counts, described, model_mod.attn_implementation(), opts)
    if at.main:
        if at.params.get("distributed_backend"):
            log.info("distributed: %s over %s, world size %d", opts.strategy, at.params["distributed_backend"],
                     world_size())
        at.tracker.log_params(at.params)

    with _timed(at, "train_seconds"):
        result = trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    at.step = trainer.state.global_step
    at.total_steps = trainer.state.max_steps
    at.train_metrics = dict(result.metrics)
    if at.preemption.requested:
        return

    done_eval = [h for h in at.history if h["step"] == at.step and "eval_loss" in h]
    if eval_ds is not None and done_eval:
        at.eval_metrics = {"eval_loss": done_eval[-1]["eval_loss"], "eval_perplexity": done_eval[-1]["eval_perplexity"]}
    elif eval_ds is not None:
        with _timed(at, "eval_seconds"):
            metrics = trainer.evaluate()
        at.eval_metrics = dict(metrics)
        at.eval_metrics["eval_perplexity"] = report_mod.perplexity(metrics.get("eval_loss"))
        if at.main:
            at.tracker.log_metrics({"eval_loss": metrics.get("eval_loss"),
                                    "eval_perplexity": at.eval_metrics["eval_perplexity"]}, at.step)
        ev = metrics.get("eval_loss")
        if ev is not None and not math.isfinite(ev):
            raise report_mod.loss_diverged(at.step, ev, spec)

    if not at.main:
        return
    with _timed(at, "save_seconds"):
        adapter_dir = scratch / "adapter"
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        trainer.save_model(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
        (adapter_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; consumers need none of it
        (adapter_dir / ADAPTER_INFO).write_text(json.dumps(adapter_info(spec, described, at), indent=2) + "\n")
        adapter_uri = storage.join(spec.output.uri, "adapter")
        storage.upload_dir(adapter_dir, adapter_uri)
        at.outputs["adapter_uri"] = adapter_uri
    if spec.output.merge:
        with _timed(at, "merge_seconds"):
            at.outputs["merged_uri"] = merge(path, spec, adapter_dir, scratch / "merged", tokenizer)


ADAPTER_INFO = "llmforge_adapter.json"


def adapter_info(spec: Any, described: str, at: Attempt) -> dict[str, Any]:
    """What the adapter was trained against (peft's adapter_config.json does not record the quantisation)."""
    q = spec.quantization
    return {
        "base_model": described, "base_model_revision": spec.base_model.revision, "method": spec.method,
        "quantization": ({"bits": q.bits, "type": q.type, "double_quant": q.double_quant,
                          "compute_dtype": q.compute_dtype} if spec.method == "qlora" else None),
        "lora": {"r": spec.lora.r, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout,
                 "target_modules": spec.lora.target_modules},
        "steps": at.step, "job": {k: at.job.metadata.get(k) for k in ("namespace", "name", "uid")},
        "mlflow_run_id": at.tracker.run_id,
    }


def merge(base_path: str, spec: Any, adapter_dir: Path, out_dir: Path, tokenizer: Any) -> str:
    """merge_and_unload into a bf16 copy of the base (not the 4-bit one: merging into NF4 would be lossy)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16, revision=spec.base_model.revision)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    merged.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    uri = storage.join(spec.output.uri, "merged")
    storage.upload_dir(out_dir, uri)
    return uri


def resolved_params(spec: Any, cfg: Any, prepared: data_mod.Prepared, counts: dict[str, int], described: str,
                    attn: str, opts: RunOptions) -> dict[str, Any]:
    """Every hyperparameter as actually used (after defaults and fallbacks), flat, for MLflow and the report."""
    sft = {k: getattr(cfg, k) for k in (
        "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
        "learning_rate", "lr_scheduler_type", "warmup_steps", "optim", "weight_decay", "max_grad_norm",
        "max_length", "packing", "packing_strategy", "padding_free", "completion_only_loss",
        "gradient_checkpointing", "bf16", "fp16", "seed", "logging_steps", "eval_strategy", "eval_steps",
        "save_steps", "save_total_limit")}
    sft["lr_scheduler_type"] = str(getattr(cfg.lr_scheduler_type, "value", cfg.lr_scheduler_type))
    sft["eval_strategy"] = str(getattr(cfg.eval_strategy, "value", cfg.eval_strategy))
    sft["optim"] = str(getattr(cfg.optim, "value", cfg.optim))
    q = spec.quantization
    backend = ""
    if world_size() > 1:
        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else ""
    params = {
        "base_model": described, "method": spec.method, "attn_implementation": attn, "strategy": opts.strategy,
        "world_size": world_size(), "distributed_backend": backend, "sft": sft,
        "lora": {"r": spec.lora.r, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout,
                 "target_modules": spec.lora.target_modules},
        "quantization": ({"bits": q.bits, "type": q.type, "double_quant": q.double_quant,
                          "compute_dtype": q.compute_dtype} if spec.method == "qlora" else {"bits": 16}),
        "data": {**prepared.stats, "train_uri": spec.dataset.train, "validation_uri": spec.dataset.validation or "",
                 "validation_split": spec.dataset.validation_split if not spec.dataset.validation else ""},
        "model": counts,
        "checkpoint": {"every_steps": spec.checkpoint.every_steps, "keep": spec.checkpoint.keep},
    }
    return flatten("", params)


def _final_metrics(at: Attempt) -> dict[str, Any]:
    m: dict[str, Any] = {}
    tm, em = at.train_metrics, at.eval_metrics
    if tm.get("train_loss") is not None:
        m["train_loss"] = tm["train_loss"]
    if em.get("eval_loss") is not None:
        m["eval_loss"] = em["eval_loss"]
        m["eval_perplexity"] = em["eval_perplexity"]
    rates = [h["tokens_per_second"] for h in at.history if h.get("tokens_per_second")]
    if rates:
        m["tokens_per_second"] = sum(rates) / len(rates)
    if tm.get("train_runtime") is not None:
        m["train_runtime_seconds"] = tm["train_runtime"]
    return m


def run(job: FineTuneJob, opts: RunOptions, preemption: Preemption | None = None) -> tuple[contract.TrainResult, int,
                                                                                           dict[str, Any]]:
    """Run one attempt end to end and write the report. Returns (result, exit code, report)."""
    spec = job.spec
    preemption = preemption or Preemption()
    exporter = ProgressExporter()
    if rank() == 0:
        exporter.start(opts.metrics_port)
    mlf = spec.tracking.mlflow if spec.tracking and spec.tracking.mlflow else None
    described = spec.base_model.uri or spec.base_model.name or ""
    tracker = Tracker(mlf.tracking_uri if mlf and rank() == 0 else None, mlf.experiment if mlf else "llmforge",
                      job_tags(job.metadata, spec.output.uri, described))
    at = Attempt(job=job, opts=opts, preemption=preemption, tracker=tracker, exporter=exporter)
    error: TrainError | None = None
    phase = "Succeeded"
    try:
        execute(at)
        if preemption.requested:
            phase = "Preempted"
    except _Preempted:
        phase = "Preempted"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a result
        error = report_mod.classify(exc, spec)
        phase = "Failed"
        if error.reason == "Error":
            log.exception("training failed")
    finally:
        exporter.stop()
    return finish(at, phase, error)


def finish(at: Attempt, phase: str, error: TrainError | None) -> tuple[contract.TrainResult, int, dict[str, Any]]:
    """Report, MLflow close-out and the TrainResult for any outcome."""
    spec = at.spec
    at.durations["total_seconds"] = round(time.time() - at.started, 3)
    if phase == "Preempted":
        msg = (f"SIGTERM: checkpoint at step {at.checkpoint[0]} saved; the next attempt resumes from it"
               if at.checkpoint else "SIGTERM before the first checkpoint; the next attempt starts over")
        reason = "Preempted"
    elif error is not None:
        msg, reason = error.message, error.reason
        log.error("failed: %s: %s", error.reason, error.message)
    else:
        msg, reason = None, None
    metrics = _final_metrics(at)
    stats = at.data.stats if at.data else None
    report_uri = storage.join(spec.output.uri, "training_report.json")
    ckpt = {"step": at.checkpoint[0], "uri": at.checkpoint[1]} if at.checkpoint else None
    rep = report_mod.build_report(
        phase=phase, reason=reason, message=msg,
        job={k: at.job.metadata.get(k) for k in ("namespace", "name", "uid")},
        step=at.step, total_steps=at.total_steps, resumed_from_step=at.resumed_from,
        preempted_at_step=at.preempted_at_step, checkpoint=ckpt, checkpoints_published=at.checkpoints_published,
        metrics=metrics, final_eval={k: v for k, v in at.eval_metrics.items() if isinstance(v, int | float)},
        train={k: v for k, v in at.train_metrics.items() if isinstance(v, int | float)},
        data=None if at.data is None else {
            **at.data.stats,
            "invalid_examples": [str(i) for i in at.data.issues[:50]],
            "duplicates": at.data.duplicates[:50], "over_length_examples": at.data.over_length[:50]},
        params=at.params, notes=at.notes, durations=at.durations, history=at.history,
        outputs={**at.outputs, "report_uri": report_uri},
        mlflow={"status": at.tracker.status(), "outage": at.tracker.outage()} if at.tracker.enabled else None,
    )
    result_fields: dict[str, Any] = {
        "reason": reason, "message": msg, "step": at.step or None, "total_steps": at.total_steps,
        "resumed_from_step": at.resumed_from, "metrics": metrics or None, "checkpoint": ckpt, "data": stats and {
            k: stats[k] for k in ("format", "train_examples", "validation_examples", "invalid_records",
                                  "duplicates_removed", "over_length")},
        "mlflow": at.tracker.status(),
    }
    if at.main:
        try:
            storage.write_bytes(report_uri, report_mod.dumps_report(rep))
            result_fields["output"] = {**at.outputs, "report_uri": report_uri}
            local = Path(at.opts.work_dir) / "training_report.json"
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(report_mod.dumps_report(rep))
            at.tracker.log_artifact(str(local))
        except Exception as exc:  # noqa: BLE001 - a report failure must not hide the real outcome
            log.warning("report: cannot write %s: %s", report_uri, exc)
            if at.outputs:
                result_fields["output"] = dict(at.outputs)
        if at.tracker.outage():
            log.warning("mlflow: outage during this run: %s", at.tracker.outage())
        at.tracker.end({"Succeeded": "FINISHED", "Preempted": "KILLED"}.get(phase, "FAILED"))
    result = report_mod.make_result(phase, **result_fields)
    return result, report_mod.exit_code(result, error), rep
