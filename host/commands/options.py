"""Command-line options generated from config dataclasses, so each option is written once."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

__all__ = ["add_dataclass_options", "add_output_arguments", "dataclass_from_args"]


def _field_docs(cls) -> dict[str, str]:
    """`name: type = default  #: doc` comments of a dataclass body, by field name."""
    pattern = re.compile(r"^\s+(\w+):[^#\n]*#:\s*(.+)$", re.MULTILINE)
    return dict(pattern.findall(inspect.getsource(cls)))


def add_dataclass_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One `--field-name` option per dataclass field, typed and documented from the class."""
    docs = _field_docs(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        doc = docs.get(f.name, "")
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=f"{doc} (default: {f.default})")
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                               help=f"{doc} (default: {f.default})".strip())


def dataclass_from_args(cls, args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Build `cls` from `base` (a JSON config, say) overridden by the options given."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)


def add_output_arguments(parser: argparse.ArgumentParser, help: str) -> None:
    """--out (required) and --force, as every command that writes a directory spells them
    (the rules are `hw.outdir`'s)."""
    parser.add_argument("--out", required=True, help=f"{help} (written whole, or not at all)")
    parser.add_argument("--force", action="store_true",
                        help="replace --out even when it is a non-empty directory this command "
                        "did not write")
