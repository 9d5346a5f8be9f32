"""How a GPT-2 maps onto D devices: partition, padded layouts, vector-buffer and HBM plans.

Partitioning follows DFX. Attention is split by heads: device d owns `head_counts[d]`
consecutive heads and their KV cache; when D does not divide the head count the first devices
take one more (25 heads on 4 devices: 7/6/6/6). Every fully-connected layer is split by output
columns, so each output element is computed whole on one device, in the lane's fixed order, and
the slices go round the ring (ALLGATHER) so that every device holds the whole vector. No partial
sums cross devices.

A vector of n values (the hidden vector, n = C; the MLP's, n = I) is split in whole beats of
`align` = max(lane_width, vector_width) values: its ceil(n / align) beats go to the devices
as evenly as they divide, the first devices taking one more, so only the last device's last
beat can be partial. Each device's share sits in a slot of the largest share's size, because
ALLGATHER moves the same `slice` from every device: the hidden vector is D slots of `c_lp`
words (`cp` = D * c_lp), the MLP's D slots of `i_lp` (`ip` = D * i_lp), the heads D slots of
`heads_local` heads (each head's q/k/v/output padded from `hd` to `hdp`: `hp` =
D * heads_local * hdp). A device whose share is smaller leaves the end of its slot zero: it
never writes there, and zero weight rows and columns in the images keep it zero. LayerNorm
multiplies its centred vector by `cmask` (1 for values, 0 for gaps) when gaps exist, so they
never reach a variance.

Why whole beats: a lane sums each beat of products in a fixed tree and then the beats in order
(`hw.numerics.dot`). Splitting in whole beats puts every value at the same place inside its
beat for every device count, and the gaps are whole beats of zeros, which add exactly; so every
dot product, reduction and hence every token and logit is bit-identical for every device
count (up to the sign of a sum that is exactly zero). When D * align divides n this is the even
split of n / D values per device with no gaps. The first device always holds the largest share
of heads, columns and vocabulary rows, so it is the slowest one, the one a timing-only run
simulates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from hw.config import AccelConfig
from hw.intmath import ceil_div, round_up
from hw.layout import DESC, matrix_bytes_per_channel, vector_bytes_per_channel

from .errors import CompileError
from .moe import MoEPlan, plan_moe

__all__ = ["ModelShape", "Plan", "make_plan", "slot_positions", "split_counts"]


def split_counts(n: int, parts: int) -> list[int]:
    """n items over `parts` devices, as evenly as they divide, the first devices taking one
    more: 25 over 4 -> [7, 6, 6, 6]."""
    return [n // parts + (k < n % parts) for k in range(parts)]


def _split_beats(n: int, devices: int, align: int, what: str) -> tuple[list[int], int]:
    """n values split in whole beats of `align`: (values on each device, slot words)."""
    beats = ceil_div(n, align)
    if beats < devices:
        raise CompileError(f"{what} ({n}) is {beats} beat(s) of {align} values and is split "
                           f"in whole beats; it cannot be split over {devices} devices")
    shares = split_counts(beats, devices)
    starts = [align * sum(shares[:k]) for k in range(devices)]
    counts = [min(n - start, share * align) for start, share in zip(starts, shares, strict=True)]
    return counts, shares[0] * align


def slot_positions(counts: list[int], slot: int) -> list[int]:
    """Where the values of a split vector sit in its slotted layout: device k's counts[k]
    values start at k * slot."""
    return [k * slot + j for k, count in enumerate(counts) for j in range(count)]


@dataclass(frozen=True)
class ModelShape:
    """The parts of a GPT-2 configuration the compiler needs."""

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5
    activation: str = "tanh"  # GELU form; the accelerator implements the tanh form
    tied_head: bool = True  # the LM head is the token embedding (GPT-2's default)
    # MoE-GPT (see host.compiler.moe); a dense GPT-2 has no MoE blocks
    moe_layers: tuple[int, ...] = ()  # blocks whose FFN is an MoE layer
    moe_experts: int = 0  # experts per MoE block (each as wide as the dense MLP, n_inner)
    moe_top_k: int = 0  # experts per token
    moe_renormalize: bool = True  # combine weights renormalised over the top-k

    @classmethod
    def from_config(cls, config) -> ModelShape:
        from models.config import ACTIVATIONS

        return cls(config.vocab_size, config.n_positions, config.n_embd, config.n_layer,
                   config.n_head, config.inner_dim, config.layer_norm_epsilon,
                   ACTIVATIONS[config.activation_function], config.tie_word_embeddings,
                   **_moe_fields(config))

    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layers)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def weight_bytes_fp16(self) -> int:
        """Bytes of FP16 weights streamed per token (all layers plus the tied LM head)."""
        c, i = self.n_embd, self.n_inner
        attn, mlp = c * 3 * c + c * c, c * i + i * c
        moe = len(self.moe_layers) * (c * self.moe_experts + (self.moe_top_k - 1) * mlp)
        return 2 * (self.n_layer * (attn + mlp) + moe + self.vocab_size * c)


def _moe_fields(config) -> dict:
    """The MoE fields of an MoE-GPT config; refuses what the accelerator does not run."""
    if getattr(config, "model_type", None) != "moe_gpt2":
        return {}
    if config.moe_gate != "topk":
        raise CompileError(f"the accelerator routes with the top-k gate; moe_gate="
                           f"{config.moe_gate!r} is not supported (use moe_gate='topk')")
    if config.moe_use_residual:
        raise CompileError("residual MoE (moe_use_residual) is not supported on the "
                           "accelerator; use a plain MoE checkpoint")
    if config.moe_top_k > 2:
        raise CompileError(f"the accelerator routes to at most 2 experts per token; this "
                           f"model has moe_top_k={config.moe_top_k}")
    if config.moe_eval_drop_tokens:
        raise CompileError("capacity dropping at inference (moe_eval_drop_tokens) is not "
                           "supported on the accelerator; set moe_eval_drop_tokens to false")
    counts = {config.experts_in(layer) for layer in config.moe_layers}
    if len(counts) != 1:
        raise CompileError(f"MoE blocks with different expert counts ({sorted(counts)}) are "
                           "not supported on the accelerator; give every block the same count")
    return {"moe_layers": tuple(config.moe_layers), "moe_experts": counts.pop(),
            "moe_top_k": config.moe_top_k, "moe_renormalize": bool(config.moe_renormalize)}


@dataclass
class Region:
    """A named allocation: VBUF words, or bytes per HBM channel at the same offset in each."""

    offset: int
    size: int


@dataclass
class Plan:
    shape: ModelShape
    config: AccelConfig
    # partition (per device); heads_local, c_l and i_l are the largest shares
    heads_local: int
    hd: int
    hdp: int
    c_l: int
    c_lp: int
    cp: int
    i_l: int
    i_lp: int
    ip: int
    hp: int  # all heads, padded: n_head * hdp
    qkv_rows: int  # 3 * heads_local * hdp
    tp: int  # n_positions padded to align
    vocab_local: int  # wte rows per device slice (a multiple of the port count)
    vocab_rows: list[int]  # real vocabulary rows on each device
    head_counts: list[int]  # heads on each device
    c_counts: list[int]  # hidden-vector values (rows of c_proj, c_fcproj) on each device
    i_counts: list[int]  # MLP values (rows of c_fc) on each device
    chunk: int  # most tokens one pass processes (prefill chunk)
    gaps: bool  # padded layouts contain gaps (LayerNorm needs cmask)
    # beats per row of each matrix
    ldb_c: int
    ldb_h: int
    ldb_i: int
    ldb_hd: int
    ldb_t: int
    vbuf: dict[str, Region] = field(default_factory=dict)
    hbm: dict[str, Region] = field(default_factory=dict)
    layer_regions: dict[str, Region] = field(default_factory=dict)  # offsets inside a layer
    kv_regions: dict[str, Region] = field(default_factory=dict)  # offsets inside a KV layer
    layer_stride: int = 0
    kv_stride: int = 0
    par: dict[str, Region] = field(default_factory=dict)  # parameter vector fields (words)
    moe: MoEPlan | None = None  # expert placement and slots, for MoE-GPT

    @property
    def devices(self) -> int:
        return self.config.devices

    def head_start(self, device: int) -> int:
        """The first (global) head of `device`."""
        return sum(self.head_counts[:device])

    def c_start(self, device: int) -> int:
        """The first hidden-vector value (output column) of `device`."""
        return sum(self.c_counts[:device])

    def i_start(self, device: int) -> int:
        """The first MLP value (output column of c_fc) of `device`."""
        return sum(self.i_counts[:device])

    def qkv_rows_of(self, device: int) -> int:
        """Rows of `device`'s QKV matrix: q, k and v of each of its heads, padded."""
        return 3 * self.head_counts[device] * self.hdp

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items()
               if k not in ("shape", "config", "vbuf", "hbm", "layer_regions", "kv_regions",
                            "par", "moe")}
        out["vbuf_words_used"] = max(r.offset + r.size for r in self.vbuf.values())
        out["hbm_bytes_per_channel"] = max(r.offset + r.size for r in self.hbm.values())
        if self.moe is not None:
            out["moe"] = self.moe.summary()
        return out


