"""Files at gs://, file:// and plain local paths, and atomic checkpoints on top of them.

One small interface (read/write bytes, list, copy a directory up or down, delete) over two backends: the local
filesystem and Google Cloud Storage through google-cloud-storage (Workload Identity in GKE; with
``STORAGE_EMULATOR_HOST`` set, anonymous credentials against an emulator).

Checkpoints are published with a **completion marker**: every file of ``checkpoints/checkpoint-<step>/`` is
written first, then ``_COMPLETE.json`` listing each file and its size. ``latest_checkpoint`` only considers
checkpoints whose marker exists and whose listed files all exist with those sizes, so a checkpoint half-written
when a pod was killed is never chosen. GCS has no rename, so this is the only atomicity both backends share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import TrainError

MARKER = "_COMPLETE.json"
CHECKPOINTS = "checkpoints"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is "gs" or "file"; ``bucket`` is set for gs; ``path`` has no leading slash for gs."""

    scheme: str
    bucket: str
    path: str

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.path}" if self.scheme == "gs" else self.path


def parse(uri: str) -> Location:
    """Parse gs://bucket/key, file:///abs/path or a plain path."""
    if uri.startswith("gs://"):
        rest = uri[5:]
        bucket, _, path = rest.partition("/")
        if not bucket:
            raise TrainError("InvalidSpec", f"{uri}: no bucket in gs:// URI")
        return Location("gs", bucket, path)
    if uri.startswith("file://"):
        return Location("file", "", os.path.abspath(uri[7:]))
    if "://" in uri:
        raise TrainError("InvalidSpec", f"{uri}: unsupported scheme (use gs://, file:// or a path)")
    return Location("file", "", os.path.abspath(uri))


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI with exactly one slash between them."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_remote(uri: str) -> bool:
    return parse(uri).scheme == "gs"


_client = None


def gcs_client():
    """A shared google-cloud-storage client: anonymous against an emulator, default credentials otherwise."""
    global _client
    if _client is None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                                     credentials=AnonymousCredentials())
        else:
            _client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    return _client


def reset_client() -> None:
    """Forget the cached client (tests switch emulators)."""
    global _client
    _client = None


def _gcs_error(op: str, uri: str, exc: Exception) -> TrainError:
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.NotFound):
        return TrainError("StorageError", f"{uri}: not found ({op})")
    if isinstance(exc, gexc.Forbidden):
        return TrainError("StorageError", f"{uri}: permission denied ({op}); check the pod's service account "
                          "(Workload Identity) has storage access to the bucket")
    return TrainError("StorageError", f"{uri}: {op} failed: {exc}")


def exists(uri: str) -> bool:
    loc = parse(uri)
    if loc.scheme == "file":
        return os.path.exists(loc.path)
    try:
        return gcs_client().bucket(loc.bucket).blob(loc.path).exists()
    except Exception as exc:  # noqa: BLE001 - mapped to a clear reason
        raise _gcs_error("exists", uri, exc) from exc


def read_bytes(uri: str) -> bytes:
    """The whole object/file. Raises FileNotFoundError when it does not exist."""
    loc = parse(uri)
    if loc.scheme == "file":
        return Path(loc.path).read_bytes()
    from google.api_core.exceptions import NotFound

    try:
        return gcs_client().bucket(loc.bucket).blob(loc.path).download_as_bytes()
    except NotFound as exc:
        raise FileNotFoundError(uri) from exc
    except Exception as exc:  # noqa: BLE001
        raise _gcs_error("read", uri, exc) from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object/file; local writes go through a temporary file and a rename."""
    loc = parse(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    try:
        gcs_client().bucket(loc.bucket).blob(loc.path).upload_from_string(data)
    except Exception as exc:  # noqa: BLE001
        raise _gcs_error("write", uri, exc) from exc


def list_files(uri: str) -> dict[str, int]:
    """Every file under a directory/prefix, as {relative path: size}. Empty when nothing is there."""
    loc = parse(uri)
    if loc.scheme == "file":
        root = Path(loc.path)
        if not root.is_dir():
            return {}
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    prefix = loc.path.rstrip("/") + "/" if loc.path.strip("/") else ""
    try:
        return {b.name[len(prefix):]: b.size for b in gcs_client().list_blobs(loc.bucket, prefix=prefix)}
    except Exception as exc:  # noqa: BLE001
        raise _gcs_error("list", uri, exc) from exc


def list_dirs(uri: str) -> list[str]:
    """Immediate sub-directory names (prefixes) under a directory/prefix."""
    loc = parse(uri)
    if loc.scheme == "file":
        root = Path(loc.path)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    prefix = loc.path.rstrip("/") + "/" if loc.path.strip("/") else ""
    try:
        it = gcs_client().list_blobs(loc.bucket, prefix=prefix, delimiter="/")
        list(it)  # the prefixes are filled while iterating
        return sorted(p[len(prefix):].rstrip("/") for p in it.prefixes)
    except Exception as exc:  # noqa: BLE001
        raise _gcs_error("list", uri, exc) from exc


def upload_dir(local_dir: str | os.PathLike, uri: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Copy every file under ``local_dir`` to ``uri``; returns {relative path: size} of what was copied."""
    root = Path(local_dir)
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
             if p.is_file() and p.name not in skip}
    loc = parse(uri)
    for rel in files:
        if loc.scheme == "file":
            dst = Path(loc.path) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dst)
        else:
            try:
                gcs_client().bucket(loc.bucket).blob(f"{loc.path.rstrip('/')}/{rel}").upload_from_filename(
                    str(root / rel))
            except Exception as exc:  # noqa: BLE001
                raise _gcs_error("upload", join(uri, rel), exc) from exc
    return files


