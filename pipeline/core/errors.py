"""The pipeline's exceptions: one base and a few specific kinds.

Every error a user can cause (a configuration file, a setting, an option, an unreachable or
incomplete service) is a `PipelineError`, so a command reports it as one line. A mistake in a
file is a `ConfigError` naming the file and, where known, the line.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A configuration file (catalog, cleaning, rules, handler config) is invalid.

    The message names the file, the rule or key, the field and, where known, the line.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 rule: str | None = None, field: str | None = None) -> None:
        self.file, self.line, self.rule, self.field = file, line, rule, field
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        what = ""
        if rule:
            what += f"route '{rule}': " if not rule.startswith(("signal ", "key ", "handler ")) else f"{rule}: "
        if field:
            what += f"field '{field}': "
        self.detail = message
        super().__init__(f"{where}{what}{message}")


class InputError(PipelineError, ValueError):
    """A value given to a command or a tool (an option, a fault spec, a policy) is not valid.

    Also a ValueError: it is the wrong value for an argument.
    """


class DecodeError(PipelineError):
    """A Kafka record is not a valid vehicle frame; `reason` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class HandlerError(PipelineError):
    """A function handler failed or ran past its time budget."""

