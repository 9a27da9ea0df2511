"""One error type for every way a training run can fail, with a contract reason and an actionable message.

``TrainError(reason, message)`` is raised anywhere in the trainer; ``cli.main`` turns it into a
``contract.TrainResult`` (phase Failed) and an exit code. ``reason`` is a ``contract.FailureReason``.
"""

from __future__ import annotations

from llmforge.api import contract


class TrainError(Exception):
    """A failure with a machine-readable reason (``contract.FailureReason``) and a message a person can act on."""

    def __init__(self, reason: str, message: str, exit_code: int = contract.EXIT_FAILED):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.exit_code = exit_code


def invalid_input(reason: str, message: str) -> TrainError:
    """A failure caused by what the user gave us (spec, data, model): exit code EXIT_INVALID_INPUT."""
    return TrainError(reason, message, exit_code=contract.EXIT_INVALID_INPUT)
