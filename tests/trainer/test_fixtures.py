"""The shared fixtures do what they say: the tiny model is servable-shaped, the services answer."""

from __future__ import annotations

import json
import urllib.request

import pytest


@pytest.mark.ml
def test_tiny_model_shape_and_template(tiny_model_dir):
    from transformers import AutoTokenizer

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 32  # vLLM CPU attention needs head_dim 32/64/...
    assert (cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (2, 2)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert 256 < len(tok) <= 512
    assert "{% generation %}" in tok.chat_template
    out = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "yo<|im_end|>"


def test_tiny_records_unique_and_held_out():
    from llmforge_trainer.tiny import make_records

    train, held = make_records(320), make_records(64, offset=320)
    keys = {json.dumps(r, sort_keys=True) for r in train}
    assert len(keys) == 320
    assert not keys & {json.dumps(r, sort_keys=True) for r in held}
    with pytest.raises(ValueError):
        make_records(400)


def test_mlflow_server_answers(mlflow_server):
    with urllib.request.urlopen(f"{mlflow_server.uri}/health", timeout=5) as r:
        assert r.status == 200
    exp = mlflow_server.client().create_experiment("fixture-check")
    assert mlflow_server.client().get_experiment(exp).name == "fixture-check"


def test_fake_gcs_round_trip(fake_gcs):
    bucket = fake_gcs.bucket("fixture-check")
    bucket.blob("a/b.txt").upload_from_string(b"hello")
    assert fake_gcs.client().bucket("fixture-check").blob("a/b.txt").download_as_bytes() == b"hello"
    assert [b.name for b in fake_gcs.client().list_blobs("fixture-check", prefix="a/")] == ["a/b.txt"]
