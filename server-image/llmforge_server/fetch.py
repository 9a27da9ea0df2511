"""Resolve model and adapter locations to local directories vLLM can read.

- ``gs://bucket/prefix`` is downloaded with google-cloud-storage into
  ``<cache_dir>/gcs/<bucket>/<prefix>``, files in parallel. A manifest in that directory records each
  file's size and GCS generation, so a restart (or a second variant on the same volume) skips files
  already there and fetches only what changed; files that vanished from the prefix are removed.
  Each file is written to a temporary name and renamed, so a crash never leaves a truncated file.
- ``file:///path`` and ``/path`` pass through (they must exist).

Credentials are the pod's (Workload Identity); ``STORAGE_EMULATOR_HOST`` points the client at an
emulator in tests.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

MANIFEST = ".llmforge-fetch.json"


@dataclass
class FetchReport:
    """What one gs:// fetch did."""

    local_dir: str
    downloaded: list[str]
    skipped: list[str]
    removed: list[str]
    bytes_downloaded: int


def parse_gs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b/`` -> ("bucket", "a/b"). The prefix is a directory: no leading/trailing '/'."""
    parsed = urlparse(uri)
    if parsed.scheme != "gs" or not parsed.netloc:
        raise ValueError(f"not a gs:// URI: {uri!r}")
    prefix = parsed.path.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ValueError(f"bad path in {uri!r}")
    return parsed.netloc, prefix


def cache_path(uri: str, cache_dir: str | os.PathLike) -> Path:
    """Where a gs:// directory lands in the cache (pure)."""
    bucket, prefix = parse_gs(uri)
    return Path(cache_dir, "gcs", bucket, *(p for p in prefix.split("/") if p))


def local_path(uri: str) -> str | None:
    """The local directory of a file:// or plain path, or None for gs://."""
    if uri.startswith("gs://"):
        return None
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a host is not local: {uri!r}")
        return unquote(parsed.path)
    if "://" in uri:
        raise ValueError(f"unsupported scheme in {uri!r} (use gs://, file:// or a path)")
    return uri


def planned_path(uri: str, cache_dir: str | os.PathLike) -> str:
    """Where ``resolve`` will put ``uri``, without touching anything (for --dry-run)."""
    path = local_path(uri)
    return str(cache_path(uri, cache_dir)) if path is None else path


def make_client():
    """A storage client: the pod's credentials, or anonymous against STORAGE_EMULATOR_HOST."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get("GOOGLE_CLOUD_PROJECT"):
        return storage.Client(project="llmforge-local")
    return storage.Client()


def resolve(uri: str, cache_dir: str | os.PathLike, *, client=None, workers: int = 8) -> str:
    """A local directory holding ``uri``'s files (downloading gs:// as needed)."""
    path = local_path(uri)
    if path is not None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{uri}: no such directory")
        return path
    return fetch_gcs(uri, cache_dir, client=client, workers=workers).local_dir


def _read_manifest(dest: Path) -> dict[str, dict]:
    try:
        data = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(dest: Path, manifest: dict[str, dict]) -> None:
    tmp = dest / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, dest / MANIFEST)


def fetch_gcs(uri: str, cache_dir: str | os.PathLike, *, client=None, workers: int = 8) -> FetchReport:
    """Mirror every object under a gs:// prefix into the cache; see the module docstring."""
    bucket_name, prefix = parse_gs(uri)
    dest = cache_path(uri, cache_dir)
    client = client or make_client()
    list_prefix = f"{prefix}/" if prefix else ""
    blobs = {}
    for blob in client.list_blobs(bucket_name, prefix=list_prefix):
        rel = blob.name[len(list_prefix):]
        if not rel or rel.endswith("/"):  # directory placeholders
            continue
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or rel == MANIFEST:
            raise ValueError(f"refusing object name {blob.name!r} under {uri}")
        blobs[rel] = blob
    if not blobs:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")

    dest.mkdir(parents=True, exist_ok=True)
    old = _read_manifest(dest)
    manifest: dict[str, dict] = {}
    todo, skipped = [], []
    for rel, blob in sorted(blobs.items()):
        entry = {"size": blob.size, "generation": blob.generation}
        target = dest / rel
        if old.get(rel) == entry and target.is_file() and target.stat().st_size == blob.size:
            manifest[rel] = entry
            skipped.append(rel)
        else:
            todo.append((rel, blob, entry))

    removed = []
    for rel in sorted(set(old) - set(blobs)):
        target = dest / rel
        if target.is_file():
            target.unlink()
            removed.append(rel)

    def download(item):
        rel, blob, entry = item
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
        try:
            # Pin the generation we listed: an object replaced mid-fetch fails instead of mixing versions.
            blob.download_to_filename(str(tmp), if_generation_match=blob.generation)
            if tmp.stat().st_size != blob.size:
                raise OSError(f"gs://{bucket_name}/{blob.name}: got {tmp.stat().st_size} bytes, "
                              f"expected {blob.size}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return rel, entry

    downloaded, nbytes = [], 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for rel, entry in pool.map(download, todo):
                manifest[rel] = entry
                downloaded.append(rel)
                nbytes += entry["size"] or 0
    finally:
        # Record what is complete even if a download failed, so a retry resumes.
        _write_manifest(dest, manifest)
    return FetchReport(str(dest), downloaded, skipped, removed, nbytes)
