"""Program generation: one program per device that runs a whole generation job.

The program reads the job descriptor (`hw.layout.DESC`), then loops over *passes*. A pass
processes n tokens at positions pos..pos+n-1 through every layer: while prompt tokens remain,
n = min(remaining, chunk) and the tokens come from the prompt (prefill, matrix-matrix: each
weight is streamed once per chunk); afterwards n = 1 and the token is the last one generated
(decode). A pass that reaches the end of the prompt ends with the final LayerNorm, the LM head,
an on-device argmax across the ring and TOKOUT. One layer body serves both phases.

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

from hw.isa import Instr, Operand
from hw.layout import DESC

from .plan import Plan

__all__ = ["R_L", "Asm", "generate_program"]

# integer registers
R_NPROMPT, R_POS, R_MAXNEW, R_NOUT, R_N, R_L, R_WL, R_KV = 1, 2, 3, 4, 5, 6, 7, 8
R_J, R_T, R_TOK, R_XO, R_QO, R_AO, R_TMP = 9, 10, 11, 12, 13, 14, 15
# MoE blocks reuse registers that are free there: the layer kind and then the router row
# live in R_TOK (the generated token is read by the embedding and written by the argmax, both
# outside the layers), the chosen experts in R_QO and R_AO (free after attention)
R_KIND = R_GO = R_TOK
R_E1, R_E2 = R_QO, R_AO
# FP32 scalar registers
S_QSCALE, S_ARGMAX = 7, 8
S_MAX, S_W1, S_W2, S_NINF, S_SUM = 9, 10, 11, 12, 13


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


def _layernorm(asm: Asm, plan: Plan, src: Operand, dst: Operand, gamma: int, beta: int):
    """`hw.numerics.layernorm`'s sequence, one instruction per unit operation."""
    cp = plan.hidden_padded
    inv_n = 1.0 / plan.shape.n_embd
    asm.emit("VSUM", sd=1, a=src, len=_o(cp), comment="layernorm: sum")
    asm.emit("SMULI", sd=2, sa=1, imm=inv_n, comment="mean")
    asm.emit("VADDS", dst=dst, a=src, s=2, len=_o(cp), flags={"neg"}, comment="centre")
    if plan.has_gaps:
        asm.emit("VMUL", dst=dst, a=dst, b=_o(plan.vbuf["cmask"].offset), len=_o(cp),
                 comment="zero the layout's gaps")
    asm.emit("VDOT", sd=3, a=dst, b=dst, len=_o(cp), comment="sum of squares")
    asm.emit("SMULI", sd=4, sa=3, imm=inv_n, comment="variance")
    asm.emit("SADDH", sd=5, sa=4, imm=plan.shape.layer_norm_epsilon, comment="+ eps")
    asm.emit("SRSQRT", sd=6, sa=5)
    asm.emit("VMULS", dst=dst, a=dst, s=6, len=_o(cp))
    asm.emit("VFMA", dst=dst, a=dst, b=_o(gamma), c=_o(beta), len=_o(cp), comment="affine")


def _softmax(asm: Asm, buf: Operand, length: Operand):
    """`hw.numerics.softmax`'s sequence; masked positions already hold -Inf."""
    asm.emit("VMAX", sd=1, a=buf, len=length, comment="softmax: max")
    asm.emit("VADDS", dst=buf, a=buf, s=1, len=length, flags={"neg"})
    asm.emit("VEXP", dst=buf, a=buf, len=length)
    asm.emit("VSUM", sd=2, a=buf, len=length)
    asm.emit("SRECIP", sd=3, sa=2)
    asm.emit("VMULS", dst=buf, a=buf, s=3, len=length)


def _token_loop(asm: Asm, name: str, body, strides: dict[int, int]):
    """for j in range(n): body(); with each register in `strides` advanced by its stride."""
    asm.emit("LI", rd=R_J, imm=0)
    for reg in strides:
        asm.emit("LI", rd=reg, imm=0)
    asm.label(name)
    body()
    asm.emit("ADDI", rd=R_J, ra=R_J, imm=1)
    for reg, stride in strides.items():
        asm.emit("ADDI", rd=reg, ra=reg, imm=stride)
    asm.emit("BLT", ra=R_J, rb=R_N, target=name)


