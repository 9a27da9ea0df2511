"""Render conversations into the exact strings the model trains on and is evaluated with.

Training and evaluation both call ``render_prompt``: a prompt seen at evaluation is byte-for-byte the prompt
seen in training. With a chat template (the tokenizer's own) the prompt is the template applied to every
message but the last, with the generation prompt; the completion is what the template adds for the final
assistant message. It ends with the end-of-turn token, so trl does not append another EOS.

**Fallback for base models without a chat template** (documented in docs/trainer.md)::

    ### System:
    {system}

    ### User:
    {user}

    ### Assistant:
    {assistant}{eos_token}

The prompt is everything up to and including ``### Assistant:\\n``; the completion is the reply plus EOS.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]

FALLBACK_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _strip_auto_bos(tokenizer: Any, text: str) -> str:
    """Templates such as Llama 3's write the BOS token; the tokenizer adds it again. Keep only one."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        ids = tokenizer("", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            return text[len(bos):]
    return text


def _fallback(messages: list[Message], add_generation_prompt: bool, eos: str) -> str:
    parts = []
    for m in messages:
        end = eos if m["role"] == "assistant" else ""
        parts.append(f"{FALLBACK_HEADERS[m['role']]}{m['content']}{end}\n\n")
    if add_generation_prompt:
        parts.append(FALLBACK_HEADERS["assistant"])
    return "".join(parts)


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt for the next assistant turn after ``messages`` (which must not end with an assistant turn)."""
    if messages and messages[-1]["role"] == "assistant":
        raise ValueError("render_prompt: the conversation already ends with an assistant reply")
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _strip_auto_bos(tokenizer, text)
    return _fallback(messages, add_generation_prompt=True, eos=tokenizer.eos_token or "")


def render_example(tokenizer: Any, messages: list[Message]) -> dict[str, str]:
    """``{"prompt", "completion"}`` for a conversation ending with the assistant reply to learn."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("render_example: the conversation must end with an assistant reply")
    eos = tokenizer.eos_token or ""
    prompt = render_prompt(tokenizer, messages[:-1])
    if has_chat_template(tokenizer):
        full = _strip_auto_bos(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))
        completion = full[len(prompt):] if full.startswith(prompt) else messages[-1]["content"] + eos
    else:
        completion = messages[-1]["content"] + eos
    # The template's trailing newline after the end-of-turn token is not part of the reply; without it trl
    # sees the completion already ends with EOS and does not append a second one.
    stripped = completion.rstrip()
    if eos and stripped.endswith(eos):
        completion = stripped
    return {"prompt": prompt, "completion": completion}


def split_reference(messages: list[Message]) -> tuple[list[Message], str]:
    """(context, reference reply) for evaluation: the last assistant message is the reference."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("split_reference: the conversation must end with an assistant reply")
    return messages[:-1], messages[-1]["content"]
