"""The local image builds (llmforge.devcluster.images) are consistent with the Dockerfiles they build."""

from __future__ import annotations

import re

from llmforge.devcluster import images
from llmforge.devcluster.assets import REPO_ROOT


def _args(dockerfile: str) -> set[str]:
    return set(re.findall(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)", (REPO_ROOT / dockerfile).read_text(), re.M))


def test_every_build_arg_is_declared_by_its_dockerfile():
    for image in images.IMAGES:
        undeclared = set(image.build_args) - _args(image.dockerfile)
        assert not undeclared, f"{image.dockerfile} has no ARG {sorted(undeclared)}"


def test_registry_bases_are_all_replaced_by_local_ones():
    """Every FROM resolves to a local image: nothing would be pulled from a registry."""
    for image in images.IMAGES:
        text = (REPO_ROOT / image.dockerfile).read_text()
        defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M)) | image.build_args
        bases = [re.sub(r"\$\{(\w+)\}", lambda m, d=defaults: d[m.group(1)], ref)
                 for ref in re.findall(r"^FROM\s+(\S+)", text, re.M)]
        assert bases, image.dockerfile
        for base in bases:
            assert base.startswith("localhost/llmforge/"), f"{image.dockerfile}: FROM {base} needs a registry"


def test_local_bases_are_built_before_the_images_that_use_them():
    built = {images.BASE}
    for image in images.IMAGES:
        local = {v for v in image.build_args.values() if v.startswith("localhost/")}
        assert local <= built, f"{image.ref} needs {sorted(local - built)} first"
        built.add(image.ref)


def test_bud_command_builds_from_the_repo_with_the_dockerfile_and_no_pull():
    trainer = next(i for i in images.IMAGES if i.ref == images.TRAINER)
    argv = images.bud_argv(trainer)
    assert argv[0] == "buildah" and "bud" in argv and argv[-1] == str(REPO_ROOT)
    assert argv[argv.index("-f") + 1] == str(REPO_ROOT / "trainer-image" / "Dockerfile")
    assert "--pull=never" in argv and "--layers" in argv
    assert f"RUNTIME_IMAGE={images.TORCH}" in argv
