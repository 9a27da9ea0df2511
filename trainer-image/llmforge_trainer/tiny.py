"""A tiny Llama and a learnable toy dataset, built locally (no hub), for tests, benchmarks and the demo.

The model is small enough to QLoRA-train on a CPU in seconds, yet real: a ``LlamaForCausalLM`` with a
byte-level BPE tokenizer trained here with ``tokenizers``, ChatML special tokens and a chat template with
``{% generation %}`` markers. Its head dim is 32 (hidden 128, 4 heads, 2 KV heads), which vLLM's CPU
attention accepts, so the trainer, evaluation and serving tiers share one model.

The base is pre-trained for a few hundred steps on generic sentences and on a *copy* chat task, so it
knows the ChatML turn structure and stops at ``<|im_end|>``. The fine-tuning data (``make_records``) asks
*facts* the base never saw (which sound an animal makes, which colour a thing is), with templated
answers, so a few QLoRA steps visibly lower held-out perplexity.

    python -m llmforge_trainer.tiny --out /tmp/tiny-model --data /tmp/tiny-data [--test] [--format chat]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

#: Bump when the recipe changes so cached models are rebuilt.
RECIPE_VERSION = 2

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

#: ChatML with {% generation %} markers around each assistant reply (for assistant-only masks).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

ANIMALS = {
    "cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "sheep": "baa", "pig": "oink",
    "owl": "hoot", "frog": "croak", "horse": "neigh", "lion": "roar", "bee": "buzz", "snake": "hiss",
    "mouse": "squeak", "goat": "bleat", "crow": "caw", "wolf": "howl",
}
THINGS = {
    "sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow", "blood": "red",
    "orange": "orange", "plum": "purple", "lemon": "yellow", "cloud": "grey", "rose": "red", "leaf": "green",
    "sea": "blue", "ash": "grey", "milk": "white", "night": "black",
}
WORDS = sorted({*ANIMALS, *THINGS, "river", "hill", "house", "tree", "road", "stone", "boat", "bird",
                "small", "big", "old", "new", "near", "far", "quick", "slow", "happy", "quiet"})

_SOUND_Q = ["What does the {a} say?", "Which sound does a {a} make?", "Tell me the sound of the {a}.",
            "How does a {a} sound?"]
_COLOR_Q = ["What color is the {t}?", "Which colour has the {t}?", "Tell me the color of the {t}.",
            "How does the {t} look?"]
_SYSTEMS = ["", "You are a helpful assistant.", "Answer briefly."]


def _sound_answer(a: str) -> str:
    return f"The {a} says {ANIMALS[a]}."


def _color_answer(t: str) -> str:
    return f"The {t} is {THINGS[t]}."


def make_qa_pairs(seed: int = 0) -> list[tuple[str, str, str]]:
    """Every (system, question, answer) triple of the fact tasks, shuffled with ``seed``. 3x4x32 = 384 unique."""
    pairs = []
    for system in _SYSTEMS:
        for a in ANIMALS:
            for q in _SOUND_Q:
                pairs.append((system, q.format(a=a), _sound_answer(a)))
        for t in THINGS:
            for q in _COLOR_Q:
                pairs.append((system, q.format(t=t), _color_answer(t)))
    random.Random(seed).shuffle(pairs)
    return pairs


def make_records(n: int, fmt: str = "alpaca", seed: int = 0, offset: int = 0) -> list[dict]:
    """``n`` unique fine-tuning records in a dataset format: alpaca, chat, prompt-completion or text.

    Records ``offset .. offset+n`` of one seeded permutation, so ``make_records(50, offset=300)`` is held out
    from ``make_records(300)``. At most 384 unique records exist.
    """
    pairs = make_qa_pairs(seed)
    if offset + n > len(pairs):
        raise ValueError(f"only {len(pairs)} unique records exist (asked offset {offset} + n {n})")
    out = []
    for system, q, a in pairs[offset:offset + n]:
        if fmt == "alpaca":
            rec = {"instruction": q, "input": "", "output": a}
            if system:
                rec = {"instruction": system, "input": q, "output": a}
            out.append(rec)
        elif fmt == "chat":
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            out.append({"messages": msgs})
        elif fmt == "prompt-completion":
            out.append({"prompt": f"{system}\n{q}".strip(), "completion": a})
        elif fmt == "text":
            out.append({"text": f"{system} {q} {a}".strip()})
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return out


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> Path:
    """Write records one JSON object per line; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


