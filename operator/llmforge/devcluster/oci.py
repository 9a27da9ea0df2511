"""Write a one-layer OCI image archive with the standard library, for images too small to need a builder.

The real node imports images with `ctr images import` instead of pulling from a registry; for tiny images
(the pause container, a busybox for tests) a tarball in the OCI image layout is all it takes:
`oci-layout`, `index.json`, and the config, manifest and layer blobs under `blobs/sha256/`. The layer is
uncompressed, so its digest is also its diff_id. Entries are sorted with mtime 0 and owner 0:0, so the
same inputs give the same digests and re-importing an unchanged image is a no-op.

    single_layer_image({"/pause": Path("pause")}, Path("pause.tar"), "registry.k8s.io/pause:3.10", ["/pause"])
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name.strip("/"))
    ti.type, ti.mode, ti.size, ti.linkname, ti.mtime = kind, mode, size, link, 0
    return ti


def _write_layer(out, files: Mapping[str, Path | bytes], symlinks: Mapping[str, str], dirs: list[str]) -> None:
    """A tar of `files` (a Path keeps its mode bits; bytes get 0644), `symlinks` and `dirs`, parents included."""
    entries: dict[str, tuple[tarfile.TarInfo, Path | bytes | None]] = {}
    for path in [*files, *symlinks, *dirs]:
        for parent in list(Path(path.strip("/")).parents)[:-1]:  # all but "."
            entries.setdefault(str(parent), (_info(str(parent), tarfile.DIRTYPE, 0o755), None))
    for d in dirs:
        entries[d.strip("/")] = (_info(d, tarfile.DIRTYPE, 0o1777 if d.strip("/") == "tmp" else 0o755), None)
    for name, target in symlinks.items():
        entries[name.strip("/")] = (_info(name, tarfile.SYMTYPE, 0o777, link=target), None)
    for name, src in files.items():
        if isinstance(src, bytes):
            entries[name.strip("/")] = (_info(name, tarfile.REGTYPE, 0o644, len(src)), src)
        else:
            st = Path(src).stat()
            entries[name.strip("/")] = (_info(name, tarfile.REGTYPE, st.st_mode & 0o7777, st.st_size), Path(src))
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            info, src = entries[name]
            if src is None:
                tar.addfile(info)
            elif isinstance(src, bytes):
                tar.addfile(info, io.BytesIO(src))
            else:
                with open(src, "rb") as f:
                    tar.addfile(info, f)


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def single_layer_image(files: Mapping[str, Path | bytes], out: Path, ref: str, cmd: list[str],
                       user: str | None = None, *, symlinks: Mapping[str, str] | None = None,
                       dirs: list[str] | None = None, env: Mapping[str, str] | None = None,
                       workdir: str | None = None) -> str:
    """Write an OCI archive of one image named `ref` to `out`; return the manifest digest.

    `files` maps a path in the image to a host file (mode kept) or to content; `symlinks` maps a path to
    its target; `dirs` are empty directories to create (`/tmp` gets mode 1777). `user` is the image's
    default user ("10001" or "10001:10001")."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = _ARCH.get(platform.machine(), platform.machine())
    with tempfile.TemporaryFile(dir=out.parent) as layer:
        _write_layer(layer, files, symlinks or {}, dirs or [])
        layer.seek(0)
        h = hashlib.file_digest(layer, "sha256")
        layer_digest, layer_size = "sha256:" + h.hexdigest(), layer.tell()

        config: dict = {"Env": [f"{k}={v}" for k, v in {"PATH": DEFAULT_PATH, **(env or {})}.items()],
                        "Cmd": list(cmd)}
        if user:
            config["User"] = user
        if workdir:
            config["WorkingDir"] = workdir
        config_digest, config_blob = _blob(json.dumps({
            "architecture": arch, "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }, sort_keys=True).encode())
        manifest_digest, manifest_blob = _blob(json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config_blob)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": layer_size}],
        }, sort_keys=True).encode())
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{
                                "mediaType": MANIFEST_TYPE, "digest": manifest_digest,
                                "size": len(manifest_blob), "platform": {"architecture": arch, "os": "linux"},
                                # containerd names the image after the first; OCI tools read the second.
                                "annotations": {"io.containerd.image.name": ref,
                                                "org.opencontainers.image.ref.name": ref}}]},
                           sort_keys=True).encode()

        with tarfile.open(out, "w") as tar:
            def add(name: str, data: bytes) -> None:
                tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
            add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add("index.json", index)
            add(f"blobs/sha256/{config_digest[7:]}", config_blob)
            add(f"blobs/sha256/{manifest_digest[7:]}", manifest_blob)
            layer.seek(0)
            tar.addfile(_info(f"blobs/sha256/{layer_digest[7:]}", tarfile.REGTYPE, 0o644, layer_size), layer)
    return manifest_digest
