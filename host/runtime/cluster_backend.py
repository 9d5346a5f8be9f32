"""`ClusterBackend`: generation on a compiled model over a device cluster. Compile once, build
the devices with a `ClusterFactory` and load them, then per request write the job descriptor,
start the devices, and turn their TOKOUT events into timed steps.

The `isa` backend is a `ClusterBackend` on `hw.isasim.IsaCluster` (the default factory,
`isa_cluster`); the `rtl` and `board` backends (`RtlBackend`, `BoardBackend`) are the same
backend on their own clusters. Everything here goes through the `DeviceCluster` protocol.

The devices decode greedily (argmax on device, across the ring), so requests must have
temperature 0. `ms` of a step is device time at the configured clock (cycles / clock), not the
simulator's wall time, which is reported as `wall_ms`.

`prefill="gpu"` is the heterogeneous pipeline: the host computes the KV cache of all but the
last prompt token (`prefill.HostPrefill`), writes it into every device's memory in the
compiler's layout (`kv.write_kv`), and the job starts at POS0 = n-1. After each request
`time_split` holds where the time went: host prefill, the transfer, the first token and the
decode steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from hw.config import AccelConfig
from hw.isasim import IsaCluster
from hw.layout import DESC
from hw.perf import CATEGORIES, hbm_utilization
from models.gpt2 import GPT2LMHead

from ..compiler import CompiledModel, compile_model
from ..errors import UsageError
from .api import ClusterDevice, ClusterFactory, DeviceCluster, GenerationRequest, Step
from .kv import PCIE_GBPS, write_kv
from .prefill import PREFILL_TARGETS, HostPrefill

__all__ = ["ClusterBackend", "isa_cluster"]


def isa_cluster(compiled: CompiledModel) -> IsaCluster:
    """The instruction-level simulator's devices for `compiled` (functional, all simulated):
    the `isa` backend's cluster, and the host's emulation of the devices for exact prefill."""
    return IsaCluster(compiled.config)


class ClusterBackend:
    """A compiled model on a cluster of devices: `cluster_factory` builds them (the `isa`
    simulator by default), once per backend."""

    greedy_only = True  # argmax runs on the devices; sampling would need the logits on the host

    def __init__(self, model: GPT2LMHead, config: AccelConfig, return_logits: bool = False,
                 name: str = "isa", prefill: str = "fpga", prefill_numerics: str = "torch",
                 cluster_factory: ClusterFactory = isa_cluster) -> None:
        if prefill not in PREFILL_TARGETS:
            raise UsageError(f"--prefill must be one of {', '.join(PREFILL_TARGETS)}, "
                             f"not {prefill!r}")
        self.name = name
        self.model = model
        self.config = config
        self.compiled = compile_model(model, config)
        self.cluster: DeviceCluster = cluster_factory(self.compiled)
        self.cluster.load(self.compiled.programs, self.compiled.images)
        self.return_logits = return_logits
        self.prefill = prefill
        # exact prefill is the devices' arithmetic emulated on the host, whatever the cluster
        self.host_prefill = None if prefill == "fpga" else HostPrefill(
            model, prefill_numerics, compiled=self.compiled, cluster_factory=isa_cluster)
        self.time_split: dict[str, Any] | None = None  # of the last request, once it is done

    def describe(self) -> dict[str, Any]:
        plan = self.compiled.plan
        return {"backend": self.name, "config": self.config.name, "devices": self.config.devices,
                "clock_mhz": self.config.clock_mhz, "prefill_chunk": plan.prefill_chunk,
                "program_instructions": len(self.compiled.programs[0]),
                "prefill": self.prefill,
                **(self.host_prefill.describe() if self.host_prefill else {})}

    def _write_job(self, request: GenerationRequest, pos0: int = 0) -> None:
        n_pos = self.model.config.n_positions
        for d in range(len(self.cluster.devices)):
            self.cluster.write_i32(d, DESC.N_PROMPT, [len(request.prompt_ids)])
            self.cluster.write_i32(d, DESC.POS0, [pos0])
            self.cluster.write_i32(d, DESC.MAX_NEW, [request.max_new_tokens])
            self.cluster.write_i32(d, DESC.N_OUT, [0])
            self.cluster.write_i32(d, DESC.PROMPT, request.prompt_ids)
            self.cluster.write_i32(d, DESC.out_tokens(n_pos), np.zeros(n_pos, np.int32))

    def stream(self, request: GenerationRequest) -> Iterator[Step]:
        if request.temperature != 0:
            raise UsageError(f"the {self.name} backend decodes greedily (argmax on the "
                             "devices); use --temperature 0")
        self.model.check_prompt(request.prompt_ids, request.max_new_tokens)
        self.time_split = None
        host = self._host_prefill(self.host_prefill, request) if self.host_prefill else None
        self._write_job(request, pos0=host["pos0"] if host else 0)
        self.cluster.start()
        devices = self.cluster.devices
        for d, dev in enumerate(devices):
            dev.argmax_inputs = [] if self.return_logits else None
            dev.argmax_pc = self.compiled.labels[d]["head_done"]  # the LM head's argmax
        out_base = DESC.out_tokens(self.model.config.n_positions)
        out_end = out_base + 4 * request.max_new_tokens
        # events consumed so far, when the last step ended, and the counters at its end
        seen, wall = 0, time.perf_counter()
        prev: dict[str, Any] = {"cycles": 0.0, "breakdown": dict.fromkeys(CATEGORIES, 0.0),
                                "weight_bytes": 0, "kv_bytes": 0}
        emitted: list[int] = []
        steps_ms: list[float] = []
        walls_ms: list[float] = []

        def new_steps() -> Iterator[Step]:
            nonlocal seen, wall, prev
            events = devices[0].events
            while seen < len(events):
                addr, token, snap = events[seen]
                seen += 1
                if not out_base <= addr < out_end:
                    continue
                now = time.perf_counter()
                step = self._step(token, snap, prev, len(emitted), now - wall)
                wall, prev = now, snap
                emitted.append(token)
                steps_ms.append(step.ms)
                walls_ms.append(step.extra["wall_ms"])
                yield step

        for _ in self.cluster.run():
            yield from new_steps()
        yield from new_steps()  # the last token is written after the last collective
        stored = self.cluster.read_i32(0, out_base, request.max_new_tokens).tolist()
        if stored != emitted or len(emitted) != request.max_new_tokens:
            raise RuntimeError(f"device output {stored} disagrees with its TOKOUT stream "
                               f"{emitted}")
        self.time_split = self._split(request, host, steps_ms, walls_ms)

    def _host_prefill(self, prefill: HostPrefill, request: GenerationRequest) -> dict[str, Any]:
        """Prefill on the host (`prefill`, the backend's `host_prefill`) and copy the KV cache
        to every device; the devices then start at the last prompt token."""
        result = prefill.run(request.prompt_ids)
        start = time.perf_counter()
        per_device = write_kv(self.cluster, self.compiled.plan, result.kv)
        transfer_ms = (time.perf_counter() - start) * 1e3
        return {"pos0": result.positions, "prefill": result.to_json(),
                "transfer": {
                    "bytes": sum(per_device),
                    "bytes_per_device": per_device,
                    "ms": round(transfer_ms, 3),
                    # the cards are written in parallel, each over its own link
                    "projected_ms": round(max(per_device) / (PCIE_GBPS * 1e9) * 1e3, 6),
                    "projected_at_gbps": PCIE_GBPS,
                }}

    def _split(self, request: GenerationRequest, host: dict | None, steps_ms: list[float],
               walls_ms: list[float]) -> dict[str, Any] | None:
        """Where a request's time went (None where a backend cannot tell). Host figures are
        measured wall time; device figures are cycles at the configured clock (`ms`) beside
        the simulator's wall time."""
        n = len(request.prompt_ids)
        decode = steps_ms[1:]
        if host:
            prefill, transfer = host["prefill"], host["transfer"]
        else:
            prefill = {"device": None, "numerics": None, "tokens": 0, "ms": 0.0}  # all on-device
            transfer = {"bytes": 0, "bytes_per_device": [0] * len(self.cluster.devices),
                        "ms": 0.0, "projected_ms": 0.0, "projected_at_gbps": PCIE_GBPS}
        return {
            "prefill": prefill,
            "transfer": transfer,
            # the devices' first pass: prompt positions pos0..n-1, the LM head, the argmax
            "first_token": {"device_tokens": n - host["pos0"] if host else n,
                            "ms": round(steps_ms[0], 6), "wall_ms": round(walls_ms[0], 3)},
            "decode": {
                "tokens": len(decode),
                "ms_per_token": round(sum(decode) / len(decode), 6) if decode else None,
                "wall_ms_per_token": round(sum(walls_ms[1:]) / len(decode), 3)
                if decode else None,
                "clock_mhz": self.config.clock_mhz,
            },
            # host prefill + projected transfer + device time: the latency a board would see
            "total_ms": round(prefill["ms"] + transfer["projected_ms"] + sum(steps_ms), 6),
        }

    def _step(self, token: int, snap: dict, prev: dict, index: int, wall_s: float) -> Step:
        cycles = snap["cycles"] - prev["cycles"]
        moved = snap["weight_bytes"] + snap["kv_bytes"] - prev["weight_bytes"] - prev["kv_bytes"]
        extra: dict[str, Any] = {
            "cycles": round(cycles, 1),
            "breakdown": {k: round(snap["breakdown"][k] - prev["breakdown"][k], 1)
                          for k in CATEGORIES},
            "hbm_utilization": round(hbm_utilization(moved * len(self.cluster.devices),
                                                     cycles, self.config)
                                     / self.config.devices, 4),
            "wall_ms": round(wall_s * 1e3, 3),
        }
        if self.return_logits:
            extra["logits"] = np.concatenate(
                [self._argmax_inputs(dev)[index] for dev in self.cluster.devices]
            ).astype(np.float32).tolist()
        return Step(token, self.config.cycles_to_ms(cycles), extra)

    @staticmethod
    def _argmax_inputs(dev: ClusterDevice) -> list:
        """The logits `dev` recorded, one vector per token (`stream` asks for them)."""
        assert dev.argmax_inputs is not None, "stream gives every device a list with logits"
        return dev.argmax_inputs
