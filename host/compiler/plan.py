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
ALLGATHER moves the same `slice` from every device: the hidden vector is D slots of
`hidden_slot` words (`hidden_padded` = D * hidden_slot), the MLP's D slots of `mlp_slot`
(`mlp_padded` = D * mlp_slot), the heads D slots of `slot_heads` heads (each head's
q/k/v/output padded from `head_dim` to `head_dim_padded`: `heads_padded` = D * slot_heads *
head_dim_padded). A device whose share is smaller leaves the end of its slot zero: it
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
from .region import Region

__all__ = ["SCALAR_WORD_BYTES", "ModelShape", "Plan", "make_plan", "slot_positions",
           "split_counts"]

#: Bytes of one word of channel 0's scalar area: every field of the job descriptor
#: (`hw.layout.DESC`), prompt and output token and MoE table entry is an int32.
SCALAR_WORD_BYTES = 4


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
class Plan:
    """Where every part of the model lives on every device: the partition, the padded
    layouts of the vectors, and the vector-buffer and HBM allocations.

    Sizes are in values (FP16 words) unless they say otherwise. The per-device sizes
    (`slot_heads`, `hidden_share`, `mlp_share`, `vocab_slot`) are device 0's, the largest
    share; every device's program and image is laid out in slots of that size."""

    shape: ModelShape
    """The model being mapped."""
    config: AccelConfig
    """The accelerator it is mapped onto (devices, lanes, HBM, vector buffer)."""

    # -- the partition and the padded layouts (see the module docstring) --
    slot_heads: int
    """Heads in each device's slot of the gathered head outputs: device 0's share, the
    largest. Also the number of K/V regions in a device's KV layer."""
    head_dim: int
    """Values per head (n_embd / n_head)."""
    head_dim_padded: int
    """`head_dim` rounded up to whole beats: the stride between heads in every layout (q, k,
    v, the head outputs, the KV cache rows)."""
    hidden_share: int
    """Hidden-vector values on device 0, the largest share: the rows of its attention
    projection and MLP-down slices."""
    hidden_slot: int
    """Words of each device's slot in the hidden-vector layout (`hidden_share` rounded up to
    whole beats): the slice each device contributes to an ALLGATHER of the hidden vector."""
    hidden_padded: int
    """Words of the whole hidden vector in its slotted layout: devices * `hidden_slot`. The
    length of every hidden-vector operation and the columns of every matrix that reads it."""
    mlp_share: int
    """MLP values on device 0, the largest share: the rows of its MLP-up slice."""
    mlp_slot: int
    """Words of each device's slot in the MLP vector's layout (`mlp_share` in whole beats)."""
    mlp_padded: int
    """Words of the whole MLP vector in its slotted layout: devices * `mlp_slot`."""
    heads_padded: int
    """Words of all heads' outputs in their slotted layout: devices * `slot_heads` *
    `head_dim_padded`; the columns of the attention projection."""
    qkv_rows: int
    """Rows of device 0's QKV slice, 3 * `slot_heads` * `head_dim_padded`: the stride between
    tokens in the QKV buffer (every device uses device 0's, so the programs agree)."""
    positions_padded: int
    """n_positions rounded up to whole beats: the stride between heads' score rows and the
    row length of the transposed V cache."""
    vocab_slot: int
    """Rows of the LM head in each device's slice (a multiple of the HBM port count); device
    d's slice starts at row d * `vocab_slot` and its logits at that index."""
    vocab_rows: list[int]
    """Real vocabulary rows on each device (the last device's may be fewer)."""
    head_counts: list[int]
    """Heads on each device."""
    hidden_counts: list[int]
    """Hidden-vector values (rows of c_proj and of the MLP down projection) on each device."""
    mlp_counts: list[int]
    """MLP values (rows of c_fc) on each device."""
    prefill_chunk: int
    """The most tokens one pass processes: the prefill chunk, as many tokens' buffers as fit
    in the vector buffer (a power of two, at most max_chunk and n_positions)."""
    has_gaps: bool
    """The slotted layouts contain gaps (zero words between devices' shares), so LayerNorm
    multiplies by `cmask` to keep them out of the variance."""

    # -- leading dimensions: beats per row of each kind of matrix (the ISA's `ldb`) --
    ldb_hidden: int
    """Beats per row of a matrix whose rows are hidden vectors (QKV, MLP up, wte, wpe)."""
    ldb_heads: int
    """Beats per row of the attention projection (rows are the gathered head outputs)."""
    ldb_mlp: int
    """Beats per row of the MLP down projection (rows are MLP vectors)."""
    ldb_head_dim: int
    """Beats per row of the K cache (one padded head per position)."""
    ldb_positions: int
    """Beats per row of the transposed V cache (one row per head value, over positions)."""

    # -- allocations --
    vbuf: dict[str, Region] = field(default_factory=dict)
    """Vector-buffer regions, in words (names listed in `_plan_vbuf`)."""
    hbm: dict[str, Region] = field(default_factory=dict)
    """HBM regions, in bytes per channel at the same offset in every channel."""
    layer_regions: dict[str, Region] = field(default_factory=dict)
    """Offsets inside one layer's HBM region (bytes per channel)."""
    kv_regions: dict[str, Region] = field(default_factory=dict)
    """Offsets of each local head's K and transposed V inside one layer's KV region."""
    layer_stride: int = 0
    """Bytes per channel between consecutive layers' regions."""
    kv_stride: int = 0
    """Bytes per channel between consecutive layers' KV regions."""
    params: dict[str, Region] = field(default_factory=dict)
    """The fields of a layer's parameter vector (LayerNorms and biases), in words from the
    start of the `par` vector-buffer region, in the order the HBM image stores them."""
    moe: MoEPlan | None = None
    """Expert placement and slots, for MoE-GPT; None for a dense model."""

    @property
    def devices(self) -> int:
        return self.config.devices

    def head_start(self, device: int) -> int:
        """The first (global) head of `device`."""
        return sum(self.head_counts[:device])

    def hidden_start(self, device: int) -> int:
        """The first hidden-vector value (output column) of `device`."""
        return sum(self.hidden_counts[:device])

    def mlp_start(self, device: int) -> int:
        """The first MLP value (output column of c_fc) of `device`."""
        return sum(self.mlp_counts[:device])

    def qkv_rows_of(self, device: int) -> int:
        """Rows of `device`'s QKV matrix: q, k and v of each of its heads, padded."""
        return 3 * self.head_counts[device] * self.head_dim_padded

    def summary(self) -> dict:
        """The partition's sizes (every scalar and per-device field), and the memory used."""
        out = {k: v for k, v in asdict(self).items()
               if k not in ("shape", "config", "vbuf", "hbm", "layer_regions", "kv_regions",
                            "params", "moe")}
        out["vbuf_words_used"] = max(r.offset + r.size for r in self.vbuf.values())
        out["hbm_bytes_per_channel"] = max(r.offset + r.size for r in self.hbm.values())
        if self.moe is not None:
            out["moe"] = self.moe.summary()
        return out