def generate_program(plan: Plan, device: int) -> tuple[list[Instr], dict[str, int]]:
    """The device's program and its labels (instruction indices)."""
    cfg = plan.config
    beat = cfg.beat_bytes
    vb = {k: r.offset for k, r in plan.vbuf.items()}
    hbm = {k: r.offset for k, r in plan.hbm.items()}
    lay = {k: r.offset for k, r in plan.layer_regions.items()}
    kvr = {k: r.offset for k, r in plan.kv_regions.items()}
    par = {k: vb["par"] + r.offset for k, r in plan.params.items()}
    cp, hp, ip, hdp = plan.hidden_padded, plan.heads_padded, plan.mlp_padded, plan.head_dim_padded
    tp = plan.positions_padded
    hl = plan.head_counts[device]  # this device's heads
    head0 = device * plan.slot_heads  # its first head slot in the gathered heads
    c_rows, i_rows = plan.hidden_counts[device], plan.mlp_counts[device]  # its output columns
    qkv_rows = plan.qkv_rows_of(device)
    qkv_stride = plan.qkv_rows
    out_tokens = DESC.out_tokens(plan.shape.n_positions)
    head = hbm["wte"] if plan.shape.tied_head else hbm["lm_head"]
    wte_slice = head + (device * plan.vocab_slot // cfg.hbm_ports) * plan.ldb_hidden * beat
    a = Asm()

    # the four weight matrices of a layer, as (region, ldb, rows, cols)
    mats = {"c_attn": (plan.ldb_hidden, qkv_rows, cp), "c_proj": (plan.ldb_heads, c_rows, hp),
            "c_fc": (plan.ldb_hidden, i_rows, cp), "c_fcproj": (plan.ldb_mlp, c_rows, ip)}
    moe = plan.moe
    if moe is not None:
        mats["gate"] = (plan.ldb_hidden, moe.experts, cp)

    def branch_if_moe(target: str):
        if moe is not None:
            a.emit("BNE", ra=R_KIND, rb=0, target=target, comment="an MoE block")

    def prefetch(name: str, layer_offset: int = 0, base: int = R_WL, comment: str = ""):
        ldb, rows, cols = mats[name]
        a.emit("PREFETCH", w=_o(lay[name] + layer_offset, base), ldb=ldb, rows=_o(rows),
               cols=_o(cols), comment=comment or name)

    def prefetch_first_layer(name: str):
        """`name` of layer 0, for the next pass."""
        a.emit("LI", rd=R_TMP, imm=hbm["layers"])
        prefetch(name, base=R_TMP, comment=f"{name} of layer 0, next pass")

    def prefetch_head():
        a.emit("PREFETCH", w=_o(wte_slice), ldb=plan.ldb_hidden, rows=_o(plan.vocab_rows[device]),
               cols=_o(cp), comment="LM head slice")

    def branch_unless_more_layers(target: str):
        a.emit("ADDI", rd=R_T, ra=R_L, imm=1)
        a.emit("LI", rd=R_TMP, imm=plan.shape.n_layer)
        a.emit("BGE", ra=R_T, rb=R_TMP, target=target)

    def branch_unless_head(target: str):
        """Continue when this pass ends the prompt (it computes the LM head)."""
        a.emit("ADD", rd=R_T, ra=R_POS, rb=R_N)
        a.emit("BLT", ra=R_T, rb=R_NPROMPT, target=target)

    def prefetch_two_ahead(tag: str, next_layer: str, head_pass, prefill_pass):
        """After a layer's weight MM: queue the matrix two places ahead in the weight stream,
        `next_layer` of the next layer, or after the last layer what the pass needs next."""
        branch_unless_more_layers(f"{tag}_last")
        prefetch(next_layer, plan.layer_stride, comment=f"next layer's {next_layer}")
        a.emit("JMP", target=f"{tag}_done")
        a.label(f"{tag}_last")
        branch_unless_head(f"{tag}_no_head")
        head_pass(f"{tag}_done")
        a.emit("JMP", target=f"{tag}_done")
        a.label(f"{tag}_no_head")
        prefill_pass()
        a.label(f"{tag}_done")

    def branch_unless_another_token(target: str):
        """Continue when a pass follows this token-producing one."""
        a.emit("ADDI", rd=R_T, ra=R_NOUT, imm=1)
        a.emit("BGE", ra=R_T, rb=R_MAXNEW, target=target)

    # -- job descriptor and constants ----------------------------------------------------------
    a.emit("LDR", rd=R_NPROMPT, addr=_o(DESC.N_PROMPT))
    a.emit("LDR", rd=R_POS, addr=_o(DESC.POS0))
    a.emit("LDR", rd=R_MAXNEW, addr=_o(DESC.MAX_NEW))
    a.emit("LI", rd=R_NOUT, imm=0)
    a.emit("LOADV", dst=_o(vb["lnf"]), src=_o(hbm["lnf"]), len=_o(2 * cp))
    if plan.has_gaps:
        a.emit("LOADV", dst=_o(vb["cmask"]), src=_o(hbm["cmask"]), len=_o(cp))
    a.emit("SLI", sd=S_QSCALE, imm=1.0 / math.sqrt(plan.head_dim), comment="1/sqrt(head_dim)")
    a.emit("LI", rd=R_WL, imm=hbm["layers"])
    if moe is not None:
        a.emit("SLI", sd=S_NINF, imm=float("-inf"), comment="masks a chosen expert")
    prefetch("c_attn")
    prefetch("c_proj")

    # -- a pass: n tokens from position pos ----------------------------------------------------
    a.label("pass")
    a.emit("LI", rd=R_N, imm=1)
    a.emit("SUB", rd=R_TMP, ra=R_NPROMPT, rb=R_POS, comment="prompt tokens left")
    a.emit("BGE", ra=0, rb=R_TMP, target="embed", comment="none: decode one token")
    a.emit("LI", rd=R_N, imm=plan.prefill_chunk)
    a.emit("MIN", rd=R_N, ra=R_N, rb=R_TMP)
    a.label("embed")

    def embed():
        a.emit("ADD", rd=R_T, ra=R_POS, rb=R_J, comment="position")
        a.emit("BGE", ra=R_T, rb=R_NPROMPT, target="embed_generated")
        a.emit("MULI", rd=R_TMP, ra=R_T, imm=4)
        a.emit("LDR", rd=R_TOK, addr=_o(DESC.PROMPT, R_TMP), comment="prompt token")
        a.label("embed_generated")
        a.emit("LOADR", dst=_o(vb["x"], R_XO), mat=_o(hbm["wte"]), ldb=plan.ldb_hidden,
               row=_o(0, R_TOK), len=_o(cp))
        a.emit("LOADR", dst=_o(vb["tmp"]), mat=_o(hbm["wpe"]), ldb=plan.ldb_hidden,
               row=_o(0, R_T), len=_o(cp))
        a.emit("VADD", dst=_o(vb["x"], R_XO), a=_o(vb["x"], R_XO), b=_o(vb["tmp"]),
               len=_o(cp))

    _token_loop(a, "embed_loop", embed, {R_XO: cp})

    # -- the layers ----------------------------------------------------------------------------
    a.emit("LI", rd=R_L, imm=0)
    a.emit("LI", rd=R_WL, imm=hbm["layers"])
    a.emit("LI", rd=R_KV, imm=hbm["kv"])
    a.label("layer")
    a.emit("LOADV", dst=_o(vb["par"]), src=_o(lay["par"], R_WL),
           len=_o(plan.vbuf["par"].size), comment="layer parameters")
    if moe is not None:
        a.emit("MULI", rd=R_TMP, ra=R_L, imm=4)
        a.emit("LDR", rd=R_KIND, addr=_o(moe.kind_table, R_TMP), comment="layer kind")
    _token_loop(a, "ln1_loop", lambda: _layernorm(
        a, plan, _o(vb["x"], R_XO), _o(vb["h"], R_XO), par["ln1_g"], par["ln1_b"]),
        {R_XO: cp})
    a.emit("MM", dst=_o(vb["qkv"]), src=_o(vb["h"]), w=_o(lay["c_attn"], R_WL),
           ldb=plan.ldb_hidden, rows=_o(qkv_rows), cols=_o(cp), ntok=_o(0, R_N),
           dstride=qkv_stride, sstride=cp, bias=par["attn_b"], flags={"bias", "prefetched"},
           comment="QKV")
    branch_if_moe("qkv_moe")
    prefetch("c_fc")
    if moe is not None:
        a.emit("JMP", target="qkv_done")
        a.label("qkv_moe")
        prefetch("gate")
        a.label("qkv_done")

    def kv_append():
        a.emit("ADD", rd=R_T, ra=R_POS, rb=R_J)
        for h in range(hl):
            q = vb["qkv"] + h * hdp
            k = vb["qkv"] + (hl + h) * hdp
            v = vb["qkv"] + (2 * hl + h) * hdp
            a.emit("VMULS", dst=_o(q, R_QO), a=_o(q, R_QO), s=S_QSCALE, len=_o(hdp),
                   comment=f"scale q{h}")
            a.emit("STORER", mat=_o(kvr[f"k{h}"], R_KV), ldb=plan.ldb_head_dim, row=_o(0, R_T),
                   src=_o(k, R_QO), len=_o(hdp), comment=f"append k{h}")
            a.emit("STOREC", mat=_o(kvr[f"v{h}"], R_KV), ldb=plan.ldb_positions, col=_o(0, R_T),
                   src=_o(v, R_QO), len=_o(hdp), comment=f"append v{h} (transposed)")

    _token_loop(a, "kv_loop", kv_append, {R_QO: qkv_stride})

    def attention():
        a.emit("ADD", rd=R_T, ra=R_POS, rb=R_J)
        a.emit("ADDI", rd=R_T, ra=R_T, imm=1, comment="keys visible to this token")
        for h in range(hl):
            a.emit("MM", dst=_o(vb["scores"] + h * tp), src=_o(vb["qkv"] + h * hdp, R_QO),
                   w=_o(kvr[f"k{h}"], R_KV), ldb=plan.ldb_head_dim, rows=_o(0, R_T), cols=_o(hdp),
                   ntok=_o(1), dstride=tp, sstride=hdp, flags={"mask"},
                   comment=f"scores head {h}")
        for h in range(hl):
            _softmax(a, _o(vb["scores"] + h * tp), _o(0, R_T))
        for h in range(hl):
            head = head0 + h
            a.emit("MM", dst=_o(vb["att"] + head * hdp, R_AO), src=_o(vb["scores"] + h * tp),
                   w=_o(kvr[f"v{h}"], R_KV), ldb=plan.ldb_positions, rows=_o(hdp), cols=_o(0, R_T),
                   ntok=_o(1), dstride=hdp, sstride=tp, comment=f"attention head {h}")

    _token_loop(a, "attn_loop", attention, {R_QO: qkv_stride, R_AO: hp})
    a.emit("ALLGATHER", base=_o(vb["att"]), slice=plan.slot_heads * hdp, stride=hp,
           count=_o(0, R_N))
    a.emit("MM", dst=_o(vb["y"] + device * plan.hidden_slot), src=_o(vb["att"]),
           w=_o(lay["c_proj"], R_WL), ldb=plan.ldb_heads, rows=_o(c_rows), cols=_o(hp),
           ntok=_o(0, R_N), dstride=cp, sstride=hp, bias=par["proj_b"],
           flags={"bias", "prefetched"}, comment="attention projection")
    branch_if_moe("proj_moe")  # an MoE block knows its experts only after the router
    prefetch("c_fcproj")
    if moe is not None:
        a.label("proj_moe")
    a.emit("ALLGATHER", base=_o(vb["y"]), slice=plan.hidden_slot, stride=cp, count=_o(0, R_N))

    def residual_ln2():
        x = _o(vb["x"], R_XO)
        a.emit("VADD", dst=x, a=x, b=_o(vb["y"], R_XO), len=_o(cp), comment="residual")
        _layernorm(a, plan, x, _o(vb["h"], R_XO), par["ln2_g"], par["ln2_b"])

    _token_loop(a, "ln2_loop", residual_ln2, {R_XO: cp})
    branch_if_moe("moe_ffn")
    a.emit("MM", dst=_o(vb["m"] + device * plan.mlp_slot), src=_o(vb["h"]),
           w=_o(lay["c_fc"], R_WL), ldb=plan.ldb_hidden, rows=_o(i_rows), cols=_o(cp),
           ntok=_o(0, R_N), dstride=ip, sstride=cp, bias=par["fc_b"],
           flags={"bias", "prefetched"}, comment="MLP up")
    # two ahead: the next layer's QKV, else the LM head, else the next pass's first QKV
    prefetch_two_ahead("up", "c_attn", lambda done: prefetch_head(),
                       lambda: prefetch_first_layer("c_attn"))
    m_local = vb["m"] + device * plan.mlp_slot
    _token_loop(a, "gelu_loop", lambda: a.emit(
        "VGELU", dst=_o(m_local, R_AO), a=_o(m_local, R_AO), len=_o(plan.mlp_slot)), {R_AO: ip})
    a.emit("ALLGATHER", base=_o(vb["m"]), slice=plan.mlp_slot, stride=ip, count=_o(0, R_N))
    a.emit("MM", dst=_o(vb["y"] + device * plan.hidden_slot), src=_o(vb["m"]),
           w=_o(lay["c_fcproj"], R_WL), ldb=plan.ldb_mlp, rows=_o(c_rows), cols=_o(ip),
           ntok=_o(0, R_N), dstride=cp, sstride=ip, bias=par["fcproj_b"],
           flags={"bias", "prefetched"}, comment="MLP down")
    # two ahead: the next layer's projection; after the last layer, the next pass's first
    # QKV (head passes, when a pass follows) or first projection (prefill passes)

    def head_pass(done: str):
        branch_unless_another_token(done)
        prefetch_first_layer("c_attn")

    prefetch_two_ahead("down", "c_proj", head_pass, lambda: prefetch_first_layer("c_proj"))
    a.emit("ALLGATHER", base=_o(vb["y"]), slice=plan.hidden_slot, stride=cp, count=_o(0, R_N))
    _token_loop(a, "res2_loop", lambda: a.emit(
        "VADD", dst=_o(vb["x"], R_XO), a=_o(vb["x"], R_XO), b=_o(vb["y"], R_XO), len=_o(cp),
        comment="residual"), {R_XO: cp})
    if moe is not None:
        a.emit("JMP", target="layer_next")
        a.label("moe_ffn")
        _moe_ffn(a, plan, device, prefetch_two_ahead, prefetch_head, prefetch_first_layer,
                 head_pass)
        a.label("layer_next")
    a.emit("ADDI", rd=R_L, ra=R_L, imm=1)
    a.emit("ADDI", rd=R_WL, ra=R_WL, imm=plan.layer_stride)
    a.emit("ADDI", rd=R_KV, ra=R_KV, imm=plan.kv_stride)
    a.emit("LI", rd=R_TMP, imm=plan.shape.n_layer)
    a.emit("BLT", ra=R_L, rb=R_TMP, target="layer")

    # -- end of pass: the LM head when the pass reached the end of the prompt ------------------
    a.emit("ADD", rd=R_POS, ra=R_POS, rb=R_N)
    a.emit("BLT", ra=R_POS, rb=R_NPROMPT, target="pass", comment="more prompt to read")
    a.emit("ADDI", rd=R_TMP, ra=R_N, imm=-1)
    a.emit("MULI", rd=R_TMP, ra=R_TMP, imm=cp, comment="last token of the pass")
    _layernorm(a, plan, _o(vb["x"], R_TMP), _o(vb["head_in"]), vb["lnf"], vb["lnf"] + cp)
    a.emit("MM", dst=_o(vb["logits"]), src=_o(vb["head_in"]), w=_o(wte_slice), ldb=plan.ldb_hidden,
           rows=_o(plan.vocab_rows[device]), cols=_o(cp), ntok=_o(1),
           dstride=plan.vocab_slot, sstride=cp, flags={"mask", "prefetched"}, comment="LM head")
    branch_unless_another_token("head_done")
    a.emit("LI", rd=R_WL, imm=hbm["layers"])
    prefetch("c_proj", comment="c_proj of layer 0, next pass")
    a.label("head_done")
    a.emit("ARGMAX", rd=R_TOK, sd=S_ARGMAX, a=_o(vb["logits"]),
           len=_o(plan.vocab_rows[device]), base=_o(device * plan.vocab_slot))
    a.emit("ARGMAXALL", rd=R_TOK, sd=S_ARGMAX, comment="greedy token, across the ring")
    a.emit("MULI", rd=R_TMP, ra=R_NOUT, imm=4)
    a.emit("TOKOUT", ra=R_TOK, addr=_o(out_tokens, R_TMP))
    a.emit("ADDI", rd=R_NOUT, ra=R_NOUT, imm=1)
    a.emit("BLT", ra=R_NOUT, rb=R_MAXNEW, target="pass")
    a.label("done")
    a.emit("TOKOUT", ra=R_NOUT, addr=_o(DESC.N_OUT), comment="tokens written")
    a.emit("HALT")
    return a.finish(), dict(a.labels)


def _moe_ffn(a: Asm, plan: Plan, device: int, prefetch_two_ahead, prefetch_head,
             prefetch_first_layer, head_pass) -> None:
    """An MoE block's FFN (see `host.compiler.moe`): router, top-k, the local experts, the
    ring, the sum of the devices' slots and the residual. Ends with the two PREFETCHes the
    dense FFN would have queued, so the weight stream continues unchanged."""
    moe = plan.moe
    vb = {k: r.offset for k, r in plan.vbuf.items()}
    lay = {k: r.offset for k, r in plan.layer_regions.items()}
    ex = {k: lay["experts"] + r.offset for k, r in moe.expert_regions.items()}
    cp, E, ep, d = plan.hidden_padded, moe.experts, moe.router_padded, plan.devices
    ehp = moe.expert_hidden_padded
    row = d * cp  # one token's D slots
    mine = vb["moe_y"] + device * cp
    a.emit("MM", dst=_o(vb["glog"]), src=_o(vb["h"]), w=_o(lay["gate"], R_WL),
           ldb=plan.ldb_hidden, rows=_o(E), cols=_o(cp), ntok=_o(0, R_N), dstride=ep, sstride=cp,
           flags={"mask", "prefetched"}, comment="router logits")

    def expert(choice: int, r_e: int, s_w: int | None):
        skip = f"expert{choice}_remote"
        a.emit("MULI", rd=R_TMP, ra=R_L, imm=4 * E)
        a.emit("MULI", rd=R_T, ra=r_e, imm=4)
        a.emit("ADD", rd=R_TMP, ra=R_TMP, rb=R_T)
        a.emit("LDR", rd=R_T, addr=_o(moe.slot_table, R_TMP), comment="local slot or -1")
        a.emit("BLT", ra=R_T, rb=0, target=skip, comment="held by another device")
        a.emit("MULI", rd=R_T, ra=R_T, imm=moe.expert_stride)
        a.emit("ADD", rd=R_T, ra=R_T, rb=R_WL, comment=f"choice {choice}: expert base")
        a.emit("LOADV", dst=_o(vb["epar"]), src=_o(ex["epar"], R_T), len=_o(ehp + cp),
               comment="expert biases")
        a.emit("PREFETCH", w=_o(ex["e_fc"], R_T), ldb=plan.ldb_hidden, rows=_o(ehp),
               cols=_o(cp), comment="expert up")
        a.emit("PREFETCH", w=_o(ex["e_proj"], R_T), ldb=moe.ldb_expert_hidden, rows=_o(cp),
               cols=_o(ehp), comment="expert down")
        a.emit("MM", dst=_o(vb["em"]), src=_o(vb["h"], R_XO), w=_o(ex["e_fc"], R_T),
               ldb=plan.ldb_hidden, rows=_o(ehp), cols=_o(cp), ntok=_o(1), dstride=ehp,
               sstride=cp, bias=vb["epar"], flags={"bias", "prefetched"}, comment="expert up")
        a.emit("VGELU", dst=_o(vb["em"]), a=_o(vb["em"]), len=_o(ehp))
        a.emit("MM", dst=_o(vb["ey"]), src=_o(vb["em"]), w=_o(ex["e_proj"], R_T),
               ldb=moe.ldb_expert_hidden, rows=_o(cp), cols=_o(ehp), ntok=_o(1), dstride=cp,
               sstride=ehp, bias=vb["epar"] + ehp, flags={"bias", "prefetched"},
               comment="expert down")
        if s_w is not None:
            a.emit("VMULS", dst=_o(vb["ey"]), a=_o(vb["ey"]), s=s_w, len=_o(cp),
                   comment="combine weight")
        a.emit("MULI", rd=R_T, ra=R_J, imm=row)
        a.emit("VADD", dst=_o(mine, R_T), a=_o(mine, R_T), b=_o(vb["ey"]), len=_o(cp),
               comment="into this device's slot")
        a.label(skip)

    def route():
        a.emit("MULI", rd=R_GO, ra=R_J, imm=ep, comment="this token's router logits")
        logits = _o(vb["glog"], R_GO)
        a.emit("ARGMAX", rd=R_E1, sd=S_MAX, a=logits, len=_o(E), base=_o(0),
               comment="first expert")
        weighted = moe.top_k == 2 or not moe.renormalize
        if weighted:  # e_i = exp(logit_i - max): the first expert's is 1
            a.emit("VADDS", dst=_o(vb["gexp"]), a=logits, s=S_MAX, len=_o(E), flags={"neg"})
            a.emit("VEXP", dst=_o(vb["gexp"]), a=_o(vb["gexp"]), len=_o(E))
        if moe.top_k == 2:
            a.emit("ADD", rd=R_T, ra=R_GO, rb=R_E1)
            a.emit("VSET", dst=_o(vb["glog"], R_T), s=S_NINF, comment="mask the first")
            a.emit("ARGMAX", rd=R_E2, sd=S_SUM, a=logits, len=_o(E), base=_o(0),
                   comment="second expert")
            for i, r_e in enumerate((R_E1, R_E2)):
                a.emit("VGET", sd=S_SUM, src=_o(vb["gexp"], r_e))
                a.emit("VSET", dst=_o(vb["gw"] + i), s=S_SUM)
            if moe.renormalize:
                a.emit("VSUM", sd=S_SUM, a=_o(vb["gw"]), len=_o(2), comment="e_1 + e_2")
            else:
                a.emit("VSUM", sd=S_SUM, a=_o(vb["gexp"]), len=_o(E), comment="sum of e")
            a.emit("SRECIP", sd=S_SUM, sa=S_SUM)
            a.emit("VMULS", dst=_o(vb["gw"]), a=_o(vb["gw"]), s=S_SUM, len=_o(2))
            a.emit("VGET", sd=S_W1, src=_o(vb["gw"]))
            a.emit("VGET", sd=S_W2, src=_o(vb["gw"] + 1))
        elif weighted:  # top-1, raw probability: p_1 = 1 / sum(e)
            a.emit("VSUM", sd=S_SUM, a=_o(vb["gexp"]), len=_o(E))
            a.emit("SRECIP", sd=S_W1, sa=S_SUM)
        a.emit("MULI", rd=R_T, ra=R_J, imm=row)
        a.emit("VADD", dst=_o(mine, R_T), a=_o(vb["zero"]), b=_o(vb["zero"]), len=_o(cp),
               comment="clear this device's slot")
        expert(1, R_E1, S_W1 if weighted else None)
        if moe.top_k == 2:
            expert(2, R_E2, S_W2)

    _token_loop(a, "moe_loop", route, {R_XO: cp})
    # the two matrices after this FFN in the weight stream, as the dense FFN queues them
    prefetch_two_ahead("moe_up", "c_attn", lambda done: prefetch_head(),
                       lambda: prefetch_first_layer("c_attn"))
    prefetch_two_ahead("moe_down", "c_proj", head_pass, lambda: prefetch_first_layer("c_proj"))
    if d > 1:
        a.emit("ALLGATHER", base=_o(vb["moe_y"]), slice=cp, stride=row, count=_o(0, R_N))

    def combine():
        x = _o(vb["x"], R_XO)
        if d == 1:
            a.emit("VADD", dst=x, a=x, b=_o(vb["moe_y"], R_GO), len=_o(cp), comment="residual")
            return
        a.emit("VADD", dst=_o(vb["ey"]), a=_o(vb["moe_y"], R_GO), b=_o(vb["moe_y"] + cp, R_GO),
               len=_o(cp), comment="sum the devices' slots")
        for s in range(2, d):
            a.emit("VADD", dst=_o(vb["ey"]), a=_o(vb["ey"]), b=_o(vb["moe_y"] + s * cp, R_GO),
                   len=_o(cp))
        a.emit("VADD", dst=x, a=x, b=_o(vb["ey"]), len=_o(cp), comment="residual")

    _token_loop(a, "moe_res_loop", combine, {R_XO: cp, R_GO: row})
