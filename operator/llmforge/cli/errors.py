"""One error type for the CLI and the formatter that turns known failures into one line and exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps

import yaml


class CliError(Exception):
    """A failure the user can fix; printed as one line, never a traceback."""


def friendly(fn: Callable[..., int]) -> Callable[..., int]:
    @wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except FileNotFoundError as exc:
            print(f"error: {exc.filename}: no such file", file=sys.stderr)
        except IsADirectoryError as exc:
            print(f"error: {exc.filename}: is a directory", file=sys.stderr)
        except PermissionError as exc:
            print(f"error: {exc.filename}: permission denied", file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        return 1

    return wrapper


def load_documents(paths: list[str]) -> list[tuple[str, object]]:
    """(source, document) for every YAML/JSON document in the files ('-' = stdin); bad YAML is a CliError."""
    out: list[tuple[str, object]] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise CliError(f"{where}: invalid YAML: {problem}") from None
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind", "").endswith("List") and "items" in doc:
                out += [(path, item) for item in doc["items"]]
            else:
                out.append((path, doc))
    return out
