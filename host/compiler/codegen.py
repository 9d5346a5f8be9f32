"""Program generation: one program per device that runs a whole generation job.

The program reads the job descriptor (`hw.layout.DESC`), then loops over *passes*. A pass
processes n tokens at positions pos..pos+n-1 through every layer: while prompt tokens remain,
n = min(remaining, prefill_chunk) and the tokens come from the prompt (prefill, matrix-matrix:
each weight is streamed once per chunk); afterwards n = 1 and the token is the last one
generated (decode). A pass that reaches the end of the prompt ends with the final LayerNorm,
the LM head, an on-device argmax across the ring and TOKOUT. One layer body serves both phases.

`ProgramBuilder.build` emits the program in this order, one method per part:

    job setup        read the descriptor, load the constants, PREFETCH layer 0's first two
                     matrices                                             (emit_job_setup)
    pass:            n = min(prompt left, prefill_chunk), or 1 in decode  (emit_pass_start)
      embeddings     x[j] = wte[token] + wpe[pos + j] for each token j    (emit_embeddings)
      layer:         for each layer                                       (emit_layers)
        attention    LayerNorm, QKV, append K and V to the cache, per head scores, softmax
                     and values, ALLGATHER the heads, projection, ALLGATHER (emit_attention)
        FFN          residual + LayerNorm, then the dense MLP: up, GELU, ALLGATHER, down,
                     ALLGATHER, residual (emit_mlp); or, in an MoE block, the router and the
                     local experts (emit_moe_ffn)
      prefill loop   pos += n; another pass while the prompt lasts        (emit_prefill_loop)
      LM head        final LayerNorm of the pass's last token, this device's vocabulary
                     slice                                                (emit_lm_head)
      decode loop    ARGMAX over the ring, TOKOUT; another pass while tokens remain to be
                     generated; then TOKOUT the count and HALT            (emit_decode_loop)

Every loop over the tokens of a pass is `_token_loop`: a counter register j and base
registers that step by one token's stride, so one instruction sequence serves every token.

Weights are prefetched two matrices ahead: the weight MMs of a pass form one stream
(per layer QKV, attention projection, MLP up, MLP down; then the LM head if the pass ends the
prompt; then the next pass), and right after each MM the program queues the PREFETCH of the
matrix two places further in that stream. The prefetcher so always has the next matrix to fetch
while the lanes wait for the vector unit or the ring.

MoE-GPT (`host.compiler.moe`): the layer loop reads each layer's kind from a scalar-area table
and branches to the dense MLP or to the MoE FFN. An MoE block's stream is QKV, projection,
router, then per token the chosen local experts (each PREFETCHed just before its MMs: which
expert is known only once the router has run), and it ends by queueing the same two matrices
the dense MLP would have, so the stream after it is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hw.isa import Instr, Operand
from hw.layout import DESC

from .moe import MoEPlan
from .plan import SCALAR_WORD_BYTES, Plan

__all__ = ["R_LAYER", "Asm", "ProgramBuilder", "generate_program"]

# -- integer registers -----------------------------------------------------------------------
# One name per register. A register that serves two roles says both in its name; the roles
# are never live at once.
#: Reads as 0 (writes are dropped): the other side of a compare with zero.
R_ZERO = 0
#: Prompt tokens (descriptor N_PROMPT).
R_PROMPT_LEN = 1
#: Position of the pass's first token; advanced by n at the end of every pass.
R_POS = 2
#: Tokens to generate (descriptor MAX_NEW).
R_MAX_NEW = 3
#: Tokens generated so far.
R_N_OUT = 4
#: Tokens in this pass: up to prefill_chunk while the prompt lasts, then 1.
R_N = 5
#: The layer loop's counter.
R_LAYER = 6
#: HBM offset of the current layer's weights.
R_LAYER_BASE = 7
#: HBM offset of the current layer's KV cache.
R_KV_BASE = 8
#: The token loops' counter: token j of the pass.
R_J = 9
#: A value made and used within a few instructions: a token's position, a loop test's
#: operand, a chosen expert's slot, base and row offset.
R_SCRATCH = 10
#: The generated token: written by the argmax and read by the next pass's embedding, both
#: outside the layers. Inside a layer of an MoE model, where no token is live, the layer's
#: kind; then, in the MoE FFN, the offset of token j's router logits and of its `moe_y` row.
R_TOKEN_KIND_ROW = 11
#: Token j's offset in the hidden-vector buffers (x, h, y).
R_X_OFFSET = 12
#: Attention: token j's offset in the QKV buffer. The MoE FFN (after attention): the first
#: chosen expert.
R_QKV_OR_EXPERT1 = 13
#: Token j's offset in the head outputs (attention) and in the MLP vector (GELU). The MoE
#: FFN: the second chosen expert.
R_OUT_OR_EXPERT2 = 14
#: A second scratch value: a table entry's byte offset, a loop's limit, layer 0's base.
R_SCRATCH2 = 15

# -- FP32 scalar registers -----------------------------------------------------------------
#: The temporaries of the fixed unit sequences (LayerNorm, softmax); each sequence's values
#: live only inside it, so they share s1-s6.
S_SCRATCH = (1, 2, 3, 4, 5, 6)
#: 1/sqrt(head_dim), scales q.
S_QSCALE = 7
#: The LM head's largest logit: ARGMAX writes it, ARGMAXALL compares it across the ring.
S_ARGMAX = 8
#: An MoE token's largest router logit.
S_ROUTER_MAX = 9
#: The combine weights of the first and second chosen experts.
S_WEIGHT1, S_WEIGHT2 = 10, 11
#: -Inf, masks the first chosen expert's logit before the second ARGMAX.
S_NEG_INF = 12
#: The router's working value: a chosen expert's e_i, then their sum and its reciprocal.
S_ROUTER_SUM = 13


def _o(imm: int = 0, reg: int = 0) -> Operand:
    return Operand(imm, reg)


class Asm:
    """Builds a program: `emit(op, **args)`, `label(name)`, branch targets by label name."""

    def __init__(self) -> None:
        self.program: list[Instr] = []
        self.labels: dict[str, int] = {}

    def emit(self, op: str, comment: str = "", **args) -> None:
        self.program.append(Instr(op, args, comment))

    def label(self, name: str) -> None:
        if name in self.labels:
            raise ValueError(f"label {name!r} defined twice")
        self.labels[name] = len(self.program)

    def finish(self) -> list[Instr]:
        for i, ins in enumerate(self.program):
            target = ins.args.get("target")
            if isinstance(target, str):
                ins.args["target"] = self.labels[target]
            elif "target" in ins.args and not isinstance(target, int):
                raise ValueError(f"instruction {i} has no target")
        return self.program


def generate_program(plan: Plan, device: int) -> tuple[list[Instr], dict[str, int]]:
    """The device's program and its labels (instruction indices)."""
    return ProgramBuilder(plan, device).build()


