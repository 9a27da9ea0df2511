"""fetch: gs:// directories mirrored into the cache against a real GCS emulator; local paths pass through."""

from __future__ import annotations

import os
import uuid

import pytest

from llmforge_server.fetch import MANIFEST, cache_path, fetch_gcs, parse_gs, planned_path, resolve

FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(3 * 1024 * 1024 + 17),
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def bucket(gcs_client):
    b = gcs_client.create_bucket(f"b-{uuid.uuid4().hex[:12]}")
    for name, data in FILES.items():
        b.blob(f"models/tiny/{name}").upload_from_string(data)
    b.blob("models/tiny/empty-dir/").upload_from_string(b"")  # a console-made "folder" placeholder
    b.blob("models/tiny-2/config.json").upload_from_string(b"{}")  # shares the prefix string, not the dir
    return b


def _tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_fetch_mirrors_the_prefix_and_then_skips(bucket, gcs_client, tmp_path):
    uri = f"gs://{bucket.name}/models/tiny/"
    first = fetch_gcs(uri, tmp_path, client=gcs_client, workers=4)
    assert first.local_dir == str(tmp_path / "gcs" / bucket.name / "models" / "tiny")
    assert sorted(first.downloaded) == sorted(FILES) and first.skipped == []
    assert first.bytes_downloaded == sum(map(len, FILES.values()))
    tree = _tree(first.local_dir)
    assert tree.pop(MANIFEST)
    assert tree == FILES  # exact bytes; no tiny-2 file, no placeholder, no leftover .part files

    inode = os.stat(os.path.join(first.local_dir, "model.safetensors")).st_ino
    again = fetch_gcs(uri, tmp_path, client=gcs_client)
    assert again.downloaded == [] and sorted(again.skipped) == sorted(FILES)
    assert os.stat(os.path.join(first.local_dir, "model.safetensors")).st_ino == inode


def test_fetch_refreshes_changed_removes_deleted_and_repairs_local(bucket, gcs_client, tmp_path):
    uri = f"gs://{bucket.name}/models/tiny"
    local = fetch_gcs(uri, tmp_path, client=gcs_client).local_dir
    # Same size, new content: only the generation tells them apart.
    bucket.blob("models/tiny/config.json").upload_from_string(b'{"model_type": "LLAMA"}')
    bucket.blob("models/tiny/tokenizer/tokenizer.json").delete()
    with open(os.path.join(local, "model.safetensors"), "r+b") as f:
        f.truncate(100)  # a damaged local copy
    report = fetch_gcs(uri, tmp_path, client=gcs_client)
    assert sorted(report.downloaded) == ["config.json", "model.safetensors"]
    assert report.removed == ["tokenizer/tokenizer.json"]
    tree = _tree(local)
    tree.pop(MANIFEST)
    assert tree == {"config.json": b'{"model_type": "LLAMA"}', "model.safetensors": FILES["model.safetensors"]}


def test_many_files_in_parallel(gcs_client, tmp_path):
    b = gcs_client.create_bucket(f"b-{uuid.uuid4().hex[:12]}")
    for i in range(60):
        b.blob(f"shards/part-{i:03d}.bin").upload_from_string(f"shard {i}".encode() * (i + 1))
    local = resolve(f"gs://{b.name}/shards", tmp_path, client=gcs_client, workers=16)
    tree = _tree(local)
    tree.pop(MANIFEST)
    assert len(tree) == 60 and tree["part-059.bin"] == b"shard 59" * 60


def test_default_client_from_emulator_env(bucket, gcs_client, tmp_path):
    """resolve() without a client builds one from STORAGE_EMULATOR_HOST (set by gcs_client)."""
    local = resolve(f"gs://{bucket.name}/models/tiny", tmp_path)
    assert open(os.path.join(local, "config.json"), "rb").read() == FILES["config.json"]


def test_empty_prefix_is_an_error(bucket, gcs_client, tmp_path):
    with pytest.raises(FileNotFoundError, match="no objects"):
        fetch_gcs(f"gs://{bucket.name}/models/absent", tmp_path, client=gcs_client)


def test_local_paths_pass_through(tmp_path):
    assert resolve(str(tmp_path), "/unused") == str(tmp_path)
    assert resolve(f"file://{tmp_path}", "/unused") == str(tmp_path)
    assert planned_path(f"file://{tmp_path}", "/unused") == str(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "absent"), "/unused")
    with pytest.raises(ValueError, match="unsupported scheme"):
        resolve("s3://bucket/model", "/unused")
    with pytest.raises(ValueError, match="host"):
        resolve("file://otherhost/model", "/unused")


def test_gs_uri_parsing():
    assert parse_gs("gs://b/a/b/") == ("b", "a/b")
    assert parse_gs("gs://b") == ("b", "")
    assert str(cache_path("gs://b/a/b/", "/c")) == "/c/gcs/b/a/b"
    for bad in ["gs:///x", "gs://b/a/../etc", "gs://b/a//b", "http://b/a"]:
        with pytest.raises(ValueError):
            parse_gs(bad)
