"""Storage: the same operations on local paths, file:// and gs:// (fake-gcs-server + google-cloud-storage), and
checkpoint atomicity: a checkpoint without a valid marker is never chosen."""

from __future__ import annotations

import json
import uuid

import pytest

from llmforge_trainer import storage
from llmforge_trainer.errors import TrainError


@pytest.fixture(params=["path", "file", "gs"])
def root(request, tmp_path):
    if request.param == "path":
        return str(tmp_path / "out")
    if request.param == "file":
        return (tmp_path / "out").as_uri()
    gcs = request.getfixturevalue("fake_gcs")
    name = f"b-{uuid.uuid4().hex[:10]}"
    gcs.bucket(name)
    storage.reset_client()
    return f"gs://{name}/runs/job-1"


def make_ckpt(tmp_path, step: int, size: int = 100):
    d = tmp_path / f"local-{step}-{size}"
    (d / "sub").mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x" * size)
    (d / "sub" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_parse():
    assert storage.parse("gs://b/a/b") == storage.Location("gs", "b", "a/b")
    assert storage.parse("file:///x/y") == storage.Location("file", "", "/x/y")
    assert storage.parse("/x/y").path == "/x/y"
    with pytest.raises(TrainError):
        storage.parse("s3://b/x")
    with pytest.raises(TrainError):
        storage.parse("gs:///x")
    assert storage.join("gs://b/a/", "/c/", "d") == "gs://b/a/c/d"


def test_bytes_list_and_dir_round_trip(root, tmp_path):
    storage.write_bytes(storage.join(root, "a.txt"), b"hello")
    assert storage.read_bytes(storage.join(root, "a.txt")) == b"hello"
    assert storage.exists(storage.join(root, "a.txt")) and not storage.exists(storage.join(root, "b.txt"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing.txt"))
    src = make_ckpt(tmp_path, 1)
    copied = storage.upload_dir(src, storage.join(root, "d"))
    assert copied == {"adapter_model.safetensors": 100, "sub/trainer_state.json": len('{"global_step": 1}')}
    assert storage.list_files(storage.join(root, "d")) == copied
    assert storage.list_dirs(root) == ["d"]
    back = storage.download_dir(storage.join(root, "d"), tmp_path / "back")
    assert (back / "sub" / "trainer_state.json").read_text() == '{"global_step": 1}'
    storage.delete_dir(storage.join(root, "d"))
    assert storage.list_files(storage.join(root, "d")) == {}


def test_latest_checkpoint_ignores_incomplete_and_corrupt(root, tmp_path):
    assert storage.latest_checkpoint(root) is None
    for step in (4, 8):
        storage.publish_checkpoint(make_ckpt(tmp_path, step), root, step, extra={"mlflow_run_id": "r1"})
    # killed mid-upload: files without a marker
    storage.upload_dir(make_ckpt(tmp_path, 12), storage.checkpoint_uri(root, 12))
    # killed after the marker of an older upload attempt but before a file was rewritten: size mismatch
    storage.publish_checkpoint(make_ckpt(tmp_path, 16), root, 16)
    storage.upload_dir(make_ckpt(tmp_path, 16, size=7), storage.checkpoint_uri(root, 16))
    # a marker that is not JSON
    storage.upload_dir(make_ckpt(tmp_path, 20), storage.checkpoint_uri(root, 20))
    storage.write_bytes(storage.join(storage.checkpoint_uri(root, 20), storage.MARKER), b"{half")
    assert [s for s, _ in storage.complete_checkpoints(root)] == [4, 8]
    step, uri = storage.latest_checkpoint(root)
    assert (step, uri) == (8, storage.checkpoint_uri(root, 8))
    marker = json.loads(storage.read_bytes(storage.join(uri, storage.MARKER)))
    assert marker["mlflow_run_id"] == "r1" and marker["step"] == 8


def test_prune_keeps_newest_complete_and_drops_older_leftovers(root, tmp_path):
    storage.upload_dir(make_ckpt(tmp_path, 2), storage.checkpoint_uri(root, 2))  # incomplete, older
    for step in (4, 8, 12):
        storage.publish_checkpoint(make_ckpt(tmp_path, step), root, step)
    storage.upload_dir(make_ckpt(tmp_path, 16), storage.checkpoint_uri(root, 16))  # incomplete, newer: in flight
    deleted = storage.prune_checkpoints(root, keep=2)
    assert sorted(deleted) == sorted([storage.checkpoint_uri(root, 4), storage.checkpoint_uri(root, 2)])
    assert storage.list_dirs(storage.join(root, "checkpoints")) == ["checkpoint-12", "checkpoint-16", "checkpoint-8"]
    assert [s for s, _ in storage.complete_checkpoints(root)] == [8, 12]
