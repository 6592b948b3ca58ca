"""Errors that name the problem and the fix.

Every notebook can hit these; 00_setup shows what one looks like. A learner should
read one line and know what to change, so each error carries a `fix`.
"""
from __future__ import annotations


class GemmateError(Exception):
    """Base error of the course: `problem` says what is wrong, `fix` what to do."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  Fix: {fix}")


class ParameterError(GemmateError, TypeError):
    """A notebook or config parameter has the wrong type or value."""


class ModelLoadError(GemmateError, OSError):
    """A model could not be loaded: gated, unknown id, offline, missing package."""


class DataError(GemmateError, ValueError):
    """A dataset could not be loaded or has no usable rows."""


class HardwareError(GemmateError, RuntimeError):
    """The requested hardware (a GPU, bf16) is not there."""
