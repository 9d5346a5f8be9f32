"""Per-device HBM images: the checkpoint's tensors, rounded to FP16, in the plan's padded,
sliced and striped layouts."""

from __future__ import annotations

import numpy as np

from hw.hbm import HbmImage
from hw.intmath import round_up
from hw.layout import DESC

from .moe import scalar_tables
from .plan import Plan, slot_positions

__all__ = ["build_image"]


def _fp16(t) -> np.ndarray:
    return np.asarray(t.detach().float().cpu().numpy() if hasattr(t, "detach") else t,
                      np.float32).astype(np.float16)


def _place(rows: np.ndarray, cols_to: np.ndarray, width: int) -> np.ndarray:
    """rows (R, n) -> (R, width) with column f at position cols_to[f], zeros elsewhere."""
    out = np.zeros((rows.shape[0], width), np.float16)
    out[:, cols_to] = rows
    return out


def build_image(plan: Plan, state: dict, device: int) -> HbmImage:
    """`state`: a GPT-2 state dict (HF key names, `transformer.` prefix)."""
    cfg = plan.config
    s = plan.shape
    dev = device
    c, hd = s.n_embd, plan.head_dim
    col_c = np.array(slot_positions(plan.hidden_counts, plan.hidden_slot))  # hidden positions
    # heads-padded positions: head g in its device's slot of slot_heads heads of head_dim_padded
    head_at = np.array(slot_positions(plan.head_counts, plan.slot_heads))  # (n_head,)
    col_h = head_at[np.arange(c) // hd] * plan.head_dim_padded + np.arange(c) % hd
    col_i = np.array(slot_positions(plan.mlp_counts, plan.mlp_slot))
    image = HbmImage(cfg)
    image.write_i32(DESC.MAGIC, [DESC.MAGIC_VALUE])
    hbm = {k: r.offset for k, r in plan.hbm.items()}

    def t(name):
        return _fp16(state[name])

    def hidden_columns(rows):
        """rows (R, C) -> (R, hidden_padded): columns moved to the hidden vector's layout."""
        return _place(rows, col_c, plan.hidden_padded)

    wte = t("transformer.wte.weight")  # (V, C)
    image.write_matrix(hbm["wte"], plan.ldb_hidden, hidden_columns(wte))
    image.write_matrix(hbm["wpe"], plan.ldb_hidden, hidden_columns(t("transformer.wpe.weight")))
    if not s.tied_head:
        image.write_matrix(hbm["lm_head"], plan.ldb_hidden, hidden_columns(t("lm_head.weight")))
    lnf = np.zeros(2 * plan.hidden_padded, np.float16)
    lnf[col_c] = t("transformer.ln_f.weight")
    lnf[plan.hidden_padded + col_c] = t("transformer.ln_f.bias")
    image.write_vector(hbm["lnf"], lnf)
    cmask = np.zeros(plan.hidden_padded, np.float16)
    cmask[col_c] = 1
    image.write_vector(hbm["cmask"], cmask)

    hl = plan.head_counts[dev]
    heads = range(plan.head_start(dev), plan.head_start(dev) + hl)
    # QKV rows: q, k and v of this device's heads, each head padded to head_dim_padded
    qkv_src = np.concatenate([part * c + h * hd + np.arange(hd)
                              for part in range(3) for h in heads])
    qkv_dst = np.concatenate([i * plan.head_dim_padded + np.arange(hd) for i in range(3 * hl)])
    out_c = np.arange(plan.hidden_start(dev), plan.hidden_start(dev) + plan.hidden_counts[dev])
    out_i = np.arange(plan.mlp_start(dev), plan.mlp_start(dev) + plan.mlp_counts[dev])
    for layer in range(s.n_layer):
        p = f"transformer.h.{layer}."
        base = hbm["layers"] + layer * plan.layer_stride
        lay = {k: base + r.offset for k, r in plan.layer_regions.items()}

        w_attn = t(p + "attn.c_attn.weight").T  # (3C out, C in)
        rows = np.zeros((plan.qkv_rows_of(dev), s.n_embd), np.float16)
        rows[qkv_dst] = w_attn[qkv_src]
        image.write_matrix(lay["c_attn"], plan.ldb_hidden, hidden_columns(rows))
        w_proj = t(p + "attn.c_proj.weight").T[out_c]  # (this device's columns, C in)
        image.write_matrix(lay["c_proj"], plan.ldb_heads, _place(w_proj, col_h, plan.heads_padded))
        is_moe = plan.moe is not None and layer in plan.moe.layers
        if is_moe:
            _write_moe_layer(image, plan, state, layer, dev, lay, col_c)
        else:
            w_fc = t(p + "mlp.c_fc.weight").T[out_i]  # (this device's columns, C in)
            image.write_matrix(lay["c_fc"], plan.ldb_hidden, hidden_columns(w_fc))
            w_fcproj = t(p + "mlp.c_proj.weight").T[out_c]  # (this device's columns, I in)
            image.write_matrix(lay["c_fcproj"], plan.ldb_mlp,
                               _place(w_fcproj, col_i, plan.mlp_padded))

        fields = {k: np.zeros(r.size, np.float16) for k, r in plan.params.items()}
        for name, key in (("ln1", "ln_1"), ("ln2", "ln_2")):
            fields[f"{name}_g"][col_c] = t(p + f"{key}.weight")
            fields[f"{name}_b"][col_c] = t(p + f"{key}.bias")
        fields["attn_b"][qkv_dst] = t(p + "attn.c_attn.bias")[qkv_src]
        fields["proj_b"][: len(out_c)] = t(p + "attn.c_proj.bias")[out_c]
        if not is_moe:
            fields["fc_b"][: len(out_i)] = t(p + "mlp.c_fc.bias")[out_i]
            fields["fcproj_b"][: len(out_c)] = t(p + "mlp.c_proj.bias")[out_c]
        words = max(r.offset + r.size for r in plan.params.values())
        par = np.zeros(round_up(words, cfg.align), np.float16)
        for k, r in plan.params.items():
            par[r.offset : r.offset + r.size] = fields[k]
        image.write_vector(lay["par"], par)
    if plan.moe is not None:
        for offset, table in scalar_tables(plan, dev).items():
            image.write_i32(offset, table)
    return image


def _write_moe_layer(image: HbmImage, plan: Plan, state: dict, layer: int, device: int,
                     lay: dict, col_c: np.ndarray) -> None:
    """The router (every device) and this device's experts, each whole, in slot order."""
    m = plan.moe
    assert m is not None  # called for the MoE blocks of an MoE model only
    p = f"transformer.h.{layer}.mlp."
    gate = _fp16(state[p + "gate.weight"]).T  # (E out, C in)
    image.write_matrix(lay["gate"], plan.ldb_hidden, _place(gate, col_c, plan.hidden_padded))
    hidden = np.arange(m.expert_hidden)
    for e in m.local_experts(layer, device):
        q = f"{p}experts.{e}."
        base = lay["experts"] + m.expert_slot[layer][e] * m.expert_stride
        reg = {k: base + r.offset for k, r in m.expert_regions.items()}
        # zero rows keep the padding zero
        w_fc = np.zeros((m.expert_hidden_padded, plan.hidden_padded), np.float16)
        w_fc[: m.expert_hidden] = _place(_fp16(state[q + "c_fc.weight"]).T, col_c,
                                         plan.hidden_padded)
        image.write_matrix(reg["e_fc"], plan.ldb_hidden, w_fc)
        # rows in the hidden layout
        w_proj = np.zeros((plan.hidden_padded, m.expert_hidden_padded), np.float16)
        w_proj[col_c] = _place(_fp16(state[q + "c_proj.weight"]).T, hidden,
                               m.expert_hidden_padded)
        image.write_matrix(reg["e_proj"], m.ldb_expert_hidden, w_proj)
        biases = np.zeros(m.expert_hidden_padded + plan.hidden_padded, np.float16)
        biases[hidden] = _fp16(state[q + "c_fc.bias"])
        biases[m.expert_hidden_padded + col_c] = _fp16(state[q + "c_proj.bias"])
        image.write_vector(reg["epar"], biases)