def make_plan(shape: ModelShape, config: AccelConfig, max_chunk: int = 128,
              expert_loads: dict | None = None) -> Plan:
    """Partition `shape` over `config.devices` and allocate the vector buffer and HBM;
    refuses with a `CompileError` what does not fit."""
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
    hidden_counts, hidden_slot = _split_beats(shape.n_embd, d, a, "n_embd")
    mlp_counts, mlp_slot = _split_beats(shape.n_inner, d, a, "the MLP width")
    slot_heads = head_counts[0]
    head_dim_padded = round_up(shape.head_dim, a)
    vocab_slot = round_up(ceil_div(shape.vocab_size, d), config.hbm_ports)
    vocab_rows = [max(0, min(vocab_slot, shape.vocab_size - k * vocab_slot)) for k in range(d)]
    if min(vocab_rows) == 0:
        raise CompileError(f"a vocabulary of {shape.vocab_size} cannot be split over {d} "
                           f"devices of {config.hbm_ports} ports; use fewer devices")
    hidden_padded, mlp_padded = d * hidden_slot, d * mlp_slot
    heads_padded = d * slot_heads * head_dim_padded
    positions_padded = round_up(shape.n_positions, a)
    p = Plan(
        shape=shape, config=config, slot_heads=slot_heads, head_dim=shape.head_dim,
        head_dim_padded=head_dim_padded, hidden_share=hidden_counts[0], hidden_slot=hidden_slot,
        hidden_padded=hidden_padded, mlp_share=mlp_counts[0], mlp_slot=mlp_slot,
        mlp_padded=mlp_padded, heads_padded=heads_padded,
        qkv_rows=3 * slot_heads * head_dim_padded, positions_padded=positions_padded,
        vocab_slot=vocab_slot, vocab_rows=vocab_rows, head_counts=head_counts,
        hidden_counts=hidden_counts, mlp_counts=mlp_counts,
        prefill_chunk=0,  # set by _plan_vbuf: what fits beside the fixed regions
        has_gaps=(hidden_padded != shape.n_embd),
        ldb_hidden=hidden_padded // w, ldb_heads=heads_padded // w, ldb_mlp=mlp_padded // w,
        ldb_head_dim=head_dim_padded // w, ldb_positions=positions_padded // w,
    )
    if shape.is_moe:
        p.moe = plan_moe(shape, config, expert_loads)
    _plan_vbuf(p, max_chunk)
    _plan_hbm(p)
    return p


