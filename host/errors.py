"""User errors the CLI reports as one line with exit code 2, and the classes that count."""

from hw.config import ConfigError
from hw.outdir import OutputDirError
from models.errors import ModelError

__all__ = ["USER_ERRORS", "UsageError"]


class UsageError(ValueError):
    """A command-line request that cannot be carried out as given."""


#: Exceptions that mean "bad input", not "bug": printed as one line, exit code 2. The
#: compiler's CompileError subclasses UsageError (a model the config cannot hold).
USER_ERRORS: tuple[type[Exception], ...] = (UsageError, ModelError, ConfigError, OutputDirError)
