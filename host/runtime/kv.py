"""The KV cache between the host and the devices: the golden model's `present` in the
accelerator's HBM layout, and back.

The layout is the compiler's (`host.compiler.plan`): device d owns the `head_counts[d]`
consecutive heads from `head_start(d)`; per layer and local head h it holds
- `k{h}`: a striped matrix of n_positions rows of `head_dim_padded` FP16 values (row t: the
  key at position t, zero-padded from head_dim), and
- `v{h}`: a striped matrix of `head_dim_padded` rows of `positions_padded` FP16 values
  (transposed: row i holds value dimension i at every position, column t).

`kv_writes` yields the contiguous runs a DMA would copy: for a key matrix one run per channel
(the rows a channel holds are adjacent), for the transposed values one run per row. The runs
hold exactly what the device's own STORER/STOREC would have written, padding zeros included,
so a device that reads them cannot tell them from KV it computed itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from hw.config import ASSUMPTIONS
from hw.layout import row_location

from ..compiler import Plan
from ..errors import UsageError
from .api import DeviceCluster

__all__ = ["PCIE_GBPS", "KvCache", "kv_writes", "read_kv", "write_kv"]

#: Host-to-card copy rate assumed for projected transfer times (GB/s): the central value of
#: the `pcie_gbps` assumption in `hw.config.ASSUMPTIONS`, where its source and range are given.
PCIE_GBPS = ASSUMPTIONS["pcie_gbps"].central

#: Per layer (k, v), each (n_head, T, head_dim): keys and values of positions 0..T-1.
KvCache = Sequence[tuple[np.ndarray, np.ndarray]]


def _check(plan: Plan, kv: KvCache) -> int:
    s = plan.shape
    if len(kv) != s.n_layer:
        raise UsageError(f"the KV cache has {len(kv)} layers; the model has {s.n_layer}")
    t = kv[0][0].shape[1]
    for k, v in kv:
        for name, x in (("keys", k), ("values", v)):
            if x.shape != (s.n_head, t, s.head_dim):
                raise UsageError(f"KV {name} of shape {tuple(x.shape)}; expected "
                                 f"({s.n_head}, {t}, {s.head_dim}) (heads, positions, head_dim)")
    if t > s.n_positions:
        raise UsageError(f"the KV cache holds {t} positions; the model's context is "
                         f"{s.n_positions}")
    return t


def _bases(plan: Plan, layer: int, h: int) -> tuple[int, int]:
    base = plan.hbm["kv"].offset + layer * plan.kv_stride
    return base + plan.kv_regions[f"k{h}"].offset, base + plan.kv_regions[f"v{h}"].offset


def kv_writes(plan: Plan, kv: KvCache, device: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(channel, byte offset, FP16 values) runs that put `kv` into `device`'s HBM."""
    t = _check(plan, kv)
    if t == 0:
        return
    cfg = plan.config
    ports, beat = cfg.hbm_ports, cfg.beat_bytes
    head_dim, padded = plan.head_dim, plan.head_dim_padded
    for layer, (k_all, v_all) in enumerate(kv):
        for h in range(plan.head_counts[device]):
            g = plan.head_start(device) + h  # global head
            k_base, v_base = _bases(plan, layer, h)
            k = np.zeros((t, plan.ldb_head_dim * cfg.lane_width), np.float16)  # (T, padded)
            k[:, :head_dim] = np.asarray(k_all[g], np.float32).astype(np.float16)
            for c in range(min(ports, t)):
                yield c, row_location(k_base, c, plan.ldb_head_dim, ports, beat)[1], k[c::ports]
            vt = np.zeros((padded, t), np.float16)  # (padded, T): transposed
            vt[:head_dim] = np.asarray(v_all[g], np.float32).astype(np.float16).T
            for i in range(padded):
                channel, offset = row_location(v_base, i, plan.ldb_positions, ports, beat)
                yield channel, offset, vt[i]


def write_kv(cluster: DeviceCluster, plan: Plan, kv: KvCache) -> list[int]:
    """Write `kv` into every device of `cluster` (through `cluster.image(d)`, the host's view of
    the device memory); returns the bytes written per device."""
    written = []
    for d in range(plan.devices):
        image = cluster.image(d)
        n = 0
        for channel, offset, values in kv_writes(plan, kv, d):
            image.write_bytes(channel, offset, np.ascontiguousarray(values))
            n += values.nbytes
        written.append(n)
    return written


def read_kv(images, plan: Plan, positions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The KV cache of positions 0..positions-1 as the devices hold it: per layer (k, v), each
    (n_head, positions, head_dim) FP16, gathered from every device's image."""
    s = plan.shape
    out = []
    for layer in range(s.n_layer):
        k = np.zeros((s.n_head, positions, plan.head_dim), np.float16)
        v = np.zeros((s.n_head, positions, plan.head_dim), np.float16)
        for d in range(plan.devices):
            for h in range(plan.head_counts[d]):
                g = plan.head_start(d) + h
                k_base, v_base = _bases(plan, layer, h)
                k[g] = images[d].read_matrix(k_base, plan.ldb_head_dim, positions, plan.head_dim)
                v[g] = images[d].read_matrix(v_base, plan.ldb_positions, plan.head_dim, positions).T
        out.append((k, v))
    return out