def make_plan(shape: ModelShape, config: AccelConfig, max_chunk: int = 128,
              expert_loads: dict | None = None) -> Plan:
    d = config.devices
    a = config.align
    w = config.lane_width
    if shape.activation != "tanh":
        raise CompileError("the accelerator's GELU is the tanh form (GPT-2's gelu_new); "
                           "this model uses the erf form")
    if shape.n_embd % shape.n_head:
        raise CompileError(f"n_embd ({shape.n_embd}) is not divisible by n_head "
                           f"({shape.n_head}); every head must be equally wide")
    if shape.n_head < d:
        raise CompileError(f"n_head ({shape.n_head}) is fewer than devices ({d}); attention "
                           "is split by heads, at least one per device")
    head_counts = split_counts(shape.n_head, d)
    c_counts, c_lp = _split_beats(shape.n_embd, d, a, "n_embd")
    i_counts, i_lp = _split_beats(shape.n_inner, d, a, "the MLP width")
    hl = head_counts[0]
    hd = shape.head_dim
    hdp = round_up(hd, a)
    c_l = c_counts[0]
    i_l = i_counts[0]
    vocab_local = round_up(ceil_div(shape.vocab_size, d), config.hbm_ports)
    vocab_rows = [max(0, min(vocab_local, shape.vocab_size - k * vocab_local)) for k in range(d)]
    if min(vocab_rows) == 0:
        raise CompileError(f"a vocabulary of {shape.vocab_size} cannot be split over {d} "
                           f"devices of {config.hbm_ports} ports; use fewer devices")
    p = Plan(
        shape=shape, config=config, heads_local=hl, hd=hd, hdp=hdp, c_l=c_l, c_lp=c_lp,
        cp=d * c_lp, i_l=i_l, i_lp=i_lp, ip=d * i_lp, hp=d * hl * hdp,
        qkv_rows=3 * hl * hdp, tp=round_up(shape.n_positions, a), vocab_local=vocab_local,
        vocab_rows=vocab_rows, head_counts=head_counts, c_counts=c_counts, i_counts=i_counts,
        chunk=0, gaps=(d * c_lp != shape.n_embd),
        ldb_c=0, ldb_h=0, ldb_i=0, ldb_hd=0, ldb_t=0,
    )
    p.ldb_c, p.ldb_h, p.ldb_i = p.cp // w, p.hp // w, p.ip // w
    p.ldb_hd, p.ldb_t = hdp // w, p.tp // w
    if shape.is_moe:
        p.moe = plan_moe(shape, config, expert_loads)
    _plan_vbuf(p, max_chunk)
    _plan_hbm(p)
    return p