def _plan_vbuf(p: Plan, max_chunk: int) -> None:
    """Lay out the vector buffer: the fixed regions, then as many tokens' buffers as fit
    (`prefill_chunk`, a power of two).

    Fixed regions: `par` a layer's parameter vector (fields in `Plan.params`), `lnf` the final
    LayerNorm's gain and bias, `cmask` the layout's value mask, `tmp` a position embedding,
    `scores` one token's attention scores per local head, `logits` this device's LM-head
    slice, `head_in` the final LayerNorm of the last token. Per token: `x` the residual
    stream, `h` a LayerNorm's output, `qkv` the local heads' q/k/v, `att` the gathered head
    outputs, `y` a gathered projection, `m` the gathered MLP vector. MoE-GPT adds `gexp`
    exp(logit - max) of the router, `gw` the chosen experts' combine weights, `zero` a zero
    vector, `epar` an expert's biases, `em` and `ey` an expert's hidden and output vectors,
    and per token `glog` the router logits and `moe_y` one slot per device for its experts'
    weighted outputs."""
    cfg = p.config
    a = cfg.align
    hidden = p.hidden_padded
    # parameter vector of one layer, in the order the HBM image stores it
    par_fields = [("ln1_g", hidden), ("ln1_b", hidden), ("attn_b", p.qkv_rows),
                  ("proj_b", p.hidden_slot), ("ln2_g", hidden), ("ln2_b", hidden),
                  ("fc_b", p.mlp_slot), ("fcproj_b", p.hidden_slot)]
    off = 0
    for name, size in par_fields:
        p.params[name] = Region(off, size)
        off += round_up(size, a)
    par_words = off
    fixed = [("par", par_words), ("lnf", 2 * hidden), ("cmask", hidden), ("tmp", hidden),
             ("scores", p.slot_heads * p.positions_padded),
             ("logits", round_up(p.vocab_slot, a)), ("head_in", hidden)]
    per_token = [("x", hidden), ("h", hidden), ("qkv", p.qkv_rows), ("att", p.heads_padded),
                 ("y", hidden), ("m", p.mlp_padded)]
    if p.moe is not None:  # router and expert work buffers; per token: logits, D slots
        m = p.moe
        fixed += [("gexp", m.router_padded), ("gw", a), ("zero", hidden),
                  ("epar", m.expert_hidden_padded + hidden), ("em", m.expert_hidden_padded),
                  ("ey", hidden)]
        per_token += [("glog", m.router_padded), ("moe_y", p.devices * hidden)]
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
    p.prefill_chunk = chunk
    off = 0
    for name, size in fixed:
        p.vbuf[name] = Region(off, round_up(size, a))
        off += round_up(size, a)
    for name, size in per_token:
        p.vbuf[name] = Region(off, chunk * round_up(size, a))
        off += chunk * round_up(size, a)


