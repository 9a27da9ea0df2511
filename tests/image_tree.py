"""An image's source tree without Docker: exactly the files its Dockerfile copies, and a Python that sees only
those (the image-boundary test and the trainer's entrypoint test run code this way).

Two things make "only those" hard on a developer checkout, and both are handled here:

* The venv has an editable install of this repository. setuptools' ``__editable__`` finder sits on
  ``sys.meta_path`` and answers for any ``llmforge.*`` submodule it knows, so a module missing from the copied
  tree would still import from the checkout; a lenient editable install puts the checkout's package roots
  on ``sys.path`` through a .pth file instead. ``ISOLATE`` removes both before anything of ours is imported.
* ``python -c`` and PYTHONPATH add the working directory and the caller's paths; subprocesses run with ``-I``.
"""

from __future__ import annotations

import shlex
import shutil
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Python source run first in the isolated interpreter; then ``isolate(repo, package_roots)``.
ISOLATE = '''
import importlib
import sys
from pathlib import Path


def isolate(repo, package_roots):
    """Forget every way into the checkout `repo`, then import from `package_roots` first."""
    repo = Path(repo).resolve()

    def into_repo(path):
        try:
            return Path(path).resolve().is_relative_to(repo)
        except (TypeError, ValueError, OSError):
            return False

    def editable_into_repo(obj):
        # setuptools' editable finder and its namespace path hook live in a generated module whose MAPPING
        # (package -> source dir) and NAMESPACES name the directories they serve.
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        mapping = getattr(module, "MAPPING", None) or {}
        namespaces = getattr(module, "NAMESPACES", None) or {}
        dirs = [*mapping.values(), *(d for ds in namespaces.values() for d in ds)]
        return any(into_repo(d) for d in dirs)

    assert not any(into_repo(r) for r in package_roots), package_roots
    sys.meta_path[:] = [f for f in sys.meta_path if not editable_into_repo(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not editable_into_repo(h)]
    sys.path[:] = [p for p in sys.path if not into_repo(p or ".")]
    for name in [n for n, m in sys.modules.items() if into_repo(getattr(m, "__file__", None) or "/")]:
        del sys.modules[name]
    sys.path[:0] = [str(r) for r in package_roots]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
'''


def copy_sources(dockerfile: Path) -> list[str]:
    """Repository paths the Dockerfile's ``COPY`` instructions take from the build context, in order.

    ``COPY --from=<stage>`` copies from another stage (not our sources) and pyproject.toml is packaging, not
    code: both are skipped. Each copy must land at its own relative path under WORKDIR, so that copying
    ``src`` to ``<tree>/src`` reproduces the image's layout; an instruction that does otherwise fails here.
    """
    sources: list[str] = []
    for args in _instructions(dockerfile, "COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        *srcs, dest = [w for w in words if not w.startswith("--")]
        srcs = [s for s in srcs if s != "pyproject.toml"]
        if not srcs:
            continue
        assert len(srcs) == 1 and Path(dest) == Path(srcs[0]), f"{dockerfile}: COPY {args} moves files"
        sources.append(srcs[0])
    return sources


def copy_image_tree(dockerfile: Path, dest: Path) -> Path:
    """Copy exactly the Dockerfile's COPY sources from the repository into `dest`, same relative paths."""
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile}: no COPY of our sources"
    for src in sources:
        origin, target = REPO / src, dest / src
        assert origin.exists(), f"{dockerfile}: COPY {src}: no such path in the repository"
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)
    return dest


def package_roots(tree: Path) -> list[Path]:
    """The directories pip installs packages from (pyproject's packages.find ``where``) that the tree has."""
    where = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
    return [tree / w for w in where if (tree / w).is_dir()]


def _instructions(dockerfile: Path, name: str) -> list[str]:
    """Arguments of every `name` instruction, continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            if word.upper() == name:
                out.append(rest.strip())
            buf = ""
    return out
