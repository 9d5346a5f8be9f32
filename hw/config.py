"""`AccelConfig`: one accelerator build (per-device resources, clock, ring) and its presets.

Everything the compiler, the instruction-level simulator, the timing model and the RTL need
to agree on lives here once. A config round-trips through JSON (`to_json` / `from_json`), and
`__post_init__` refuses combinations the hardware cannot be built with, naming the limit.

The MPU has `mpu_lanes / hbm_ports` dot-product lanes per HBM port: the weight rows stored in
pseudo-channel p are dealt round-robin to that port's lanes, and each lane takes one port beat
(`lane_width` FP16 values, so `lane_width * 16` equals `hbm_port_width_bits`) per cycle. The
lanes must compute faster than the ports stream (more lanes per port, or a kernel clock above
the port's beat rate), so that they catch up after waiting for the vector unit or the ring
instead of leaving the port idle. A row's dot product is always computed whole by one lane, so
the lane count never changes results.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ASSUMPTIONS",
    "CORNERS",
    "PRESETS",
    "AccelConfig",
    "Assumption",
    "ConfigError",
    "at_corner",
    "load_config",
]


class ConfigError(ValueError):
    """An accelerator configuration that cannot be built or cannot map a model."""


NUMBER_FORMATS = ("fp16",)
#: the most FPGAs in one ring (DFX used 4); beyond it nothing is modelled or built
MAX_DEVICES = 256


_KINDS = {"int": "an integer", "float": "a number", "str": "a string"}


def _check_types(config: AccelConfig) -> None:
    """Every field holds its annotated type: an int field an int (not a bool), a float field a
    finite int or float (JSON's 1e999 reads as infinity), a str field a string."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = str(f.type)
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value))
        elif kind == "str":
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            what = _KINDS[kind]
            if isinstance(value, float) and not math.isfinite(value):
                what = "a finite number"
            raise ConfigError(f"{f.name} must be {what}, not {value!r}")