class ProgramBuilder:
    """Emits the program of one device of a plan; `build()` returns it with its labels.

    The `emit_*` methods emit the parts of the program in the order the module docstring
    lists; the private helpers emit the recurring sequences (a token loop, LayerNorm, softmax,
    the two-ahead PREFETCH of the weight stream)."""

    def __init__(self, plan: Plan, device: int) -> None:
        self.plan = plan
        self.device = device
        self.asm = Asm()
        self.moe = plan.moe
        cfg = plan.config
        # addresses: vector-buffer words, HBM bytes, offsets inside a layer and a KV layer
        self.vb = {k: r.offset for k, r in plan.vbuf.items()}
        self.hbm = {k: r.offset for k, r in plan.hbm.items()}
        self.lay = {k: r.offset for k, r in plan.layer_regions.items()}
        self.kvr = {k: r.offset for k, r in plan.kv_regions.items()}
        self.par = {k: self.vb["par"] + r.offset for k, r in plan.params.items()}
        # this device's share: its heads, its first head slot in the gathered heads, and
        # the output columns (matrix rows) of its slices
        self.heads = plan.head_counts[device]
        self.head_slot0 = device * plan.slot_heads
        self.hidden_rows = plan.hidden_counts[device]
        self.mlp_rows = plan.mlp_counts[device]
        self.qkv_rows = plan.qkv_rows_of(device)
        head = self.hbm["wte"] if plan.shape.tied_head else self.hbm["lm_head"]
        first_row = device * plan.vocab_slot // cfg.hbm_ports  # in every channel
        self.lm_head_slice = head + first_row * plan.ldb_hidden * cfg.beat_bytes
        # the weight matrices of a layer, as (ldb, rows, cols)
        hidden = plan.hidden_padded
        self.matrices = {
            "c_attn": (plan.ldb_hidden, self.qkv_rows, hidden),
            "c_proj": (plan.ldb_heads, self.hidden_rows, plan.heads_padded),
            "c_fc": (plan.ldb_hidden, self.mlp_rows, hidden),
            "c_fcproj": (plan.ldb_mlp, self.hidden_rows, plan.mlp_padded),
        }
        if self.moe is not None:
            self.matrices["gate"] = (plan.ldb_hidden, self.moe.experts, hidden)

    def build(self) -> tuple[list[Instr], dict[str, int]]:
        """The whole program, in the order the module docstring lists, and its labels."""
        self.emit_job_setup()
        self.emit_pass_start()
        self.emit_embeddings()
        self.emit_layers()
        self.emit_prefill_loop()
        self.emit_lm_head()
        self.emit_decode_loop()
        return self.asm.finish(), dict(self.asm.labels)

    # -- the parts of the program ------------------------------------------------------------

    def emit_job_setup(self) -> None:
        """Read the job descriptor, load the constants and queue the weight stream's first
        two matrices (layer 0's QKV and projection)."""
        a, plan, vb, hbm = self.asm, self.plan, self.vb, self.hbm
        a.emit("LDR", rd=R_PROMPT_LEN, addr=_o(DESC.N_PROMPT))
        a.emit("LDR", rd=R_POS, addr=_o(DESC.POS0))
        a.emit("LDR", rd=R_MAX_NEW, addr=_o(DESC.MAX_NEW))
        a.emit("LI", rd=R_N_OUT, imm=0)
        a.emit("LOADV", dst=_o(vb["lnf"]), src=_o(hbm["lnf"]), len=_o(2 * plan.hidden_padded))
        if plan.has_gaps:
            a.emit("LOADV", dst=_o(vb["cmask"]), src=_o(hbm["cmask"]),
                   len=_o(plan.hidden_padded))
        a.emit("SLI", sd=S_QSCALE, imm=1.0 / math.sqrt(plan.head_dim), comment="1/sqrt(head_dim)")
        a.emit("LI", rd=R_LAYER_BASE, imm=hbm["layers"])
        if self.moe is not None:
            a.emit("SLI", sd=S_NEG_INF, imm=float("-inf"), comment="masks a chosen expert")
        self._prefetch("c_attn")
        self._prefetch("c_proj")

    def emit_pass_start(self) -> None:
        """The head of the prefill and decode loops: n = min(prompt left, prefill_chunk)
        tokens while the prompt lasts, else one."""
        a = self.asm
        a.label("pass")
        a.emit("LI", rd=R_N, imm=1)
        a.emit("SUB", rd=R_SCRATCH2, ra=R_PROMPT_LEN, rb=R_POS, comment="prompt tokens left")
        a.emit("BGE", ra=R_ZERO, rb=R_SCRATCH2, target="embed", comment="none: decode one token")
        a.emit("LI", rd=R_N, imm=self.plan.prefill_chunk)
        a.emit("MIN", rd=R_N, ra=R_N, rb=R_SCRATCH2)
        a.label("embed")

    def emit_embeddings(self) -> None:
        """x[j] = wte[token] + wpe[position] for each token of the pass: a prompt token while
        the prompt lasts, else the one generated last."""
        a, plan, vb, hbm = self.asm, self.plan, self.vb, self.hbm
        hidden = plan.hidden_padded

        def embed():
            a.emit("ADD", rd=R_SCRATCH, ra=R_POS, rb=R_J, comment="position")
            a.emit("BGE", ra=R_SCRATCH, rb=R_PROMPT_LEN, target="embed_generated")
            self._word_offset(R_SCRATCH2, R_SCRATCH)
            a.emit("LDR", rd=R_TOKEN_KIND_ROW, addr=_o(DESC.PROMPT, R_SCRATCH2),
                   comment="prompt token")
            a.label("embed_generated")
            a.emit("LOADR", dst=_o(vb["x"], R_X_OFFSET), mat=_o(hbm["wte"]), ldb=plan.ldb_hidden,
                   row=_o(0, R_TOKEN_KIND_ROW), len=_o(hidden))
            a.emit("LOADR", dst=_o(vb["tmp"]), mat=_o(hbm["wpe"]), ldb=plan.ldb_hidden,
                   row=_o(0, R_SCRATCH), len=_o(hidden))
            a.emit("VADD", dst=_o(vb["x"], R_X_OFFSET), a=_o(vb["x"], R_X_OFFSET), b=_o(vb["tmp"]),
                   len=_o(hidden))

        self._token_loop("embed_loop", embed, {R_X_OFFSET: hidden})

    def emit_layers(self) -> None:
        """The layer loop: each layer's parameters (and, for MoE-GPT, its kind), attention,
        then the dense MLP or the MoE FFN."""
        a, plan = self.asm, self.plan
        a.emit("LI", rd=R_LAYER, imm=0)
        a.emit("LI", rd=R_LAYER_BASE, imm=self.hbm["layers"])
        a.emit("LI", rd=R_KV_BASE, imm=self.hbm["kv"])
        a.label("layer")
        a.emit("LOADV", dst=_o(self.vb["par"]), src=_o(self.lay["par"], R_LAYER_BASE),
               len=_o(plan.vbuf["par"].size), comment="layer parameters")
        if self.moe is not None:
            self._word_offset(R_SCRATCH2, R_LAYER)
            a.emit("LDR", rd=R_TOKEN_KIND_ROW, addr=_o(self.moe.kind_table, R_SCRATCH2),
                   comment="layer kind")
        self.emit_attention()
        self.emit_ffn_input()
        self._branch_if_moe("moe_ffn")
        self.emit_mlp()
        if self.moe is not None:
            a.emit("JMP", target="layer_next")
            a.label("moe_ffn")
            self.emit_moe_ffn()
            a.label("layer_next")
        a.emit("ADDI", rd=R_LAYER, ra=R_LAYER, imm=1)
        a.emit("ADDI", rd=R_LAYER_BASE, ra=R_LAYER_BASE, imm=plan.layer_stride)
        a.emit("ADDI", rd=R_KV_BASE, ra=R_KV_BASE, imm=plan.kv_stride)
        a.emit("LI", rd=R_SCRATCH2, imm=plan.shape.n_layer)
        a.emit("BLT", ra=R_LAYER, rb=R_SCRATCH2, target="layer")

    def emit_attention(self) -> None:
        """LayerNorm, QKV (this device's heads), K/V appended to the cache, per token and
        head the scores, softmax and weighted values, the heads gathered over the ring, the
        projection (this device's columns) and its gather."""
        a, plan, vb, lay, par = self.asm, self.plan, self.vb, self.lay, self.par
        hidden, heads_padded = plan.hidden_padded, plan.heads_padded
        head_dim, positions = plan.head_dim_padded, plan.positions_padded
        qkv_stride = plan.qkv_rows
        self._token_loop("ln1_loop", lambda: self._layernorm(
            _o(vb["x"], R_X_OFFSET), _o(vb["h"], R_X_OFFSET), par["ln1_g"], par["ln1_b"]),
            {R_X_OFFSET: hidden})
        a.emit("MM", dst=_o(vb["qkv"]), src=_o(vb["h"]), w=_o(lay["c_attn"], R_LAYER_BASE),
               ldb=plan.ldb_hidden, rows=_o(self.qkv_rows), cols=_o(hidden), ntok=_o(0, R_N),
               dstride=qkv_stride, sstride=hidden, bias=par["attn_b"],
               flags={"bias", "prefetched"}, comment="QKV")
        self._branch_if_moe("qkv_moe")
        self._prefetch("c_fc")
        if self.moe is not None:
            a.emit("JMP", target="qkv_done")
            a.label("qkv_moe")
            self._prefetch("gate")
            a.label("qkv_done")

        def kv_append():
            a.emit("ADD", rd=R_SCRATCH, ra=R_POS, rb=R_J)
            for h in range(self.heads):
                q = vb["qkv"] + h * head_dim
                k = vb["qkv"] + (self.heads + h) * head_dim
                v = vb["qkv"] + (2 * self.heads + h) * head_dim
                a.emit("VMULS", dst=_o(q, R_QKV_OR_EXPERT1), a=_o(q, R_QKV_OR_EXPERT1),
                       s=S_QSCALE, len=_o(head_dim), comment=f"scale q{h}")
                a.emit("STORER", mat=_o(self.kvr[f"k{h}"], R_KV_BASE), ldb=plan.ldb_head_dim,
                       row=_o(0, R_SCRATCH), src=_o(k, R_QKV_OR_EXPERT1), len=_o(head_dim),
                       comment=f"append k{h}")
                a.emit("STOREC", mat=_o(self.kvr[f"v{h}"], R_KV_BASE), ldb=plan.ldb_positions,
                       col=_o(0, R_SCRATCH), src=_o(v, R_QKV_OR_EXPERT1), len=_o(head_dim),
                       comment=f"append v{h} (transposed)")

        self._token_loop("kv_loop", kv_append, {R_QKV_OR_EXPERT1: qkv_stride})

        def attend():
            a.emit("ADD", rd=R_SCRATCH, ra=R_POS, rb=R_J)
            a.emit("ADDI", rd=R_SCRATCH, ra=R_SCRATCH, imm=1, comment="keys visible to this token")
            for h in range(self.heads):
                a.emit("MM", dst=_o(vb["scores"] + h * positions),
                       src=_o(vb["qkv"] + h * head_dim, R_QKV_OR_EXPERT1),
                       w=_o(self.kvr[f"k{h}"], R_KV_BASE),
                       ldb=plan.ldb_head_dim, rows=_o(0, R_SCRATCH), cols=_o(head_dim), ntok=_o(1),
                       dstride=positions, sstride=head_dim, flags={"mask"},
                       comment=f"scores head {h}")
            for h in range(self.heads):
                self._softmax(_o(vb["scores"] + h * positions), _o(0, R_SCRATCH))
            for h in range(self.heads):
                slot = self.head_slot0 + h
                a.emit("MM", dst=_o(vb["att"] + slot * head_dim, R_OUT_OR_EXPERT2),
                       src=_o(vb["scores"] + h * positions), w=_o(self.kvr[f"v{h}"], R_KV_BASE),
                       ldb=plan.ldb_positions, rows=_o(head_dim), cols=_o(0, R_SCRATCH), ntok=_o(1),
                       dstride=head_dim, sstride=positions, comment=f"attention head {h}")

        self._token_loop("attn_loop", attend,
                         {R_QKV_OR_EXPERT1: qkv_stride, R_OUT_OR_EXPERT2: heads_padded})
        a.emit("ALLGATHER", base=_o(vb["att"]), slice=plan.slot_heads * head_dim,
               stride=heads_padded, count=_o(0, R_N))
        a.emit("MM", dst=_o(vb["y"] + self.device * plan.hidden_slot), src=_o(vb["att"]),
               w=_o(lay["c_proj"], R_LAYER_BASE), ldb=plan.ldb_heads, rows=_o(self.hidden_rows),
               cols=_o(heads_padded), ntok=_o(0, R_N), dstride=hidden, sstride=heads_padded,
               bias=par["proj_b"], flags={"bias", "prefetched"}, comment="attention projection")
        self._branch_if_moe("proj_moe")  # an MoE block knows its experts only after the router
        self._prefetch("c_fcproj")
        if self.moe is not None:
            a.label("proj_moe")
        a.emit("ALLGATHER", base=_o(vb["y"]), slice=plan.hidden_slot, stride=hidden,
               count=_o(0, R_N))

    def emit_ffn_input(self) -> None:
        """The attention's residual, then the FFN's LayerNorm: h = ln2(x += y)."""
        vb, hidden = self.vb, self.plan.hidden_padded

        def residual_ln2():
            x = _o(vb["x"], R_X_OFFSET)
            self.asm.emit("VADD", dst=x, a=x, b=_o(vb["y"], R_X_OFFSET), len=_o(hidden),
                          comment="residual")
            self._layernorm(x, _o(vb["h"], R_X_OFFSET), self.par["ln2_g"], self.par["ln2_b"])

        self._token_loop("ln2_loop", residual_ln2, {R_X_OFFSET: hidden})

    def emit_mlp(self) -> None:
        """The dense MLP: up (this device's columns), GELU, gather, down (this device's
        columns), gather, residual; each MM queues the matrix two ahead."""
        a, plan, vb, lay, par = self.asm, self.plan, self.vb, self.lay, self.par
        hidden, mlp = plan.hidden_padded, plan.mlp_padded
        a.emit("MM", dst=_o(vb["m"] + self.device * plan.mlp_slot), src=_o(vb["h"]),
               w=_o(lay["c_fc"], R_LAYER_BASE), ldb=plan.ldb_hidden, rows=_o(self.mlp_rows),
               cols=_o(hidden), ntok=_o(0, R_N), dstride=mlp, sstride=hidden, bias=par["fc_b"],
               flags={"bias", "prefetched"}, comment="MLP up")
        self._queue_after_mlp_up("up")
        m_local = vb["m"] + self.device * plan.mlp_slot
        m = _o(m_local, R_OUT_OR_EXPERT2)
        self._token_loop("gelu_loop", lambda: a.emit(
            "VGELU", dst=m, a=m, len=_o(plan.mlp_slot)), {R_OUT_OR_EXPERT2: mlp})
        a.emit("ALLGATHER", base=_o(vb["m"]), slice=plan.mlp_slot, stride=mlp,
               count=_o(0, R_N))
        a.emit("MM", dst=_o(vb["y"] + self.device * plan.hidden_slot), src=_o(vb["m"]),
               w=_o(lay["c_fcproj"], R_LAYER_BASE), ldb=plan.ldb_mlp, rows=_o(self.hidden_rows),
               cols=_o(mlp), ntok=_o(0, R_N), dstride=hidden, sstride=mlp,
               bias=par["fcproj_b"], flags={"bias", "prefetched"}, comment="MLP down")
        self._queue_after_mlp_down("down")
        a.emit("ALLGATHER", base=_o(vb["y"]), slice=plan.hidden_slot, stride=hidden,
               count=_o(0, R_N))
        x, y = _o(vb["x"], R_X_OFFSET), _o(vb["y"], R_X_OFFSET)
        self._token_loop("res2_loop", lambda: a.emit(
            "VADD", dst=x, a=x, b=y, len=_o(hidden), comment="residual"), {R_X_OFFSET: hidden})

    def emit_moe_ffn(self) -> None:
        """An MoE block's FFN (see `host.compiler.moe`): router, top-k, the local experts, the
        ring, the sum of the devices' slots and the residual. Ends with the two PREFETCHes the
        dense FFN would have queued, so the weight stream continues unchanged."""
        a, plan, vb, moe = self.asm, self.plan, self.vb, self._moe_plan()
        hidden, experts, d = plan.hidden_padded, moe.experts, plan.devices
        row = d * hidden  # one token's D slots
        a.emit("MM", dst=_o(vb["glog"]), src=_o(vb["h"]), w=_o(self.lay["gate"], R_LAYER_BASE),
               ldb=plan.ldb_hidden, rows=_o(experts), cols=_o(hidden), ntok=_o(0, R_N),
               dstride=moe.router_padded, sstride=hidden, flags={"mask", "prefetched"},
               comment="router logits")
        self._token_loop("moe_loop", self._emit_route, {R_X_OFFSET: hidden})
        # the two matrices after this FFN in the weight stream, as the dense FFN queues them
        self._queue_after_mlp_up("moe_up")
        self._queue_after_mlp_down("moe_down")
        if d > 1:
            a.emit("ALLGATHER", base=_o(vb["moe_y"]), slice=hidden, stride=row,
                   count=_o(0, R_N))

        def combine():
            x = _o(vb["x"], R_X_OFFSET)
            if d == 1:
                a.emit("VADD", dst=x, a=x, b=_o(vb["moe_y"], R_TOKEN_KIND_ROW), len=_o(hidden),
                       comment="residual")
                return
            a.emit("VADD", dst=_o(vb["ey"]), a=_o(vb["moe_y"], R_TOKEN_KIND_ROW),
                   b=_o(vb["moe_y"] + hidden, R_TOKEN_KIND_ROW), len=_o(hidden),
                   comment="sum the devices' slots")
            for s in range(2, d):
                a.emit("VADD", dst=_o(vb["ey"]), a=_o(vb["ey"]),
                       b=_o(vb["moe_y"] + s * hidden, R_TOKEN_KIND_ROW), len=_o(hidden))
            a.emit("VADD", dst=x, a=x, b=_o(vb["ey"]), len=_o(hidden), comment="residual")

        self._token_loop("moe_res_loop", combine, {R_X_OFFSET: hidden, R_TOKEN_KIND_ROW: row})

    def emit_prefill_loop(self) -> None:
        """The end of every pass: pos += n, and another pass while the prompt lasts."""
        a = self.asm
        a.emit("ADD", rd=R_POS, ra=R_POS, rb=R_N)
        a.emit("BLT", ra=R_POS, rb=R_PROMPT_LEN, target="pass", comment="more prompt to read")

    def emit_lm_head(self) -> None:
        """The final LayerNorm of the pass's last token and this device's slice of the LM
        head; then, when a pass follows, the PREFETCH of its layer 0's projection."""
        a, plan, vb = self.asm, self.plan, self.vb
        hidden = plan.hidden_padded
        a.emit("ADDI", rd=R_SCRATCH2, ra=R_N, imm=-1)
        a.emit("MULI", rd=R_SCRATCH2, ra=R_SCRATCH2, imm=hidden, comment="last token of the pass")
        self._layernorm(_o(vb["x"], R_SCRATCH2), _o(vb["head_in"]), vb["lnf"], vb["lnf"] + hidden)
        a.emit("MM", dst=_o(vb["logits"]), src=_o(vb["head_in"]), w=_o(self.lm_head_slice),
               ldb=plan.ldb_hidden, rows=_o(plan.vocab_rows[self.device]), cols=_o(hidden),
               ntok=_o(1), dstride=plan.vocab_slot, sstride=hidden,
               flags={"mask", "prefetched"}, comment="LM head")
        self._branch_unless_another_token("head_done")
        a.emit("LI", rd=R_LAYER_BASE, imm=self.hbm["layers"])
        self._prefetch("c_proj", comment="c_proj of layer 0, next pass")
        a.label("head_done")

    def emit_decode_loop(self) -> None:
        """The greedy token (this device's argmax, then across the ring), TOKOUT, and another
        pass while tokens remain to be generated; then the count of tokens written, HALT."""
        a, plan = self.asm, self.plan
        a.emit("ARGMAX", rd=R_TOKEN_KIND_ROW, sd=S_ARGMAX, a=_o(self.vb["logits"]),
               len=_o(plan.vocab_rows[self.device]), base=_o(self.device * plan.vocab_slot))
        a.emit("ARGMAXALL", rd=R_TOKEN_KIND_ROW, sd=S_ARGMAX,
               comment="greedy token, across the ring")
        self._word_offset(R_SCRATCH2, R_N_OUT)
        a.emit("TOKOUT", ra=R_TOKEN_KIND_ROW,
               addr=_o(DESC.out_tokens(plan.shape.n_positions), R_SCRATCH2))
        a.emit("ADDI", rd=R_N_OUT, ra=R_N_OUT, imm=1)
        a.emit("BLT", ra=R_N_OUT, rb=R_MAX_NEW, target="pass")
        a.label("done")
        a.emit("TOKOUT", ra=R_N_OUT, addr=_o(DESC.N_OUT), comment="tokens written")
        a.emit("HALT")

    # -- the MoE FFN's per-token parts -------------------------------------------------------

    def _moe_plan(self) -> MoEPlan:
        """The expert plan: only an MoE model's program has the parts that ask for it."""
        assert self.moe is not None
        return self.moe

    def _emit_route(self) -> None:
        """One token of an MoE block: its top-k experts and combine weights, its slot of
        `moe_y` cleared, then each chosen expert that this device holds."""
        a, vb, moe = self.asm, self.vb, self._moe_plan()
        experts = moe.experts
        a.emit("MULI", rd=R_TOKEN_KIND_ROW, ra=R_J, imm=moe.router_padded,
               comment="this token's router logits")
        logits = _o(vb["glog"], R_TOKEN_KIND_ROW)
        a.emit("ARGMAX", rd=R_QKV_OR_EXPERT1, sd=S_ROUTER_MAX, a=logits, len=_o(experts),
               base=_o(0), comment="first expert")
        weighted = moe.top_k == 2 or not moe.renormalize
        if weighted:  # e_i = exp(logit_i - max): the first expert's is 1
            a.emit("VADDS", dst=_o(vb["gexp"]), a=logits, s=S_ROUTER_MAX, len=_o(experts),
                   flags={"neg"})
            a.emit("VEXP", dst=_o(vb["gexp"]), a=_o(vb["gexp"]), len=_o(experts))
        if moe.top_k == 2:
            a.emit("ADD", rd=R_SCRATCH, ra=R_TOKEN_KIND_ROW, rb=R_QKV_OR_EXPERT1)
            a.emit("VSET", dst=_o(vb["glog"], R_SCRATCH), s=S_NEG_INF, comment="mask the first")
            a.emit("ARGMAX", rd=R_OUT_OR_EXPERT2, sd=S_ROUTER_SUM, a=logits, len=_o(experts),
                   base=_o(0), comment="second expert")
            for i, r_e in enumerate((R_QKV_OR_EXPERT1, R_OUT_OR_EXPERT2)):
                a.emit("VGET", sd=S_ROUTER_SUM, src=_o(vb["gexp"], r_e))
                a.emit("VSET", dst=_o(vb["gw"] + i), s=S_ROUTER_SUM)
            if moe.renormalize:
                a.emit("VSUM", sd=S_ROUTER_SUM, a=_o(vb["gw"]), len=_o(2), comment="e_1 + e_2")
            else:
                a.emit("VSUM", sd=S_ROUTER_SUM, a=_o(vb["gexp"]), len=_o(experts),
                       comment="sum of e")
            a.emit("SRECIP", sd=S_ROUTER_SUM, sa=S_ROUTER_SUM)
            a.emit("VMULS", dst=_o(vb["gw"]), a=_o(vb["gw"]), s=S_ROUTER_SUM, len=_o(2))
            a.emit("VGET", sd=S_WEIGHT1, src=_o(vb["gw"]))
            a.emit("VGET", sd=S_WEIGHT2, src=_o(vb["gw"] + 1))
        elif weighted:  # top-1, raw probability: p_1 = 1 / sum(e)
            a.emit("VSUM", sd=S_ROUTER_SUM, a=_o(vb["gexp"]), len=_o(experts))
            a.emit("SRECIP", sd=S_WEIGHT1, sa=S_ROUTER_SUM)
        hidden = self.plan.hidden_padded
        mine = vb["moe_y"] + self.device * hidden
        a.emit("MULI", rd=R_SCRATCH, ra=R_J, imm=self.plan.devices * hidden)
        a.emit("VADD", dst=_o(mine, R_SCRATCH), a=_o(vb["zero"]), b=_o(vb["zero"]), len=_o(hidden),
               comment="clear this device's slot")
        self._emit_expert(1, R_QKV_OR_EXPERT1, S_WEIGHT1 if weighted else None)
        if moe.top_k == 2:
            self._emit_expert(2, R_OUT_OR_EXPERT2, S_WEIGHT2)

    def _emit_expert(self, choice: int, r_expert: int, s_weight: int | None) -> None:
        """The `choice`-th chosen expert (index in `r_expert`) if this device holds it: its
        slot from the table, its biases and matrices, weighted by `s_weight` (None: weight 1)
        into this device's slot of the token's `moe_y` row."""
        a, plan, vb, moe = self.asm, self.plan, self.vb, self._moe_plan()
        hidden, expert_hidden = plan.hidden_padded, moe.expert_hidden_padded
        ex = {k: self.lay["experts"] + r.offset for k, r in moe.expert_regions.items()}
        mine = vb["moe_y"] + self.device * hidden
        skip = f"expert{choice}_remote"
        self._word_offset(R_SCRATCH2, R_LAYER, moe.experts)  # the layer's row of the table
        self._word_offset(R_SCRATCH, r_expert)
        a.emit("ADD", rd=R_SCRATCH2, ra=R_SCRATCH2, rb=R_SCRATCH)
        a.emit("LDR", rd=R_SCRATCH, addr=_o(moe.slot_table, R_SCRATCH2), comment="local slot or -1")
        a.emit("BLT", ra=R_SCRATCH, rb=R_ZERO, target=skip, comment="held by another device")
        a.emit("MULI", rd=R_SCRATCH, ra=R_SCRATCH, imm=moe.expert_stride)
        a.emit("ADD", rd=R_SCRATCH, ra=R_SCRATCH, rb=R_LAYER_BASE,
               comment=f"choice {choice}: expert base")
        a.emit("LOADV", dst=_o(vb["epar"]), src=_o(ex["epar"], R_SCRATCH),
               len=_o(expert_hidden + hidden), comment="expert biases")
        a.emit("PREFETCH", w=_o(ex["e_fc"], R_SCRATCH), ldb=plan.ldb_hidden, rows=_o(expert_hidden),
               cols=_o(hidden), comment="expert up")
        a.emit("PREFETCH", w=_o(ex["e_proj"], R_SCRATCH), ldb=moe.ldb_expert_hidden,
               rows=_o(hidden), cols=_o(expert_hidden), comment="expert down")
        a.emit("MM", dst=_o(vb["em"]), src=_o(vb["h"], R_X_OFFSET), w=_o(ex["e_fc"], R_SCRATCH),
               ldb=plan.ldb_hidden, rows=_o(expert_hidden), cols=_o(hidden), ntok=_o(1),
               dstride=expert_hidden, sstride=hidden, bias=vb["epar"],
               flags={"bias", "prefetched"}, comment="expert up")
        a.emit("VGELU", dst=_o(vb["em"]), a=_o(vb["em"]), len=_o(expert_hidden))
        a.emit("MM", dst=_o(vb["ey"]), src=_o(vb["em"]), w=_o(ex["e_proj"], R_SCRATCH),
               ldb=moe.ldb_expert_hidden, rows=_o(hidden), cols=_o(expert_hidden), ntok=_o(1),
               dstride=hidden, sstride=expert_hidden, bias=vb["epar"] + expert_hidden,
               flags={"bias", "prefetched"}, comment="expert down")
        if s_weight is not None:
            a.emit("VMULS", dst=_o(vb["ey"]), a=_o(vb["ey"]), s=s_weight, len=_o(hidden),
                   comment="combine weight")
        a.emit("MULI", rd=R_SCRATCH, ra=R_J, imm=plan.devices * hidden)
        a.emit("VADD", dst=_o(mine, R_SCRATCH), a=_o(mine, R_SCRATCH), b=_o(vb["ey"]),
               len=_o(hidden), comment="into this device's slot")
        a.label(skip)

    # -- recurring sequences ---------------------------------------------------------------

    def _token_loop(self, name: str, body: Callable[[], None], strides: dict[int, int]) -> None:
        """for j in range(n): body(); with each register in `strides` advanced by its stride."""
        a = self.asm
        a.emit("LI", rd=R_J, imm=0)
        for reg in strides:
            a.emit("LI", rd=reg, imm=0)
        a.label(name)
        body()
        a.emit("ADDI", rd=R_J, ra=R_J, imm=1)
        for reg, stride in strides.items():
            a.emit("ADDI", rd=reg, ra=reg, imm=stride)
        a.emit("BLT", ra=R_J, rb=R_N, target=name)

    def _layernorm(self, src: Operand, dst: Operand, gamma: int, beta: int) -> None:
        """`hw.numerics.layernorm`'s sequence, one instruction per unit operation."""
        a, plan = self.asm, self.plan
        hidden = plan.hidden_padded
        inv_n = 1.0 / plan.shape.n_embd
        s_sum, s_mean, s_squares, s_var, s_var_eps, s_rstd = S_SCRATCH
        a.emit("VSUM", sd=s_sum, a=src, len=_o(hidden), comment="layernorm: sum")
        a.emit("SMULI", sd=s_mean, sa=s_sum, imm=inv_n, comment="mean")
        a.emit("VADDS", dst=dst, a=src, s=s_mean, len=_o(hidden), flags={"neg"},
               comment="centre")
        if plan.has_gaps:
            a.emit("VMUL", dst=dst, a=dst, b=_o(self.vb["cmask"]), len=_o(hidden),
                   comment="zero the layout's gaps")
        a.emit("VDOT", sd=s_squares, a=dst, b=dst, len=_o(hidden), comment="sum of squares")
        a.emit("SMULI", sd=s_var, sa=s_squares, imm=inv_n, comment="variance")
        a.emit("SADDH", sd=s_var_eps, sa=s_var, imm=plan.shape.layer_norm_epsilon,
               comment="+ eps")
        a.emit("SRSQRT", sd=s_rstd, sa=s_var_eps)
        a.emit("VMULS", dst=dst, a=dst, s=s_rstd, len=_o(hidden))
        a.emit("VFMA", dst=dst, a=dst, b=_o(gamma), c=_o(beta), len=_o(hidden),
               comment="affine")

    def _softmax(self, buf: Operand, length: Operand) -> None:
        """`hw.numerics.softmax`'s sequence; masked positions already hold -Inf."""
        a = self.asm
        s_max, s_sum, s_recip = S_SCRATCH[:3]
        a.emit("VMAX", sd=s_max, a=buf, len=length, comment="softmax: max")
        a.emit("VADDS", dst=buf, a=buf, s=s_max, len=length, flags={"neg"})
        a.emit("VEXP", dst=buf, a=buf, len=length)
        a.emit("VSUM", sd=s_sum, a=buf, len=length)
        a.emit("SRECIP", sd=s_recip, sa=s_sum)
        a.emit("VMULS", dst=buf, a=buf, s=s_recip, len=length)

    def _word_offset(self, rd: int, index: int, words_per_index: int = 1) -> None:
        """rd = the byte offset of entry `index` (a register) of an int32 table in the scalar
        area whose entries are `words_per_index` words long."""
        self.asm.emit("MULI", rd=rd, ra=index, imm=words_per_index * SCALAR_WORD_BYTES)

    # -- the weight stream -----------------------------------------------------------------

    def _prefetch(self, name: str, layer_offset: int = 0, base: int = R_LAYER_BASE,
                  comment: str = "") -> None:
        """PREFETCH this device's slice of the layer matrix `name` of the layer at `base`."""
        ldb, rows, cols = self.matrices[name]
        self.asm.emit("PREFETCH", w=_o(self.lay[name] + layer_offset, base), ldb=ldb,
                      rows=_o(rows), cols=_o(cols), comment=comment or name)

    def _prefetch_first_layer(self, name: str) -> None:
        """`name` of layer 0, for the next pass."""
        self.asm.emit("LI", rd=R_SCRATCH2, imm=self.hbm["layers"])
        self._prefetch(name, base=R_SCRATCH2, comment=f"{name} of layer 0, next pass")

    def _prefetch_head(self) -> None:
        plan = self.plan
        self.asm.emit("PREFETCH", w=_o(self.lm_head_slice), ldb=plan.ldb_hidden,
                      rows=_o(plan.vocab_rows[self.device]), cols=_o(plan.hidden_padded),
                      comment="LM head slice")

    def _prefetch_two_ahead(self, tag: str, next_layer: str,
                            head_pass: Callable[[str], None],
                            prefill_pass: Callable[[], None]) -> None:
        """After a layer's weight MM: queue the matrix two places ahead in the weight stream,
        `next_layer` of the next layer, or after the last layer what the pass needs next:
        `head_pass(done_label)` when the pass ends the prompt, else `prefill_pass()`."""
        a = self.asm
        self._branch_unless_more_layers(f"{tag}_last")
        self._prefetch(next_layer, self.plan.layer_stride, comment=f"next layer's {next_layer}")
        a.emit("JMP", target=f"{tag}_done")
        a.label(f"{tag}_last")
        self._branch_unless_head(f"{tag}_no_head")
        head_pass(f"{tag}_done")
        a.emit("JMP", target=f"{tag}_done")
        a.label(f"{tag}_no_head")
        prefill_pass()
        a.label(f"{tag}_done")

    def _queue_after_mlp_up(self, tag: str) -> None:
        """Two ahead of MLP up: the next layer's QKV, else the LM head, else the next pass's
        first QKV."""
        self._prefetch_two_ahead(tag, "c_attn", lambda done: self._prefetch_head(),
                                 lambda: self._prefetch_first_layer("c_attn"))

    def _queue_after_mlp_down(self, tag: str) -> None:
        """Two ahead of MLP down: the next layer's projection; after the last layer, the next
        pass's first QKV (head passes, when a pass follows) or first projection (prefill
        passes)."""
        def head_pass(done: str) -> None:
            self._branch_unless_another_token(done)
            self._prefetch_first_layer("c_attn")

        self._prefetch_two_ahead(tag, "c_proj", head_pass,
                                 lambda: self._prefetch_first_layer("c_proj"))

    # -- branches --------------------------------------------------------------------------

    def _branch_if_moe(self, target: str) -> None:
        if self.moe is not None:
            self.asm.emit("BNE", ra=R_TOKEN_KIND_ROW, rb=R_ZERO, target=target,
                          comment="an MoE block")

    def _branch_unless_more_layers(self, target: str) -> None:
        a = self.asm
        a.emit("ADDI", rd=R_SCRATCH, ra=R_LAYER, imm=1)
        a.emit("LI", rd=R_SCRATCH2, imm=self.plan.shape.n_layer)
        a.emit("BGE", ra=R_SCRATCH, rb=R_SCRATCH2, target=target)

    def _branch_unless_head(self, target: str) -> None:
        """Continue when this pass ends the prompt (it computes the LM head)."""
        a = self.asm
        a.emit("ADD", rd=R_SCRATCH, ra=R_POS, rb=R_N)
        a.emit("BLT", ra=R_SCRATCH, rb=R_PROMPT_LEN, target=target)

    def _branch_unless_another_token(self, target: str) -> None:
        """Continue when a pass follows this token-producing one."""
        a = self.asm
        a.emit("ADDI", rd=R_SCRATCH, ra=R_N_OUT, imm=1)
        a.emit("BGE", ra=R_SCRATCH, rb=R_MAX_NEW, target=target)
