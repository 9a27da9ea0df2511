"""Fixtures for the evaluation tests (ml tier): a LoRA adapter that really learned the toy task.

``eval_adapter_dir`` trains a LoRA adapter on the tiny model with a plain torch loop over the trainer's own
rendering (``data.render``), completion tokens only. It stands in until the trainer's trained-adapter
fixture is merged, and is cached per machine next to the tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.ml import TINY_CACHE

ADAPTER_RECIPE = {"v": 1, "steps": 80, "lr": 3e-3, "r": 8, "batch": 16, "train": 320}


def train_quick_adapter(base_dir: Path, out: Path) -> Path:
    """LoRA on q/k/v/o/gate/up/down, completion-only loss, deterministic; ~10-30 s on one core."""
    meta = out / "eval_adapter_meta.json"
    key = dict(ADAPTER_RECIPE, base=str(base_dir))
    if meta.exists() and json.loads(meta.read_text()) == key:
        return out
    import torch
    from llmforge_trainer import data
    from llmforge_trainer.tiny import make_records
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(base_dir)
    parsed = data.parse_document("train.jsonl", "".join(json.dumps(r) + "\n" for r in
                                                         make_records(ADAPTER_RECIPE["train"], "alpaca")).encode())
    rows = [data.render(ex, tok) for ex in parsed.examples]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=ADAPTER_RECIPE["r"], lora_alpha=16, lora_dropout=0.0,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                      "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ADAPTER_RECIPE["lr"])
    model.train()
    b = ADAPTER_RECIPE["batch"]
    for step in range(ADAPTER_RECIPE["steps"]):
        batch = [rows[(step * b + i) % len(rows)] for i in range(b)]
        seqs, labels = [], []
        for r in batch:
            p = tok(r["prompt"])["input_ids"]
            c = tok(r["completion"], add_special_tokens=False)["input_ids"]
            seqs.append(p + c)
            labels.append([-100] * len(p) + c)
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "eval_adapter_meta.json").write_text(json.dumps(key))
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def eval_adapter_dir(tiny_model_dir) -> Path:
    return train_quick_adapter(tiny_model_dir, TINY_CACHE / f"eval-adapter-v{ADAPTER_RECIPE['v']}")