ADJECTIVES = ["small", "big", "old", "new", "quick", "slow", "happy", "quiet"]


def _pretrain_texts(rng: random.Random, n: int) -> list[str]:
    """What the base should know, not the facts: generic sentences, a ChatML copy task, and ChatML answers in
    the fine-tuning tasks' shape ("The X is Y.", "The X says Y.") with *random* Y, so the base learns the form
    and stops at <|im_end|>, while the sound of each animal and the colour of each thing stay unknown."""
    texts = []
    nouns = sorted({*ANIMALS, *THINGS})
    sounds, colors = sorted(set(ANIMALS.values())), sorted(set(THINGS.values()))

    def chat(user: str, reply: str) -> str:
        return f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n{reply}{IM_END}\n"

    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
            texts.append(" ".join(words).capitalize() + ".")
        elif kind < 0.55:
            phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
            texts.append(chat(f"Repeat: {phrase}", phrase))
        elif kind < 0.8:
            w = rng.choice(nouns)
            texts.append(chat(f"Describe the {w}.", f"The {w} is {rng.choice(ADJECTIVES + colors)}."))
        else:
            w = rng.choice(nouns)
            texts.append(chat(f"Say something about the {w}.", f"The {w} says {rng.choice(sounds)}."))
    return texts


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                                   additional_special_tokens=[IM_START])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    return fast


def build_tiny_tokenizer(seed: int = 0):
    """The tiny model's tokenizer alone (no torch needed): byte-level BPE, vocab 512, ChatML, chat template.

    Trained on the pre-training corpus and the fine-tuning text, so the task words are single tokens.
    """
    corpus = _pretrain_texts(random.Random(seed), 4000)
    task_text = [f"{s} {q} {a}" for s, q, a in make_qa_pairs(seed)]
    return _train_tokenizer(corpus + task_text, vocab_size=512)


def _meta(hidden_size: int, pretrain_steps: int, seed: int) -> dict:
    return {"recipe": RECIPE_VERSION, "hidden_size": hidden_size, "pretrain_steps": pretrain_steps, "seed": seed}


def build_tiny_model(out_dir: str | os.PathLike, hidden_size: int = 128, pretrain_steps: int = 200,
                     seed: int = 0) -> Path:
    """Build (or reuse, if ``out_dir`` already holds the same recipe) the tiny model + tokenizer; returns the dir.

    Safe to call from several processes at once: the model is built in a temporary sibling and renamed.
    Deterministic for a given seed. About 10-30 s on 2 CPU cores.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    meta = _meta(hidden_size, pretrain_steps, seed)
    meta_file = out / "tiny_meta.json"
    if meta_file.exists() and json.loads(meta_file.read_text()) == meta:
        return out
    if hidden_size % 4:
        raise ValueError("hidden_size must be a multiple of 4 (4 attention heads)")

    rng = random.Random(seed)
    torch.manual_seed(seed)
    # One thread: this model is too small to gain from more, and on a shared CPU extra threads spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    corpus = _pretrain_texts(rng, 4000)
    tokenizer = build_tiny_tokenizer(seed)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batch = 16
    for step in range(pretrain_steps):
        texts = [corpus[(step * batch + i) % len(corpus)] for i in range(batch)]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False, max_new_tokens=32)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tiny_meta.json").write_text(json.dumps(meta))
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (meta_file.exists() and json.loads(meta_file.read_text()) == meta):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for the model and tokenizer")
    p.add_argument("--data", help="also write train.jsonl (320) / validation.jsonl (64) here")
    p.add_argument("--test", action="store_true",
                   help="with --data: also write test.jsonl, held out from both (288 / 48 / 48 records)")
    p.add_argument("--format", default="alpaca", choices=["alpaca", "chat", "prompt-completion", "text"])
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(build_tiny_model(a.out, a.hidden_size, a.pretrain_steps, a.seed))
    if a.data:
        n_train, n_val = (288, 48) if a.test else (320, 64)
        d = Path(a.data)
        print(write_jsonl(d / "train.jsonl", make_records(n_train, a.format, a.seed)))
        print(write_jsonl(d / "validation.jsonl", make_records(n_val, a.format, a.seed, offset=n_train)))
        if a.test:
            print(write_jsonl(d / "test.jsonl", make_records(48, a.format, a.seed, offset=n_train + n_val)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