def _plan_vbuf(p: Plan, max_chunk: int) -> None:
    cfg = p.config
    a = cfg.align
    # parameter vector of one layer, in the order the HBM image stores it
    par_fields = [("ln1_g", p.cp), ("ln1_b", p.cp), ("attn_b", p.qkv_rows), ("proj_b", p.c_lp),
                  ("ln2_g", p.cp), ("ln2_b", p.cp), ("fc_b", p.i_lp), ("fcproj_b", p.c_lp)]
    off = 0
    for name, size in par_fields:
        p.par[name] = Region(off, size)
        off += round_up(size, a)
    par_words = off
    fixed = [("par", par_words), ("lnf", 2 * p.cp), ("cmask", p.cp), ("tmp", p.cp),
             ("scores", p.heads_local * p.tp), ("logits", round_up(p.vocab_local, a)),
             ("head_in", p.cp)]
    per_token = [("x", p.cp), ("h", p.cp), ("qkv", p.qkv_rows), ("att", p.hp), ("y", p.cp),
                 ("m", p.ip)]
    if p.moe is not None:  # router and expert work buffers; per token: logits, D slots
        m = p.moe
        fixed += [("gexp", m.ep), ("gw", a), ("zero", p.cp), ("epar", m.ie_p + p.cp),
                  ("em", m.ie_p), ("ey", p.cp)]
        per_token += [("glog", m.ep), ("moe_y", p.devices * p.cp)]
    fixed_words = sum(round_up(s, a) for _, s in fixed)
    token_words = sum(round_up(s, a) for _, s in per_token)
    room = cfg.vbuf_words - fixed_words
    if room < token_words:
        raise CompileError(
            f"the vector buffer needs {fixed_words + token_words} words for one token; the "
            f"config has vbuf_words={cfg.vbuf_words}"
        )
    fit = room // token_words
    chunk = min(max_chunk, p.shape.n_positions, 2 ** int(math.log2(fit)))
    p.chunk = chunk
    off = 0
    for name, size in fixed:
        p.vbuf[name] = Region(off, round_up(size, a))
        off += round_up(size, a)
    for name, size in per_token:
        p.vbuf[name] = Region(off, chunk * round_up(size, a))
        off += chunk * round_up(size, a)


