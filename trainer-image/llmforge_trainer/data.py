"""Training data: load, validate, detect the format, dedupe, split, render, and measure against maxSeqLength.

Input: JSONL (one object per line) or JSON (a top-level array of objects), local or gs://. Formats:

==================  =====================================================================================
alpaca              ``{"instruction": str, "input": str (optional), "output": str}``
chat                ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, ending
                    with an assistant reply (the one learned; earlier turns are context)
prompt-completion   ``{"prompt": str, "completion": str}``
text                ``{"text": str}`` (plain language modelling: loss on every token)
==================  =====================================================================================

Every record is normalised to a conversation (or a text), so all formats share one rendering path
(``prompts.render_example``). Every invalid record is reported as ``file:line: reason``. Exact duplicates
(after normalisation) are removed and counted; validation records equal to a training record are removed too.
The train/validation split is deterministic in the seed and independent of record order, with no overlap.
Examples longer than maxSeqLength tokens are reported and dropped, never silently truncated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import prompts, storage
from .errors import TrainError, invalid_input

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "chat", "prompt-completion", "text")
ROLES = ("system", "user", "assistant")
MAX_LISTED = 20


@dataclass(frozen=True)
class Issue:
    """One invalid record: where and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Example:
    """A valid record, normalised: ``messages`` for conversational formats, ``text`` for the text format."""

    file: str
    line: int
    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def key(self) -> str:
        """Identity for de-duplication and splitting: the normalised content, not the location."""
        return json.dumps([self.messages, self.text], ensure_ascii=False)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


# --- reading ---------------------------------------------------------------------------------------------------

