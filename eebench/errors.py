"""User-facing errors of the harness.

Every error a user can cause or fix is an :class:`EEBenchError`. Its message is one line that
says what went wrong and what to do; the CLI prints it as ``error: <message>`` and exits with
:attr:`EEBenchError.exit_code` (2 for bad input, 1 for a run that failed).
"""
from __future__ import annotations


class EEBenchError(Exception):
    """Base class: a one-line, actionable error. ``exit_code`` is the CLI's exit status."""

    exit_code = 1


class UsageError(EEBenchError):
    """Bad input: an unknown name, a malformed option or config file (exit status 2)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A method, dataset, backbone or parameter name that is not registered.

    The message names the valid choices and, where one is close, a "did you mean".
    """

    def __init__(self, kind: str, name: str, valid: list[str], suggestion: str | None = None):
        self.kind, self.name, self.valid, self.suggestion = kind, name, list(valid), suggestion
        hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
        super().__init__(f"unknown {kind} '{name}'{hint}; valid: {', '.join(self.valid)}")


class ConfigError(UsageError):
    """A malformed ``--set`` option or YAML config; the message names the key and the problem."""


class DataUnavailableError(UsageError):
    """A dataset or weights file that cannot be reached (offline hub, missing mirror file)."""


class NonFiniteLossError(EEBenchError):
    """A training loss became NaN or infinite; the run stops and writes no record."""


class CorruptCacheError(EEBenchError):
    """A cache entry (features, trained backbone) cannot be read; the message says what to delete."""


class CorruptFileError(EEBenchError):
    """A file that ships with eebench (the offline default's backbone weights) fails its sha256 check."""
