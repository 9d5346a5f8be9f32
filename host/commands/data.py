"""Build the training corpus from this interpreter's standard library: a train/val split
by file-path hash, a byte-level BPE trained on the train split, uint16 token binaries.

`tandem data analyze --data DIR` writes the difficulty index a curriculum needs (per-window
sequence length and vocabulary rarity, with percentile tables) beside a prepared corpus; see
models.data.analyzer."""

from __future__ import annotations

import json

from host.errors import UsageError
from hw.outdir import output_dir
from models.data import analyze, prepare_corpus

from .options import add_output_arguments

NAME = "data"
HELP = "build the stdlib code corpus and its BPE tokenizer"


def add_arguments(p) -> None:
    add_output_arguments(p, "directory to write the corpus into")
    p.add_argument("action", nargs="?", choices=["analyze"],
                   help="analyze: index a prepared corpus (--data) for curriculum learning")
    p.add_argument("--data", help="analyze: the prepared corpus directory")
    p.add_argument("--block-size", type=int, default=256,
                   help="analyze: tokens per training window, as `tandem train` (default 256)")
    for action in p._actions:  # `data analyze` writes beside --data, not to --out: run() checks
        if action.dest == "out":
            action.required = False
        if action.dest == "force":
            action.help += "; with analyze: rebuild an existing index"
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of files in the validation split (default 0.05)")
    p.add_argument("--limit-files", type=int, default=None,
                   help="use only the first N files by path (quick experiments)")


def run(args) -> int:
    if args.action == "analyze":
        if args.data is None or args.out is not None:
            raise UsageError("`tandem data analyze` takes --data DIR (and no --out)")
        print(analyze(args.data, args.block_size, force=args.force))
        return 0
    if args.out is None or args.data is not None:
        raise UsageError("`tandem data` takes --out DIR; `tandem data analyze` takes --data DIR")
    with output_dir(args.out, NAME, force=args.force) as tmp:
        meta = prepare_corpus(tmp, args.vocab_size, args.val_fraction,
                              limit_files=args.limit_files)
    print(json.dumps(meta.__dict__, indent=2))
    return 0
