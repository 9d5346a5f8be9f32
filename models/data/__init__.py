"""Training data from what every machine has: the running interpreter's standard library.

`prepare_corpus(out)` writes a deterministic train/val split (by file-path hash), a byte-level
BPE trained on the train split, and the token streams as uint16 binaries; `TokenData` reads
them back as batches.
"""

from .corpus import CorpusMeta, prepare_corpus, split_of, stdlib_files, stdlib_root
from .dataset import TokenData

__all__ = [
    "CorpusMeta",
    "TokenData",
    "prepare_corpus",
    "split_of",
    "stdlib_files",
    "stdlib_root",
]
