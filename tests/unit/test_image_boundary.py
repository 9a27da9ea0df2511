"""The images' boundary: every module of the trainer and server packages imports with only the files their
Dockerfile copies (the image package and ``llmforge``'s ``__init__.py`` and ``api/``), and the import contract
that should catch a crossing names every operator module.

This is the check that was missing when ``llmforge_trainer.launch`` imported ``llmforge.estimate``: the image
built, and the trainer died at import (``ModuleNotFoundError``) on every real run. Tests that put the whole
``operator/`` folder on the path, or import through the venv's editable install, cannot see that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.image_tree import ISOLATE, REPO, copy_image_tree, package_roots

IMAGES = [("trainer-image", "llmforge_trainer"), ("server-image", "llmforge_server")]

# Runs in the isolated interpreter: argv = repo, tree, package, package roots...
IMPORT_ALL = ISOLATE + '''
import json
import pkgutil
import traceback

repo, tree, package, *roots = sys.argv[1:]
tree = Path(tree).resolve()
isolate(repo, roots)

import llmforge

# Proof the isolation works: the operator package comes from the copied tree, not the checkout.
assert Path(llmforge.__file__).resolve().is_relative_to(tree), f"llmforge from {llmforge.__file__}"
pkg = importlib.import_module(package)
assert Path(pkg.__file__).resolve().is_relative_to(tree), f"{package} from {pkg.__file__}"

failures = {}


def failed(name):
    failures[name] = traceback.format_exc(limit=-3).strip()


modules = [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".", onerror=failed)]
for name in modules:
    try:
        importlib.import_module(name)
    except BaseException:  # SystemExit or KeyboardInterrupt at import time is a failure too
        failed(name)
ours = [n for n in sys.modules if n.split(".")[0] in ("llmforge", package)]
leaks = [f"{n}: {sys.modules[n].__file__}" for n in ours
         if not Path(getattr(sys.modules[n], "__file__", None) or tree).resolve().is_relative_to(tree)]
print(json.dumps({"modules": modules, "failures": failures, "leaks": leaks, "loaded": ours}))
'''


def import_everything(tree: Path, package: str) -> dict:
    """Import every module of `package` in a fresh interpreter that sees only `tree`; what happened, as JSON."""
    out = subprocess.run(
        [sys.executable, "-I", "-B", "-c", IMPORT_ALL, str(REPO), str(tree), package,
         *map(str, package_roots(tree))],
        capture_output=True, text=True, cwd=tree, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def source_modules(image: str, package: str) -> set[str]:
    """Dotted names of the package's modules in the checkout (what the walk must find)."""
    root = REPO / image
    names = {".".join(p.relative_to(root).with_suffix("").parts) for p in (root / package).rglob("*.py")}
    return {n.removesuffix(".__init__") for n in names} - {package}


@pytest.mark.parametrize(("image", "package"), IMAGES, ids=[i for i, _ in IMAGES])
def test_every_image_module_imports_from_what_the_dockerfile_copies(tmp_path, image, package):
    tree = copy_image_tree(REPO / image / "Dockerfile", tmp_path / "image")
    assert not (tree / "operator" / "llmforge" / "estimate.py").exists()  # the copy is the image's, not the repo

    result = import_everything(tree, package)

    expected = source_modules(image, package)
    assert len(expected) >= 5 and set(result["modules"]) == expected
    assert not result["failures"], "modules that fail to import in the image:\n" + "\n\n".join(
        f"{name}:\n{error}" for name, error in result["failures"].items())
    assert not result["leaks"], result["leaks"]
    assert "llmforge.api" in result["loaded"]  # the image really uses the contract it copies


def test_the_import_contracts_name_every_operator_module_but_the_api():
    """A new top-level operator module is forbidden to the images (and the API) only once it is listed."""
    pkg = REPO / "operator" / "llmforge"
    modules = {p.stem for p in pkg.glob("*.py")} | {p.parent.name for p in pkg.glob("*/__init__.py")}
    others = {f"llmforge.{m}" for m in modules - {"__init__", "api"}}
    assert len(others) >= 10
    contracts = {c["name"]: c for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
                 ["importlinter"]["contracts"]}
    images = contracts["Images use only the API of the operator package"]
    assert set(images["source_modules"]) == {p for _, p in IMAGES}
    assert set(images["forbidden_modules"]) == others
    assert set(contracts["The API imports nothing else of ours"]["forbidden_modules"]) >= others
