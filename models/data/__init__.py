"""Training data from what every machine has: the running interpreter's standard library.

`prepare_corpus(out)` writes a deterministic train/val split (by file-path hash), a byte-level
BPE trained on the train split, and the token streams as uint16 binaries; `TokenData` reads
them back as batches.

Data efficiency: `analyze` writes per-window difficulty indexes (`DifficultyIndex`),
`CurriculumScheduler` is DeepSpeed's difficulty schedule, `CurriculumSampler` draws windows at or
below it, `parse_data_efficiency` reads DeepSpeed's `data_efficiency` JSON and `DataEfficiency`
puts it into a training loop; `fim` holds the fill-in-the-middle transform.
"""

from .analyzer import DifficultyIndex, analyze
from .corpus import CorpusMeta, prepare_corpus, split_of, stdlib_files, stdlib_root
from .curriculum import (
    CurriculumSampler,
    CurriculumScheduler,
    DataEfficiencyConfig,
    load_data_efficiency,
    parse_data_efficiency,
    read_data_efficiency,
)
from .dataset import TokenData
from .efficiency import DataEfficiency
from .fim import FIMConfig, ensure_fim, fim_transform, infill_prompt_ids

__all__ = [
    "CorpusMeta",
    "CurriculumSampler",
    "CurriculumScheduler",
    "DataEfficiency",
    "DataEfficiencyConfig",
    "DifficultyIndex",
    "FIMConfig",
    "TokenData",
    "analyze",
    "ensure_fim",
    "fim_transform",
    "infill_prompt_ids",
    "load_data_efficiency",
    "parse_data_efficiency",
    "prepare_corpus",
    "read_data_efficiency",
    "split_of",
    "stdlib_files",
    "stdlib_root",
]
