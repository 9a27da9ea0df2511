"""The guarantees we add to trl's training loop, as transformers callbacks over one `Attempt`:

- ``ProgressCallback``: Prometheus gauges + one human line per logging step, MLflow metrics (loss, eval_loss,
  eval_perplexity = exp(eval_loss), learning rate, grad norm, tokens/s, GPU memory), and the NaN/inf guard
  (``LossDiverged`` with advice).
- ``PreemptionCallback``: after SIGTERM, finish the current step, save a checkpoint, stop (exit
  ``contract.EXIT_PREEMPTED``). Under DDP the flag is all-reduced so every rank stops at the same step.
- ``CheckpointCallback``: publish each checkpoint trl/transformers writes to local scratch to
  ``<output>/checkpoints/checkpoint-N/`` with a completion marker, then prune to ``checkpoint.keep``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from . import model as model_mod
from . import report as report_mod
from . import storage
from .attempt import Attempt, world_size
from .progress import eta_seconds, format_line

log = logging.getLogger("llmforge.train")


def callbacks():
    """TrainerCallback subclasses, defined lazily so importing this module does not import transformers."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self, at: Attempt):
            self.at = at

        def on_train_begin(self, args, state, control, **kwargs):
            at = self.at
            at.total_steps = state.max_steps
            at.start_step = state.global_step
            at.train_started = time.time()
            at._tok_mark = (time.monotonic(), state.num_input_tokens_seen)
            at.exporter.set(total_steps=state.max_steps, step=state.global_step, epoch=state.epoch or 0.0)
            if at.main:
                log.info("training: %d optimizer steps planned, starting at step %d%s", state.max_steps,
                         state.global_step, f" (resumed from checkpoint-{at.resumed_from})" if at.resumed_from
                         else "")

        def on_log(self, args, state, control, logs=None, **kwargs):
            import torch

            at = self.at
            logs = dict(logs or {})
            values: dict[str, Any] = {}
            if "train_loss" in logs:  # the end-of-training summary
                if at.main:
                    log.info("training done: %d steps, mean loss %.4f, %.1fs", state.global_step,
                             float(logs["train_loss"]), float(logs.get("train_runtime", 0.0)))
                return
            if "loss" in logs:
                values["loss"] = float(logs["loss"])
                now, tokens = time.monotonic(), state.num_input_tokens_seen
                if at._tok_mark and now > at._tok_mark[0] and tokens >= at._tok_mark[1]:
                    values["tokens_per_second"] = (tokens - at._tok_mark[1]) / (now - at._tok_mark[0])
                at._tok_mark = (now, tokens)
            for key in ("learning_rate", "grad_norm", "mean_token_accuracy", "entropy", "eval_loss",
                        "eval_mean_token_accuracy"):
                if isinstance(logs.get(key), int | float):
                    values[key] = float(logs[key])
            if "eval_loss" in values:
                values["eval_perplexity"] = report_mod.perplexity(values["eval_loss"])
            if torch.cuda.is_available():
                values["gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            values["epoch"] = float(state.epoch or 0.0)
            step = state.global_step
            at.step, at.epoch = step, state.epoch
            at.last.update(values)
            at.history.append({"step": step, **values})
            at.exporter.set(step=step, epoch=values["epoch"], loss=values.get("loss"),
                            tokens_per_second=values.get("tokens_per_second"),
                            learning_rate=values.get("learning_rate"))
            if at.main:
                at.tracker.log_metrics(values, step)
                elapsed = time.time() - (at.train_started or time.time())
                log.info("%s", format_line(step, state.max_steps, values,
                                           eta_seconds(step, state.max_steps, elapsed, at.start_step)))
            for key in ("loss", "eval_loss", "grad_norm"):
                v = values.get(key)
                if v is not None and not math.isfinite(v):
                    raise report_mod.loss_diverged(step, v, at.spec)

    class PreemptionCallback(TrainerCallback):
        def __init__(self, at: Attempt):
            self.at = at

        def _flag(self) -> bool:
            requested = self.at.preemption.requested
            if world_size() > 1:
                import torch
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    t = torch.tensor([1 if requested else 0], dtype=torch.int64,
                                     device="cuda" if torch.cuda.is_available() else "cpu")
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                    requested = bool(t.item())
            return requested

        def on_step_end(self, args, state, control, **kwargs):
            if self._flag():
                self.at.preempted_at_step = state.global_step
                control.should_save = True
                control.should_training_stop = True
                control.should_evaluate = False  # the grace period is for the checkpoint

        def on_epoch_end(self, args, state, control, **kwargs):
            if self.at.preempted_at_step is not None:
                control.should_evaluate = False

    class CheckpointCallback(TrainerCallback):
        def __init__(self, at: Attempt):
            self.at = at

        def on_save(self, args, state, control, model=None, **kwargs):
            at = self.at
            step = state.global_step
            if model is not None:
                model_mod.require_finite_adapter(model, step)
            if not at.main:
                return
            local = Path(args.output_dir) / f"checkpoint-{step}"
            if not local.is_dir():
                log.warning("checkpoint: %s was not written; nothing to publish", local)
                return
            t0 = time.time()
            uri = storage.publish_checkpoint(local, at.spec.output.uri, step,
                                             extra={"mlflow_run_id": at.tracker.run_id})
            storage.prune_checkpoints(at.spec.output.uri, at.spec.checkpoint.keep)
            at.checkpoint = (step, uri)
            at.checkpoints_published.append(step)
            at.durations["checkpoint_upload_seconds"] = round(
                at.durations.get("checkpoint_upload_seconds", 0.0) + time.time() - t0, 3)
            at.exporter.set(checkpoint_step=step)
            at.tracker.set_tag("llmforge.checkpoint", uri)
            log.info("checkpoint: step %d published to %s", step, uri)

    return ProgressCallback, PreemptionCallback, CheckpointCallback