def _plan_hbm(p: Plan) -> None:
    """Lay out each HBM channel: the scalar area (job descriptor, MoE tables), the embeddings
    and final LayerNorm, the layers (`layer_regions` repeated every `layer_stride` bytes) and
    the KV cache (`kv_regions` every `kv_stride`); refuses a model that overflows a channel."""
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
    vocab_matrix = mat(cfg.devices * p.vocab_slot, p.ldb_hidden)
    regions = [("wte", vocab_matrix), ("wpe", mat(p.shape.n_positions, p.ldb_hidden)),
               ("lnf", vec(2 * p.hidden_padded)), ("cmask", vec(p.hidden_padded))]
    if not p.shape.tied_head:
        regions.append(("lm_head", vocab_matrix))
    for name, size in regions:
        p.hbm[name] = Region(off, size)
        off += size
    par_words = sum(round_up(r.size, cfg.align) for r in p.params.values())
    inner = 0
    for name, size in [("par", vec(par_words)),
                       ("c_attn", mat(p.qkv_rows, p.ldb_hidden)),
                       ("c_proj", mat(p.hidden_share, p.ldb_heads)),
                       ("c_fc", mat(p.mlp_share, p.ldb_hidden)),
                       ("c_fcproj", mat(p.hidden_share, p.ldb_mlp))]:
        p.layer_regions[name] = Region(inner, size)
        inner += size
    dense_inner = inner
    if p.moe is not None:
        m = p.moe
        e_inner = 0
        for name, size in [("epar", vec(m.expert_hidden_padded + p.hidden_padded)),
                           ("e_fc", mat(m.expert_hidden_padded, p.ldb_hidden)),
                           ("e_proj", mat(p.hidden_padded, m.ldb_expert_hidden))]:
            m.expert_regions[name] = Region(e_inner, size)
            e_inner += size
        m.expert_stride = e_inner
        # an MoE layer shares par, c_attn and c_proj with a dense one; then router, experts
        inner = p.layer_regions["c_fc"].offset
        for name, size in [("gate", mat(m.experts, p.ldb_hidden)),
                           ("experts", m.slots_per_device * e_inner)]:
            p.layer_regions[name] = Region(inner, size)
            inner += size
        dense = len(m.layers) < p.shape.n_layer
        inner = max(inner, dense_inner if dense else 0)
        tables = round_up(DESC.size(p.shape.n_positions), 64)
        m.kind_table = tables
        m.slot_table = tables + SCALAR_WORD_BYTES * p.shape.n_layer
        end = m.slot_table + SCALAR_WORD_BYTES * p.shape.n_layer * m.experts
        if end > cfg.scalar_area_bytes:
            raise CompileError(f"the job descriptor and the MoE tables need {end} bytes of "
                               f"scalar area; the config has scalar_area_bytes="
                               f"{cfg.scalar_area_bytes}")
    p.layer_stride = inner
    p.hbm["layers"] = Region(off, p.shape.n_layer * inner)
    off += p.shape.n_layer * inner
    inner = 0
    for h in range(p.slot_heads):
        for name, size in [(f"k{h}", mat(p.shape.n_positions, p.ldb_head_dim)),
                           (f"v{h}", mat(p.head_dim_padded, p.ldb_positions))]:
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
