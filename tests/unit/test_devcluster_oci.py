"""oci.single_layer_image writes an OCI image layout archive whose digests, config and layer agree."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from llmforge.devcluster.oci import single_layer_image


def read_archive(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def blob(files, digest):
    data = files[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest  # content-addressed for real
    return data


def test_archive_is_a_consistent_oci_layout(tmp_path):
    exe = tmp_path / "tool"
    exe.write_bytes(b"#!/bin/sh\necho hi\n")
    exe.chmod(0o755)
    out = tmp_path / "img.tar"
    digest = single_layer_image({"/bin/tool": exe, "/etc/motd": b"hello\n"}, out, "localhost/t:1",
                                ["/bin/tool", "-x"], user="10001", symlinks={"/bin/sh": "tool"},
                                dirs=["/tmp", "/data"], env={"MODE": "test"})
    files = read_archive(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/t:1"

    manifest = json.loads(blob(files, digest))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    [layer_desc] = manifest["layers"]
    layer = blob(files, layer_desc["digest"])
    assert layer_desc["size"] == len(layer)
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed: digest is the diff_id
    assert config["config"]["Cmd"] == ["/bin/tool", "-x"]
    assert config["config"]["User"] == "10001"
    assert "MODE=test" in config["config"]["Env"] and any(e.startswith("PATH=") for e in config["config"]["Env"])

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("bin/tool").read() == exe.read_bytes()
        assert tar.extractfile("etc/motd").read() == b"hello\n"
    assert members["bin/tool"].mode == 0o755 and members["etc/motd"].mode == 0o644
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert members["data"].isdir() and members["bin"].isdir() and members["etc"].isdir()
    assert list(members) == sorted(members)  # parents before children
    assert {m.uid for m in members.values()} == {0} and {m.mtime for m in members.values()} == {0}


def test_same_inputs_give_the_same_digest(tmp_path):
    a = single_layer_image({"/f": b"x"}, tmp_path / "a.tar", "localhost/t:1", ["/f"])
    b = single_layer_image({"/f": b"x"}, tmp_path / "b.tar", "localhost/t:1", ["/f"])
    c = single_layer_image({"/f": b"y"}, tmp_path / "c.tar", "localhost/t:1", ["/f"])
    assert a == b != c
