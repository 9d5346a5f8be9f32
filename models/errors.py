"""Errors a user can act on: bad checkpoints, bad configs, bad prompts.

Each message is one line that names the thing and the fix; the CLI prints it and exits 2.
"""

__all__ = ["CheckpointError", "ModelConfigError", "ModelError", "PromptError"]


class ModelError(ValueError):
    """Base of every user-facing error raised by `models`."""


class CheckpointError(ModelError):
    """A checkpoint directory or file is missing, corrupt or does not match its config."""


class ModelConfigError(ModelError):
    """A model configuration that Tandem cannot build (unknown type, invalid sizes)."""


class PromptError(ModelError):
    """A prompt that cannot be generated from (empty, too long for the context)."""
