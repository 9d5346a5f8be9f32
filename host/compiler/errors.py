"""The compiler's one error: a model that does not fit a config.

It has its own module because every compiler step raises it (`plan`, `moe`, and the program
size check in the package), and those steps import one another only downward."""

from __future__ import annotations

from ..errors import UsageError

__all__ = ["CompileError"]


class CompileError(UsageError):
    """A model that cannot be mapped onto a config; the message names the limit."""
