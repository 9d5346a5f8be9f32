"""Build the training corpus from this interpreter's standard library: a train/val split
by file-path hash, a byte-level BPE trained on the train split, uint16 token binaries."""

from __future__ import annotations

import json

from models.data import prepare_corpus

NAME = "data"
HELP = "build the stdlib code corpus and its BPE tokenizer"


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="directory to write the corpus into")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of files in the validation split (default 0.05)")
    p.add_argument("--limit-files", type=int, default=None,
                   help="use only the first N files by path (quick experiments)")


def run(args) -> int:
    meta = prepare_corpus(args.out, args.vocab_size, args.val_fraction,
                          limit_files=args.limit_files)
    print(json.dumps(meta.__dict__, indent=2))
    return 0