def download_dir(uri: str, local_dir: str | os.PathLike) -> Path:
    """Copy every file under ``uri`` into ``local_dir``; returns ``local_dir``."""
    dst = Path(local_dir)
    dst.mkdir(parents=True, exist_ok=True)
    loc = parse(uri)
    for rel in list_files(uri):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if loc.scheme == "file":
            shutil.copyfile(Path(loc.path) / rel, dst / rel)
        else:
            try:
                gcs_client().bucket(loc.bucket).blob(f"{loc.path.rstrip('/')}/{rel}").download_to_filename(
                    str(dst / rel))
            except Exception as exc:  # noqa: BLE001
                raise _gcs_error("download", join(uri, rel), exc) from exc
    return dst


def delete_dir(uri: str) -> None:
    """Delete everything under a directory/prefix."""
    loc = parse(uri)
    if loc.scheme == "file":
        shutil.rmtree(loc.path, ignore_errors=True)
        return
    try:
        for b in list(gcs_client().list_blobs(loc.bucket, prefix=loc.path.rstrip("/") + "/")):
            b.delete()
    except Exception as exc:  # noqa: BLE001
        raise _gcs_error("delete", uri, exc) from exc


def local_copy(uri: str, scratch: str | os.PathLike) -> Path:
    """A local directory with the content of ``uri``: the path itself when local, else a download."""
    loc = parse(uri)
    if loc.scheme == "file":
        return Path(loc.path)
    return download_dir(uri, Path(scratch))


# --- checkpoints ---------------------------------------------------------------------------------------------

def checkpoint_uri(output_uri: str, step: int) -> str:
    return join(output_uri, CHECKPOINTS, f"checkpoint-{step}")


def publish_checkpoint(local_dir: str | os.PathLike, output_uri: str, step: int,
                       extra: dict | None = None) -> str:
    """Copy a local checkpoint to ``<output>/checkpoints/checkpoint-<step>/``, marker last. Returns its URI.
    ``extra`` (e.g. the MLflow run id) is recorded in the marker."""
    dst = checkpoint_uri(output_uri, step)
    files = upload_dir(local_dir, dst, skip=(MARKER,))
    if not files:
        raise TrainError("StorageError", f"{local_dir}: empty checkpoint, nothing to publish")
    marker = {**(extra or {}), "step": step, "files": files}
    write_bytes(join(dst, MARKER), json.dumps(marker, sort_keys=True).encode())
    return dst


def complete_checkpoints(output_uri: str) -> list[tuple[int, str]]:
    """[(step, uri)] of checkpoints whose marker exists and whose files all match it, oldest first."""
    root = join(output_uri, CHECKPOINTS)
    out = []
    for name in list_dirs(root):
        m = _CKPT_RE.match(name)
        if not m:
            continue
        uri = join(root, name)
        files = list_files(uri)
        if MARKER not in files:
            continue
        try:
            manifest = json.loads(read_bytes(join(uri, MARKER)))
        except (ValueError, FileNotFoundError):
            continue
        listed = manifest.get("files") or {}
        if listed and all(files.get(rel) == size for rel, size in listed.items()):
            out.append((int(m.group(1)), uri))
    return sorted(out)


def latest_checkpoint(output_uri: str) -> tuple[int, str] | None:
    """(step, uri) of the newest complete checkpoint, or None."""
    done = complete_checkpoints(output_uri)
    return done[-1] if done else None


def prune_checkpoints(output_uri: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` complete checkpoints, and incomplete ones older than the newest
    complete one (leftovers of killed uploads). The marker goes first, so a half-deleted checkpoint is never
    mistaken for complete. Returns the deleted URIs."""
    done = complete_checkpoints(output_uri)
    newest = done[-1][0] if done else None
    doomed = [uri for _, uri in done[:-keep]] if keep > 0 else [uri for _, uri in done]
    complete_uris = {u for _, u in done}
    root = join(output_uri, CHECKPOINTS)
    for name in list_dirs(root):
        m = _CKPT_RE.match(name)
        uri = join(root, name)
        if m and uri not in complete_uris and newest is not None and int(m.group(1)) < newest:
            doomed.append(uri)
    for uri in doomed:
        loc = parse(join(uri, MARKER))
        if loc.scheme == "file":
            Path(loc.path).unlink(missing_ok=True)
        elif exists(str(loc)):
            gcs_client().bucket(loc.bucket).blob(loc.path).delete()
        delete_dir(uri)
    return doomed