@dataclass(frozen=True)
class AccelConfig:
    name: str = "custom"  #: label carried into reports
    devices: int = 1  #: FPGAs in the ring
    clock_mhz: float = 300.0  #: kernel clock
    number_format: str = "fp16"  #: storage format of weights and activations
    # HBM
    hbm_ports: int = 32  #: HBM pseudo-channels used, one AXI master each
    hbm_port_width_bits: int = 512  #: AXI data width of each port
    hbm_channel_bytes: int = 256 * 2**20  #: capacity of one pseudo-channel
    hbm_channel_gbps: float = 14.375  #: peak bandwidth of one pseudo-channel (GB/s)
    hbm_efficiency: float = 0.92  #: sustained share of peak on long sequential reads
    hbm_latency_cycles: int = 80  #: read request to first data
    hbm_burst_beats: int = 64  #: longest AXI burst the DMA issues
    hbm_burst_gap_cycles: float = 0.5  #: bus cycles lost per burst (address/turnaround)
    scalar_area_bytes: int = 65536  #: reserved at the bottom of every channel; channel 0
    #: holds the job descriptor, the prompt and the output tokens there
    # MPU
    mpu_lanes: int = 32  #: dot-product lanes, a multiple of hbm_ports
    lane_width: int = 32  #: FP16 values per lane per cycle (one port beat)
    acc_interleave: int = 4  #: partial sums in flight per lane (FP32 adder loop latency)
    mpu_latency_cycles: int = 31  #: last beat to results written: tree, accumulate, round
    prefetch_beats: int = 1024  #: weight FIFO per port (beats), filled ahead by PREFETCH
    prefetch_queue: int = 2  #: PREFETCH descriptors waiting for their MM, at most
    # VPU / SFU
    vector_width: int = 32  #: FP16 values per cycle through the VPU
    vpu_latency_cycles: int = 13  #: elementwise pipeline, VBUF read to write back
    sfu_width: int = 16  #: special-function results per cycle (exp, gelu)
    sfu_latency_cycles: int = 13  #: special-function pipeline, VBUF read to write back
    reduce_latency_cycles: int = 7  #: reduction tree and final accumulate/compare
    scalar_latency_cycles: int = 10  #: FP32 scalar op or scalar special function
    # on-chip memory
    vbuf_words: int = 4 * 2**20  #: vector buffer (FP16 words)
    imem_words: int = 8192  #: instruction memory (256-bit words)
    # ring between devices (bidirectional: each device links to both neighbours)
    ring_gbps: float = 12.5  #: per link direction (QSFP28: 100 Gb/s)
    ring_hop_latency_ns: float = 500.0  #: serdes + router + framing, per hop
    dma_latency_cycles: int = 6  #: the DMA engine's own issue latency (HBM's is separate)
    branch_penalty_cycles: int = 1  #: fetch bubble after a taken branch

    def __post_init__(self) -> None:
        _check_types(self)
        positive_ints = ("devices", "hbm_ports", "hbm_port_width_bits", "hbm_channel_bytes",
                         "hbm_latency_cycles", "hbm_burst_beats", "mpu_lanes", "lane_width",
                         "acc_interleave", "mpu_latency_cycles", "prefetch_beats", "prefetch_queue",
                         "vector_width", "vpu_latency_cycles", "sfu_width",
                         "sfu_latency_cycles", "reduce_latency_cycles",
                         "scalar_latency_cycles", "vbuf_words", "imem_words",
                         "dma_latency_cycles", "scalar_area_bytes")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.devices > MAX_DEVICES:
            raise ConfigError(f"devices must be at most {MAX_DEVICES} (a ring of FPGAs), "
                              f"not {self.devices}")
        for name in ("clock_mhz", "hbm_channel_gbps", "ring_gbps", "ring_hop_latency_ns"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        if not 0 < self.hbm_efficiency <= 1:
            raise ConfigError(f"hbm_efficiency must be in (0, 1], not {self.hbm_efficiency}")
        if self.hbm_burst_gap_cycles < 0:
            raise ConfigError("hbm_burst_gap_cycles must be >= 0")
        if not isinstance(self.branch_penalty_cycles, int) or self.branch_penalty_cycles < 0:
            raise ConfigError(f"branch_penalty_cycles must be an integer >= 0, "
                              f"not {self.branch_penalty_cycles!r}")
        if self.number_format not in NUMBER_FORMATS:
            raise ConfigError(f"number_format must be one of {NUMBER_FORMATS}, "
                              f"not {self.number_format!r}")
        for name in ("lane_width", "vector_width", "sfu_width", "hbm_ports"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ConfigError(f"{name} must be a power of two, not {value}")
        if self.mpu_lanes % self.hbm_ports:
            raise ConfigError(f"mpu_lanes ({self.mpu_lanes}) must be a multiple of hbm_ports "
                              f"({self.hbm_ports}): each port feeds the same number of lanes")
        if self.lane_width * 16 != self.hbm_port_width_bits:
            raise ConfigError(f"lane_width ({self.lane_width}) x 16 bits must equal "
                              f"hbm_port_width_bits ({self.hbm_port_width_bits})")
        if self.vector_width % self.lane_width and self.lane_width % self.vector_width:
            raise ConfigError("vector_width and lane_width must divide one another")
        if self.sfu_width > self.vector_width:
            raise ConfigError(f"sfu_width ({self.sfu_width}) cannot exceed vector_width "
                              f"({self.vector_width})")
        if self.scalar_area_bytes % self.beat_bytes:
            raise ConfigError(f"scalar_area_bytes must be a multiple of the beat "
                              f"({self.beat_bytes} bytes)")
        if self.hbm_channel_bytes <= self.scalar_area_bytes:
            raise ConfigError("hbm_channel_bytes must exceed scalar_area_bytes")

    # -- derived figures -----------------------------------------------------------------------

    @property
    def beat_bytes(self) -> int:
        """Bytes per AXI beat of one HBM port."""
        return self.hbm_port_width_bits // 8

    @property
    def lanes_per_port(self) -> int:
        return self.mpu_lanes // self.hbm_ports

    @property
    def align(self) -> int:
        """Element alignment of every vector in the VBUF (one lane beat and one VPU beat)."""
        return max(self.lane_width, self.vector_width)

    @property
    def hbm_peak_gbps(self) -> float:
        """Peak HBM bandwidth of one device, all ports (the roofline)."""
        return self.hbm_ports * self.hbm_channel_gbps

    @property
    def port_beats_per_cycle(self) -> float:
        """Sustained beats per kernel cycle one port delivers on a long sequential read."""
        channel = self.hbm_channel_gbps * 1e9 * self.hbm_efficiency / self.beat_bytes
        return min(1.0, channel / (self.clock_mhz * 1e6))

    @property
    def ring_bytes_per_cycle(self) -> float:
        return self.ring_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def ring_hop_cycles(self) -> int:
        return math.ceil(self.ring_hop_latency_ns * self.clock_mhz / 1e3)

    def cycles_to_ms(self, cycles: float) -> float:
        return cycles / (self.clock_mhz * 1e3)

    # -- serialisation -------------------------------------------------------------------------

    def with_devices(self, devices: int) -> AccelConfig:
        return dataclasses.replace(self, devices=devices)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AccelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"unknown accelerator config field {unknown[0]!r}")
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> AccelConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"accelerator config is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError("accelerator config must be a JSON object")
        return cls.from_dict(raw)


#: Alveo U280: 8 GB HBM2 in 32 pseudo-channels of 256 MB at 14.375 GB/s (460 GB/s), 2 QSFP28.
#: One 32-wide lane per port at 300 MHz (the platform's default kernel clock): the lanes take
#: a beat per cycle while a port delivers 0.69, so they catch up after every wait. Fmax is an
#: assumption until a Vivado run (not possible here) establishes it.
U280 = AccelConfig(name="u280")
#: Alveo U55C: 16 GB HBM2 in 32 pseudo-channels of 512 MB, 460 GB/s, 2 QSFP28.
U55C = AccelConfig(name="u55c", hbm_channel_bytes=512 * 2**20)
#: Small enough to simulate as RTL: 4 ports of 128 bits, 4 lanes of 8, a 256K-word VBUF.
TINY = AccelConfig(
    name="tiny",
    clock_mhz=200.0,
    hbm_ports=4,
    hbm_port_width_bits=128,
    hbm_channel_bytes=16 * 2**20,
    hbm_channel_gbps=3.2,
    hbm_efficiency=1.0,  # the RTL's HDL memory model has no refresh
    hbm_latency_cycles=24,
    hbm_burst_beats=16,
    hbm_burst_gap_cycles=2.0,  # the RTL weight streamer's cost per burst (measured)
    scalar_area_bytes=16384,
    mpu_lanes=4,
    lane_width=8,
    acc_interleave=4,
    prefetch_beats=64,
    vector_width=8,
    sfu_width=8,
    vbuf_words=256 * 1024,
    imem_words=4096,
    ring_gbps=1.6,
    ring_hop_latency_ns=200.0,
)

PRESETS: dict[str, AccelConfig] = {"tiny": TINY, "u280": U280, "u55c": U55C}


def load_config(spec: str | Path, devices: int | None = None) -> AccelConfig:
    """A preset name (tiny, u280, u55c) or a JSON file; `devices` overrides the count."""
    key = str(spec)
    if key in PRESETS:
        config = PRESETS[key]
    else:
        path = Path(key)
        if not path.is_file():
            raise ConfigError(f"accelerator config {key!r} is neither a preset "
                              f"({', '.join(PRESETS)}) nor a JSON file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"accelerator config {key} cannot be read ({e})") from None
        config = AccelConfig.from_json(text)
    if devices is not None:
        if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
            raise ConfigError(f"devices must be a positive integer, not {devices!r}")
        config = config.with_devices(devices)
    return config


# -- assumptions: what only hardware can settle, and how far each may move ---------------------


@dataclass(frozen=True)
class Assumption:
    """One figure that a projection assumes rather than knows, with its plausible range.

    `optimistic` and `pessimistic` bound the range; `central` is the value a projection's
    headline uses. `field` names the AccelConfig field it sets, or is "" for a figure outside
    the accelerator (the host link)."""

    name: str
    unit: str
    optimistic: float
    central: float
    pessimistic: float
    source: str
    field: str = ""

    def value(self, corner: str) -> float:
        if corner not in CORNERS:
            raise ConfigError(f"corner must be one of {', '.join(CORNERS)}, not {corner!r}")
        return getattr(self, corner)


CORNERS = ("optimistic", "central", "pessimistic")

#: The assumptions behind every full-size projection. Each corner of the band takes all four at
#: once (the figures move the same way together), so the band is the widest honest range.
ASSUMPTIONS: dict[str, Assumption] = {a.name: a for a in (
    Assumption("clock_mhz", "MHz", 300.0, 250.0, 200.0, field="clock_mhz",
               source="300: the U280 platform's default kernel clock; 200: where DFX closed "
               "timing on the same card; no Vivado run here has closed this design"),
    Assumption("hbm_efficiency", "share of peak", 0.92, 0.85, 0.80, field="hbm_efficiency",
               source="0.92: Shuhai's best sequential-read efficiency per pseudo-channel on "
               "the U280; 0.80-0.85: with refresh, row misses and several streams per port"),
    Assumption("ring_hop_latency_ns", "ns", 500.0, 1000.0, 1000.0,
               field="ring_hop_latency_ns",
               source="QSFP28 serdes + framing + router per hop: 0.5-1 us reported for "
               "FPGA-to-FPGA links; DFX reports no per-hop figure"),
    Assumption("pcie_gbps", "GB/s per card", 24.0, 12.0, 12.0,
               source="12: what XDMA host-to-card copies sustain on Gen3 x16; 24: a Gen4 "
               "x16 host link; enters only the GPU-prefill (heterogeneous) figures"),
)}


def at_corner(config: AccelConfig, corner: str) -> AccelConfig:
    """`config` with every accelerator assumption set to its value at `corner`."""
    # keyed by field names known only at run time, so the checker cannot match them to the
    # fields' types: Any says so (every assumption's field is a float field)
    changes: dict[str, Any] = {a.field: a.value(corner) for a in ASSUMPTIONS.values()
                               if a.field}
    return dataclasses.replace(config, **changes)