def _plan_hbm(p: Plan) -> None:
    cfg = p.config
    ports, beat, w = cfg.hbm_ports, cfg.beat_bytes, cfg.lane_width
    if DESC.size(p.shape.n_positions) > cfg.scalar_area_bytes:
        raise CompileError(f"a {p.shape.n_positions}-token job descriptor needs "
                           f"{DESC.size(p.shape.n_positions)} bytes of scalar area; the config "
                           f"has scalar_area_bytes={cfg.scalar_area_bytes}")

    def mat(rows, ldb):
        return matrix_bytes_per_channel(rows, ldb, ports, beat)

    def vec(n):
        return vector_bytes_per_channel(n, w, ports, beat)

    off = cfg.scalar_area_bytes
    vocab_matrix = mat(cfg.devices * p.vocab_local, p.ldb_c)
    regions = [("wte", vocab_matrix), ("wpe", mat(p.shape.n_positions, p.ldb_c)),
               ("lnf", vec(2 * p.cp)), ("cmask", vec(p.cp))]
    if not p.shape.tied_head:
        regions.append(("lm_head", vocab_matrix))
    for name, size in regions:
        p.hbm[name] = Region(off, size)
        off += size
    par_words = sum(round_up(r.size, cfg.align) for r in p.par.values())
    inner = 0
    for name, size in [("par", vec(par_words)),
                       ("c_attn", mat(p.qkv_rows, p.ldb_c)),
                       ("c_proj", mat(p.c_l, p.ldb_h)),
                       ("c_fc", mat(p.i_l, p.ldb_c)),
                       ("c_fcproj", mat(p.c_l, p.ldb_i))]:
        p.layer_regions[name] = Region(inner, size)
        inner += size
    dense_inner = inner
    if p.moe is not None:
        m = p.moe
        e_inner = 0
        for name, size in [("epar", vec(m.ie_p + p.cp)), ("e_fc", mat(m.ie_p, p.ldb_c)),
                           ("e_proj", mat(p.cp, m.ldb_ie))]:
            m.expert_regions[name] = Region(e_inner, size)
            e_inner += size
        m.expert_stride = e_inner
        # an MoE layer shares par, c_attn and c_proj with a dense one; then router, experts
        inner = p.layer_regions["c_fc"].offset
        for name, size in [("gate", mat(m.experts, p.ldb_c)), ("experts", m.slots * e_inner)]:
            p.layer_regions[name] = Region(inner, size)
            inner += size
        dense = len(m.layers) < p.shape.n_layer
        inner = max(inner, dense_inner if dense else 0)
        tables = round_up(DESC.size(p.shape.n_positions), 64)
        m.kind_table = tables
        m.slot_table = tables + 4 * p.shape.n_layer
        end = m.slot_table + 4 * p.shape.n_layer * m.experts
        if end > cfg.scalar_area_bytes:
            raise CompileError(f"the job descriptor and the MoE tables need {end} bytes of "
                               f"scalar area; the config has scalar_area_bytes="
                               f"{cfg.scalar_area_bytes}")
    p.layer_stride = inner
    p.hbm["layers"] = Region(off, p.shape.n_layer * inner)
    off += p.shape.n_layer * inner
    inner = 0
    for h in range(p.heads_local):
        for name, size in [(f"k{h}", mat(p.shape.n_positions, p.ldb_hd)),
                           (f"v{h}", mat(p.hdp, p.ldb_t))]:
            p.kv_regions[name] = Region(inner, size)
            inner += size
    p.kv_stride = inner
    p.hbm["kv"] = Region(off, p.shape.n_layer * inner)
    off += p.shape.n_layer * inner
    if off > cfg.hbm_channel_bytes:
        raise CompileError(
            f"the model needs {off / 2**20:.1f} MiB in each HBM channel; the config has "
            f"{cfg.hbm_channel_bytes / 2**20:.1f} MiB (hbm_channel_bytes); use more devices "
            "or a board with larger channels"
        )