def iter_records(name: str, raw: bytes) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line, record, error) for each record of a JSONL or JSON-array document.

    A document whose first non-blank character is ``[`` is a JSON array; anything else is JSONL. In a JSON array
    the line is where the element starts; a syntax error ends the array (nothing after it can be located).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        yield line, None, f"not UTF-8 text (byte {exc.start})"
        return
    if text.startswith("\ufeff"):
        text = text[1:]
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_json_array(text)
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield i, None, f"bad JSON: {exc.msg} (column {exc.colno})"


def _iter_json_array(text: str) -> Iterator[tuple[int, Any, str | None]]:
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)

    def skip_ws(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    while True:
        pos = skip_ws(pos)
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, None, f"bad JSON: {exc.msg} (column {exc.colno}); the rest of the file is unreadable"
            return
        yield line, obj, None
        pos = skip_ws(pos)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        yield line, None, "bad JSON: expected ',' or ']' after an array element; the rest of the file is unreadable"
        return


# --- validation ------------------------------------------------------------------------------------------------

def detect_format(record: Any) -> str | None:
    """The format a record looks like, by its keys; None when it matches none."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    if "text" in record:
        return "text"
    return None


def _need_str(record: dict, key: str, allow_empty: bool = False) -> str:
    if key not in record:
        raise ValueError(f"missing field '{key}'")
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"empty {key}")
    return value


def normalise(record: Any, fmt: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """(messages, text) of a record in format ``fmt``. Raises ValueError with the reason when invalid."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "alpaca":
        instruction = _need_str(record, "instruction")
        extra = _need_str(record, "input", allow_empty=True) if "input" in record and record["input"] is not None \
            else ""
        output = _need_str(record, "output")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return (("user", user), ("assistant", output)), None
    if fmt == "prompt-completion":
        return (("user", _need_str(record, "prompt")), ("assistant", _need_str(record, "completion"))), None
    if fmt == "text":
        return (), _need_str(record, "text")
    if fmt == "chat":
        msgs = record.get("messages")
        if "messages" not in record:
            raise ValueError("missing field 'messages'")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("field 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ValueError(f"messages[{i}] must be an object")
            role = m.get("role")
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} in messages[{i}] (expected one of {', '.join(ROLES)})")
            content = m.get("content")
            if not isinstance(content, str):
                raise ValueError(f"messages[{i}].content must be a string")
            out.append((role, content))
        if out[-1][0] != "assistant":
            raise ValueError("last message must be from the assistant (the reply to learn)")
        if not out[-1][1].strip():
            raise ValueError("empty output (last assistant message)")
        if not any(r == "user" for r, _ in out):
            raise ValueError("no user message")
        return tuple(out), None
    raise ValueError(f"unknown format {fmt!r}")


@dataclass
class Parsed:
    """What one file yielded."""

    examples: list[Example] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    format: str | None = None


def parse_document(name: str, raw: bytes, fmt: str = "auto") -> Parsed:
    """Validate every record of one file. With ``fmt="auto"`` the first record that is a valid instance of some
    format fixes the format for the whole file."""
    out = Parsed(format=None if fmt == "auto" else fmt)
    pending: list[tuple[int, Any]] = []
    first_guess = None
    for line, rec, err in iter_records(name, raw):
        if err:
            out.issues.append(Issue(name, line, err))
            continue
        if out.format is None:
            guess = detect_format(rec)
            first_guess = first_guess or guess
            if guess is not None:
                try:
                    normalise(rec, guess)
                    out.format = guess
                except ValueError:
                    pass
            if out.format is None:
                pending.append((line, rec))
                continue
            for pline, prec in pending:  # records before the first valid one, now judged by the format
                _add(out, name, pline, prec)
            pending.clear()
        _add(out, name, line, rec)
    for pline, prec in pending:  # no valid record at all: judge by the first recognisable one, if any
        if first_guess is None:
            out.issues.append(Issue(name, pline, "no known format (expected alpaca, chat, prompt-completion or "
                                                  "text fields)"))
        else:
            out.format = first_guess
            _add(out, name, pline, prec)
    if pending and first_guess is not None and not out.examples:
        out.format = None  # nothing valid: no format was detected
    out.issues.sort(key=lambda i: i.line)
    out.examples.sort(key=lambda e: e.line)
    return out


def _add(out: Parsed, name: str, line: int, rec: Any) -> None:
    try:
        messages, text = normalise(rec, out.format)
    except ValueError as exc:
        out.issues.append(Issue(name, line, str(exc)))
        return
    out.examples.append(Example(name, line, messages, text))


def read_file(uri: str, fmt: str = "auto") -> Parsed:
    """Read and validate one dataset file (gs://, file:// or a path)."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise invalid_input("DatasetNotFound", f"{uri}: dataset file not found") from exc
    except IsADirectoryError as exc:
        raise invalid_input("DatasetNotFound", f"{uri}: is a directory, expected a JSONL or JSON file") from exc
    except TrainError as exc:
        if "not found" in exc.message:
            raise invalid_input("DatasetNotFound", exc.message) from exc
        raise
    return parse_document(uri, raw, fmt)


# --- dedupe and split ------------------------------------------------------------------------------------------

def dedupe(examples: list[Example], seen: dict[str, Example] | None = None) -> tuple[list[Example], list[tuple[Example, Example]]]:
    """Drop exact duplicates (same normalised content), keeping the first. Returns (kept, [(dropped, original)]).
    ``seen`` lets a second file be deduplicated against the first."""
    seen = dict(seen or {})
    kept, dropped = [], []
    for ex in examples:
        first = seen.get(ex.key)
        if first is not None:
            dropped.append((ex, first))
            continue
        seen[ex.key] = ex
        kept.append(ex)
    return kept, dropped


def split_rank(key: str, seed: int) -> str:
    """Sort key that decides which examples are held out: a hash of the seed and the content."""
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def validation_count(n: int, fraction: float) -> int:
    """How many of ``n`` examples to hold out: round(n x fraction), at least 1 and leaving at least 1."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/validation split: the examples with the smallest ``split_rank`` are held out.
    Same seed and same content give the same split whatever the order; no example is in both."""
    k = validation_count(len(examples), fraction)
    held = set(sorted(range(len(examples)), key=lambda i: split_rank(examples[i].key, seed))[:k])
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val


# --- rendering and length --------------------------------------------------------------------------------------

def render(example: Example, tokenizer: Any) -> dict[str, str]:
    """trl-ready row: {"prompt", "completion"} for conversations, {"text"} for the text format."""
    if example.text is not None:
        return {"text": example.text}
    return prompts.render_example(tokenizer, example.message_dicts())


def token_length(row: dict[str, str], tokenizer: Any) -> int:
    """Tokens trl will train on for this row (EOS included), measured the way trl tokenizes it."""
    eos = tokenizer.eos_token or ""
    if "text" in row:
        text = row["text"] if row["text"].endswith(eos) else row["text"] + eos
    else:
        completion = row["completion"] if row["completion"].endswith(eos) else row["completion"] + eos
        text = row["prompt"] + completion
    return len(tokenizer(text)["input_ids"])


# --- the whole pipeline ----------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """Rendered rows ready for trl, and everything the report needs to say about the data."""

    format: str
    train: list[dict[str, str]]
    validation: list[dict[str, str]]
    stats: dict[str, Any]
    issues: list[Issue]
    duplicates: list[str]
    over_length: list[str]


def _fail_listing(issues: list[Issue], total_records: int) -> TrainError:
    lines = [str(i) for i in issues[:MAX_LISTED]]
    more = f"\n... and {len(issues) - MAX_LISTED} more" if len(issues) > MAX_LISTED else ""
    return invalid_input(
        "InvalidData",
        f"{len(issues)} invalid record(s) of {total_records} (set dataset.onInvalidRecord: skip to drop them):\n"
        + "\n".join(lines) + more)


def prepare(dataset_spec: Any, tokenizer: Any, max_seq_length: int, seed: int,
            on_progress: Callable[[str], None] | None = None) -> Prepared:
    """Load, validate, dedupe, split and render the data of a ``DatasetSpec``; count over-length examples."""
    say = on_progress or log.info
    train_p = read_file(dataset_spec.train, dataset_spec.format)
    fmt = train_p.format
    if fmt is None:
        if not train_p.issues:
            raise invalid_input("InvalidData", f"{dataset_spec.train}: no records")
        raise _fail_listing(train_p.issues, len(train_p.issues))
    say(f"data: format {fmt} ({'detected' if dataset_spec.format == 'auto' else 'declared'}) "
        f"from {dataset_spec.train}")
    val_p = read_file(dataset_spec.validation, fmt) if dataset_spec.validation else Parsed(format=fmt)
    issues = train_p.issues + val_p.issues
    total = len(train_p.examples) + len(val_p.examples) + len(issues)
    if issues:
        if dataset_spec.on_invalid_record == "fail":
            raise _fail_listing(issues, total)
        say(f"data: skipped {len(issues)} invalid record(s); first: {issues[0]}")

    train_ex, dup_train = dedupe(train_p.examples)
    if dataset_spec.validation:
        val_ex, dup_val = dedupe(val_p.examples, seen={e.key: e for e in train_ex})
    else:
        train_ex, val_ex = split(train_ex, dataset_spec.validation_split, seed)
        dup_val = []
    dups = dup_train + dup_val
    duplicates = [f"{d.where} duplicates {o.where}" for d, o in dups]
    if dups:
        say(f"data: removed {len(dups)} exact duplicate(s); first: {duplicates[0]}")

    over: list[str] = []

    def render_all(exs: list[Example]) -> list[dict[str, str]]:
        rows = []
        for ex in exs:
            row = render(ex, tokenizer)
            n = token_length(row, tokenizer)
            if n > max_seq_length:
                over.append(f"{ex.where}: {n} tokens > maxSeqLength {max_seq_length}")
                continue
            rows.append(row)
        return rows

    train_rows, val_rows = render_all(train_ex), render_all(val_ex)
    if over:
        say(f"data: {len(over)} example(s) longer than maxSeqLength={max_seq_length} dropped, not truncated; "
            f"first: {over[0]}")
    if not train_rows:
        raise invalid_input("InvalidData", f"no training examples left of {total} record(s) "
                            f"({len(issues)} invalid, {len(dups)} duplicate, {len(over)} over maxSeqLength)")
    stats = {
        "format": fmt, "train_examples": len(train_rows), "validation_examples": len(val_rows),
        "invalid_records": len(issues), "duplicates_removed": len(dups), "over_length": len(over),
        "records_read": total,
    }
    say(f"data: {len(train_rows)} train / {len(val_rows)} validation examples "
        f"({len(issues)} invalid, {len(dups)} duplicates, {len(over)} over length)")
    return Prepared(fmt, train_rows, val_rows, stats, issues, duplicates, over)
