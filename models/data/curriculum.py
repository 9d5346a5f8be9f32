"""Curriculum learning: DeepSpeed's difficulty schedules, a threshold sampler, and the
sequence-length curriculum.

`CurriculumScheduler(config)` takes the dict DeepSpeed's class of the same name takes
(`min_difficulty`, `max_difficulty`, `schedule_type`, `schedule_config`) and returns the same
values from `get_difficulty(step)` and `update_difficulty(step)` (DeepSpeed 0.19.8 semantics,
checked against it in tests/models/test_curriculum.py when it is installed):

- `fixed_linear`: d(s) = min + (s / total_curriculum_step) * (max - min), floored, then rounded
  down to a multiple of `difficulty_step`, raised to the first multiple of `difficulty_step` at
  or above `min_difficulty`, capped at `max_difficulty`.
- `fixed_root`: the same with (s / total)^(1 / root_degree) in place of s / total.
- `fixed_discrete`: `difficulty[i]` for the first i with s <= `max_step[i]`; the last difficulty
  after the last max_step.

`update_difficulty(step)` only moves the difficulty while it is below `max_difficulty` (so it
never changes again once it has reached the maximum), as DeepSpeed's.

`CurriculumSampler` draws training windows whose difficulty, for every configured metric, is at
or below that metric's current threshold; the metric `seqlen_truncate` instead truncates the
drawn windows to the current difficulty (the sequence-length curriculum). The difficulties come
from the index `tandem data analyze` writes (models.data.analyzer).

DeepSpeed's sampler advances its curriculum step before drawing each global batch, so its first
batch is curriculum step 1; the sampler here does the same: trainer step s (0-based) draws at
curriculum step s + 1.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelConfigError, ModelError
from .analyzer import DifficultyIndex

__all__ = [
    "METRICS",
    "SCHEDULE_TYPES",
    "CurriculumConfig",
    "CurriculumMetric",
    "CurriculumSampler",
    "CurriculumScheduler",
    "DataEfficiencyConfig",
    "RandomLTDConfig",
    "ScheduleConfig",
    "load_data_efficiency",
    "parse_data_efficiency",
    "read_data_efficiency",
    "truncate_batch",
]

SCHEDULE_TYPES = ("fixed_linear", "fixed_root", "fixed_discrete")
#: metric name in a DeepSpeed config -> what it is here. "seqlen_truncate" is the sequence-length
#: curriculum (no index needed); the others name a per-sample index of the analyzer.
METRICS = {
    "seqlen_truncate": "seqlen_truncate",
    "seqlen": "seqlen",
    "vocab_rarity": "vocab_rarity",
    "vocabularyrarity": "vocab_rarity",
    "voc": "vocab_rarity",
}
DIFFICULTY_TYPES = ("value", "percentile")
CLUSTERING_TYPES = ("single_cluster", "schedule_based")
_SCHEDULE_KEYS = {"total_curriculum_step", "difficulty_step", "root_degree", "difficulty",
                  "max_step"}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ModelConfigError(f"{name} must be a finite number, not {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ModelConfigError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class ScheduleConfig:
    """One metric's difficulty schedule (DeepSpeed's keys), validated."""

    schedule_type: str
    min_difficulty: float
    max_difficulty: float
    total_curriculum_step: int | None = None  # fixed_linear / fixed_root: steps to max
    difficulty_step: float | None = None  # fixed_linear / fixed_root: difficulties are multiples
    root_degree: float | None = None  # fixed_root: 2 is the square root
    difficulty: tuple = ()  # fixed_discrete: difficulty of each stage
    max_step: tuple = ()  # fixed_discrete: last step of each stage but the last

    def __post_init__(self) -> None:
        if self.schedule_type not in SCHEDULE_TYPES:
            raise ModelConfigError(
                f"schedule_type must be one of {', '.join(SCHEDULE_TYPES)}, "
                f"not {self.schedule_type!r}")
        lo = _number("min_difficulty", self.min_difficulty)
        hi = _number("max_difficulty", self.max_difficulty)
        if lo > hi:
            raise ModelConfigError(
                f"min_difficulty ({lo}) must not exceed max_difficulty ({hi})")
        if self.schedule_type == "fixed_discrete":
            if not self.difficulty or not self.max_step:
                raise ModelConfigError(
                    "fixed_discrete needs schedule_config.difficulty and .max_step, both non-empty")
            if len(self.difficulty) != len(self.max_step) + 1:
                raise ModelConfigError(
                    f"fixed_discrete needs one more difficulty than max_step, not "
                    f"{len(self.difficulty)} difficulties and {len(self.max_step)} max_steps")
            for d in self.difficulty:
                _number("schedule_config.difficulty", d)
            for s in self.max_step:
                if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
                    raise ModelConfigError(
                        f"schedule_config.max_step must be integers >= 0, not {s!r}")
            if list(self.max_step) != sorted(self.max_step):
                raise ModelConfigError(
                    f"schedule_config.max_step must not decrease, not {list(self.max_step)}")
            return
        _positive_int("schedule_config.total_curriculum_step", self.total_curriculum_step)
        step = _number("schedule_config.difficulty_step", self.difficulty_step)
        if step <= 0:
            raise ModelConfigError(f"schedule_config.difficulty_step must be > 0, not {step!r}")
        if self.schedule_type == "fixed_root":
            root = _number("schedule_config.root_degree", self.root_degree)
            if root <= 0:
                raise ModelConfigError(f"schedule_config.root_degree must be > 0, not {root!r}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], where: str = "curriculum") -> ScheduleConfig:
        if not isinstance(config, Mapping):
            raise ModelConfigError(f"{where} must be a JSON object, not {config!r}")
        for key in ("min_difficulty", "max_difficulty", "schedule_type"):
            if key not in config:
                raise ModelConfigError(f"{where} needs '{key}'")
        sched = config.get("schedule_config", {})
        if not isinstance(sched, Mapping):
            raise ModelConfigError(f"{where}.schedule_config must be a JSON object")
        unknown = set(sched) - _SCHEDULE_KEYS
        if unknown:
            raise ModelConfigError(
                f"{where}.schedule_config has unknown key(s) {sorted(unknown)}; known: "
                f"{sorted(_SCHEDULE_KEYS)}")
        kind = config["schedule_type"]
        if kind in ("fixed_linear", "fixed_root"):
            needed = ["total_curriculum_step", "difficulty_step"]
            needed += ["root_degree"] if kind == "fixed_root" else []
            for key in needed:
                if key not in sched:
                    raise ModelConfigError(f"{where}: {kind} needs schedule_config.{key}")
        return cls(
            schedule_type=kind,
            min_difficulty=config["min_difficulty"],
            max_difficulty=config["max_difficulty"],
            total_curriculum_step=sched.get("total_curriculum_step"),
            difficulty_step=sched.get("difficulty_step"),
            root_degree=sched.get("root_degree"),
            difficulty=tuple(sched.get("difficulty", ())),
            max_step=tuple(sched.get("max_step", ())),
        )


class CurriculumScheduler:
    """DeepSpeed's curriculum schedule: `get_difficulty(step)`, `update_difficulty(step)`.

    Takes DeepSpeed's dict (or a ScheduleConfig). Values and their types (int stays int) equal
    DeepSpeed 0.19.8's for the same config and step.
    """

    def __init__(self, config: Mapping[str, Any] | ScheduleConfig) -> None:
        self.config = config if isinstance(config, ScheduleConfig) else \
            ScheduleConfig.from_dict(config)
        self.current_difficulty = self.config.min_difficulty

    def get_difficulty(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ModelConfigError(f"curriculum step must be an integer >= 0, not {step!r}")
        c = self.config
        if c.schedule_type == "fixed_discrete":
            for difficulty, last in zip(c.difficulty, c.max_step, strict=False):
                if step <= last:
                    return difficulty
            return c.difficulty[-1]
        root = 1 if c.schedule_type == "fixed_linear" else c.root_degree
        progress = (float(step) / c.total_curriculum_step) ** (1.0 / root)
        value = math.floor(progress * (c.max_difficulty - c.min_difficulty) + c.min_difficulty)
        value -= value % c.difficulty_step  # a multiple of difficulty_step ...
        first = -(-c.min_difficulty // c.difficulty_step) * c.difficulty_step
        value = max(value, first)  # ... but never below the first multiple at or above min
        return min(value, c.max_difficulty)

    def update_difficulty(self, step: int) -> float:
        """The difficulty for `step`, remembered; frozen once it has reached max_difficulty."""
        if self.current_difficulty < self.config.max_difficulty:
            self.current_difficulty = self.get_difficulty(step)
        return self.current_difficulty

    def state_dict(self) -> dict[str, Any]:
        return {"current_difficulty": self.current_difficulty}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current_difficulty = state["current_difficulty"]


# -- the data_efficiency JSON -------------------------------------------------------------------


@dataclass(frozen=True)
class CurriculumMetric:
    """One entry of `curriculum_metrics`: which difficulty, value or percentile, its schedule."""

    name: str  # as written in the config ("voc", "seqlen_truncate", ...)
    metric: str  # canonical: "seqlen_truncate", "seqlen" or "vocab_rarity"
    difficulty_type: str  # "value" or "percentile"
    schedule: ScheduleConfig

    def __post_init__(self) -> None:
        if self.difficulty_type not in DIFFICULTY_TYPES:
            raise ModelConfigError(
                f"curriculum metric {self.name!r}: difficulty_type must be 'value' or "
                f"'percentile', not {self.difficulty_type!r}")
        if self.metric == "seqlen_truncate" and self.difficulty_type != "value":
            raise ModelConfigError(
                "curriculum metric 'seqlen_truncate' is a sequence length: its difficulty_type "
                f"must be 'value', not {self.difficulty_type!r}")
        if self.metric == "seqlen_truncate" and self.schedule.min_difficulty < 1:
            raise ModelConfigError(
                "seqlen_truncate's min_difficulty must be at least 1 token, not "
                f"{self.schedule.min_difficulty}")
        if self.difficulty_type == "percentile":
            lo, hi = self.schedule.min_difficulty, self.schedule.max_difficulty
            if not (lo >= 0 and hi <= 100 and float(hi).is_integer() and hi >= 1):
                raise ModelConfigError(
                    f"curriculum metric {self.name!r}: percentile difficulties must lie in "
                    f"0..100 with an integer max_difficulty >= 1, not {lo}..{hi}")


@dataclass(frozen=True)
class CurriculumConfig:
    enabled: bool = False
    metrics: tuple[CurriculumMetric, ...] = ()


@dataclass(frozen=True)
class RandomLTDConfig:
    """data_routing.random_ltd; see models.random_ltd for the schedule and the layers."""

    enabled: bool = False
    layer_ids: tuple[int, ...] = ()  # random_ltd_layer_id; empty: every layer but first and last
    min_value: int = 0  # random_ltd_schedule.min_value: kept tokens at step 0
    max_value: int = 0  # random_ltd_schedule.max_value: the full sequence
    require_steps: int = 1  # schedule_config.require_steps: steps from min_value to max_value
    seq_per_step: int = 1  # schedule_config.seq_per_step: kept counts are multiples of this

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        for name in ("min_value", "max_value", "require_steps", "seq_per_step"):
            _positive_int(f"random_ltd {name}", getattr(self, name))
        if self.min_value > self.max_value:
            raise ModelConfigError(
                f"random_ltd min_value ({self.min_value}) must not exceed max_value "
                f"({self.max_value})")
        if self.min_value < self.seq_per_step:
            raise ModelConfigError(
                f"random_ltd min_value ({self.min_value}) must be at least seq_per_step "
                f"({self.seq_per_step}), or the first steps would keep no token")
        for i in self.layer_ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0:
                raise ModelConfigError(f"random_ltd_layer_id must be layer indices, not {i!r}")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ModelConfigError(f"random_ltd_layer_id repeats a layer: {list(self.layer_ids)}")


@dataclass(frozen=True)
class DataEfficiencyConfig:
    enabled: bool = False
    seed: int = 1234
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    random_ltd: RandomLTDConfig = field(default_factory=RandomLTDConfig)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelConfigError(f"{where} must be true or false, not {value!r}")
    return value


def _section(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, Mapping):
        raise ModelConfigError(f"{where}.{key} must be a JSON object, not {value!r}")
    return value


def _parse_metric(name: str, body: Any) -> CurriculumMetric:
    where = f"curriculum_metrics.{name}"
    if name not in METRICS:
        if name == "seqlen_reshape":
            raise ModelConfigError(
                "curriculum metric 'seqlen_reshape' is not supported; use 'seqlen_truncate'")
        raise ModelConfigError(
            f"unknown curriculum metric {name!r}; known: {', '.join(METRICS)}")
    if not isinstance(body, Mapping):
        raise ModelConfigError(f"{where} must be a JSON object")
    clustering = body.get("clustering_type", "schedule_based")
    if clustering not in CLUSTERING_TYPES:
        raise ModelConfigError(
            f"{where}.clustering_type must be one of {CLUSTERING_TYPES}, not {clustering!r}")
    return CurriculumMetric(name=name, metric=METRICS[name],
                            difficulty_type=body.get("difficulty_type", "value"),
                            schedule=ScheduleConfig.from_dict(body, where))


def parse_data_efficiency(config: Mapping[str, Any]) -> DataEfficiencyConfig:
    """A DeepSpeed config (the whole file, or its `data_efficiency` object) -> typed config.

    Reads DeepSpeed's layout and key names: data_efficiency.{enabled, seed,
    data_sampling.curriculum_learning.{enabled, curriculum_metrics.{NAME: {difficulty_type,
    min_difficulty, max_difficulty, schedule_type, schedule_config}}}, data_routing.random_ltd.
    {enabled, random_ltd_layer_id, random_ltd_schedule.{min_value, max_value, schedule_type,
    schedule_config.{require_steps, seq_per_step}}}}. Paths, batch sizes and the other keys
    DeepSpeed needs for its own machinery are accepted and not used. Sections are enabled only
    when both they and their parents say `"enabled": true`, as in DeepSpeed.
    """
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"a data_efficiency config must be a JSON object, not {config!r}")
    de = _section(config, "data_efficiency", "config") if "data_efficiency" in config else config
    where = "data_efficiency"
    enabled = _bool(f"{where}.enabled", de.get("enabled", False))
    seed = de.get("seed", 1234)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ModelConfigError(f"{where}.seed must be an integer >= 0, not {seed!r}")

    sampling = _section(de, "data_sampling", where)
    cl = _section(sampling, "curriculum_learning", f"{where}.data_sampling")
    cl_on = enabled and _bool("data_sampling.enabled", sampling.get("enabled", False)) and \
        _bool("curriculum_learning.enabled", cl.get("enabled", False))
    metrics: tuple[CurriculumMetric, ...] = ()
    if cl_on:
        raw = cl.get("curriculum_metrics")
        if not isinstance(raw, Mapping) or not raw:
            raise ModelConfigError(
                "curriculum learning is enabled but curriculum_metrics names no metric")
        metrics = tuple(_parse_metric(name, body) for name, body in raw.items())
        canon = [m.metric for m in metrics]
        if len(set(canon)) != len(canon):
            raise ModelConfigError(f"curriculum_metrics names one metric twice: {list(raw)}")

    routing = _section(de, "data_routing", where)
    ltd = _section(routing, "random_ltd", f"{where}.data_routing")
    ltd_on = enabled and _bool("data_routing.enabled", routing.get("enabled", False)) and \
        _bool("random_ltd.enabled", ltd.get("enabled", False))
    ltd_config = RandomLTDConfig()
    if ltd_on:
        sched = _section(ltd, "random_ltd_schedule", "random_ltd")
        kind = sched.get("schedule_type", "fixed_linear")
        if kind != "fixed_linear":
            raise ModelConfigError(
                f"random_ltd_schedule.schedule_type must be 'fixed_linear' (DeepSpeed's only "
                f"one), not {kind!r}")
        sc = _section(sched, "schedule_config", "random_ltd_schedule")
        for key in ("min_value", "max_value"):
            if key not in sched:
                raise ModelConfigError(f"random_ltd_schedule needs '{key}'")
        for key in ("require_steps", "seq_per_step"):
            if key not in sc:
                raise ModelConfigError(f"random_ltd_schedule.schedule_config needs '{key}'")
        layer_ids = ltd.get("random_ltd_layer_id", [])
        if not isinstance(layer_ids, list):
            raise ModelConfigError(f"random_ltd_layer_id must be a list, not {layer_ids!r}")
        count = ltd.get("random_ltd_layer_num")
        if count is not None and layer_ids and count != len(layer_ids):
            raise ModelConfigError(
                f"random_ltd_layer_num ({count}) must equal the length of random_ltd_layer_id "
                f"({len(layer_ids)})")
        ltd_config = RandomLTDConfig(
            enabled=True, layer_ids=tuple(sorted(layer_ids)),
            min_value=sched["min_value"], max_value=sched["max_value"],
            require_steps=sc["require_steps"], seq_per_step=sc["seq_per_step"])
    return DataEfficiencyConfig(enabled=enabled, seed=int(seed),
                                curriculum=CurriculumConfig(cl_on, metrics),
                                random_ltd=ltd_config)


def read_data_efficiency(path: str | Path) -> dict:
    """The JSON object of a data_efficiency file, validated by `parse_data_efficiency`
    (ModelConfigError otherwise); the raw dict, for a run to record what it was given."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ModelConfigError(f"cannot read data_efficiency file {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelConfigError(f"data_efficiency file {path} is not valid JSON: {e}") from None
    parse_data_efficiency(raw)  # unknown schedules or metrics, min > max, ...
    return raw


def load_data_efficiency(path: str | Path) -> DataEfficiencyConfig:
    """parse_data_efficiency of a JSON file."""
    return parse_data_efficiency(read_data_efficiency(path))


# -- sampling -----------------------------------------------------------------------------------


def truncate_batch(x: torch.Tensor, y: torch.Tensor, seqlen: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequence-length curriculum: x, y (B, T) -> their first `seqlen` positions."""
    if seqlen < 1:
        raise ModelConfigError(f"seqlen must be at least 1, not {seqlen}")
    return x[:, :seqlen], y[:, :seqlen]


class CurriculumSampler:
    """Training windows whose difficulty is at or below the current threshold of every metric.

    `index` is a `DifficultyIndex` (models.data.analyzer) of the train split; a sample is its
    window i, tokens [i * block_size, i * block_size + block_size + 1). A `value` difficulty
    admits samples whose metric is <= the threshold; a `percentile` difficulty p admits the
    (N // max_difficulty) * p easiest samples (all N at p = max_difficulty), as DeepSpeed's
    sampler does. Several metrics: the intersection. `seqlen_truncate` truncates instead.

    A curriculum of `seqlen_truncate` alone needs no index: `index` may then be the corpus's
    `TokenData`, whose random windows of `block_size` tokens (the trainer's) are truncated.
    """

    def __init__(self, index, metrics: tuple[CurriculumMetric, ...] | list[CurriculumMetric],
                 block_size: int | None = None) -> None:
        self.index = index
        self.metrics = tuple(metrics)
        self.schedulers = {m.metric: CurriculumScheduler(m.schedule) for m in self.metrics}
        self.block_size = block_size
        if not isinstance(index, DifficultyIndex):
            for m in self.metrics:
                if m.metric != "seqlen_truncate":
                    raise ModelConfigError(
                        f"curriculum metric {m.name!r} needs the analyzer's index; run "
                        "`tandem data analyze --data DIR` and pass its DifficultyIndex")
            if block_size is None:
                raise ModelConfigError("a seqlen_truncate curriculum over TokenData needs "
                                       "block_size")
        for m in self.metrics:
            if m.metric != "seqlen_truncate" and m.metric not in index.metrics:
                raise ModelConfigError(
                    f"curriculum metric {m.name!r} needs the analyzer's '{m.metric}' index, "
                    f"which {index.directory} does not hold (it has {list(index.metrics)})")
        self._cache: tuple[tuple, np.ndarray] | None = None

    def difficulties(self, step: int) -> dict[str, float]:
        """Thresholds at trainer step `step` (0-based; curriculum step step + 1), updated."""
        return {name: s.update_difficulty(step + 1) for name, s in self.schedulers.items()}

    def eligible(self, thresholds: Mapping[str, float]) -> np.ndarray:
        """Indices of the samples admitted by `thresholds` (metric -> difficulty), sorted."""
        key = tuple(sorted((k, v) for k, v in thresholds.items() if k != "seqlen_truncate"))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        keep = np.ones(self.index.n_samples, dtype=bool)
        for m in self.metrics:
            if m.metric == "seqlen_truncate":
                continue
            d = thresholds[m.metric]
            if m.difficulty_type == "value":
                keep &= self.index.values(m.metric) <= d
            else:
                n = self.index.n_samples
                top = m.schedule.max_difficulty
                count = n if d >= top else (n // int(top)) * int(d)
                chosen = np.zeros(n, dtype=bool)
                chosen[self.index.order(m.metric)[:count]] = True
                keep &= chosen
        out = np.flatnonzero(keep)
        if len(out) == 0:
            raise ModelError(
                f"no training window is at or below the curriculum's difficulties {dict(key)}; "
                "raise min_difficulty (see the percentile tables `tandem data analyze` wrote)")
        self._cache = (key, out)
        return out

    def batch(self, step: int, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (batch_size, T): admitted windows drawn uniformly (with replacement) by
        `generator`; T is block_size, or the seqlen_truncate difficulty when that is smaller."""
        thresholds = self.difficulties(step)
        if isinstance(self.index, DifficultyIndex):
            pool = self.eligible(thresholds)
            picks = pool[torch.randint(len(pool), (batch_size,), generator=generator).numpy()]
            x, y = self.index.windows(picks)
        else:
            x, y = self.index.batch("train", batch_size, self.block_size, generator)
        if "seqlen_truncate" in thresholds:
            x, y = truncate_batch(x, y, int(min(thresholds["seqlen_truncate"], x.shape[1])))
        return x, y
