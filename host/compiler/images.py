"""Per-device HBM images: the checkpoint's tensors, rounded to FP16, in the plan's padded,
sliced and striped layouts."""

from __future__ import annotations

import numpy as np

from hw.hbm import HbmImage
from hw.layout import DESC

from .plan import Plan

__all__ = ["build_image", "gapped"]


def gapped(n: int, slices: int, slice_len: int, slice_padded: int) -> np.ndarray:
    """Positions of the n = slices * slice_len values of a vector in its padded layout."""
    f = np.arange(n)
    return (f // slice_len) * slice_padded + f % slice_len


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
    d, dev = cfg.devices, device
    c, hd, hl = s.n_embd, plan.hd, plan.heads_local
    col_c = gapped(c, d, plan.c_l, plan.c_lp)  # hidden vector positions
    col_h = (np.arange(c) // hd) * plan.hdp + np.arange(c) % hd  # heads-padded positions
    col_i = gapped(s.n_inner, d, plan.i_l, plan.i_lp)
    image = HbmImage(cfg)
    image.write_i32(DESC.MAGIC, [DESC.MAGIC_VALUE])
    hbm = {k: r.offset for k, r in plan.hbm.items()}

    def t(name):
        return _fp16(state[name])

    wte = t("transformer.wte.weight")  # (V, C)
    image.write_matrix(hbm["wte"], plan.ldb_c, _place(wte, col_c, plan.cp))
    image.write_matrix(hbm["wpe"], plan.ldb_c, _place(t("transformer.wpe.weight"), col_c, plan.cp))
    if not s.tied_head:
        image.write_matrix(hbm["lm_head"], plan.ldb_c, _place(t("lm_head.weight"), col_c, plan.cp))
    lnf = np.zeros(2 * plan.cp, np.float16)
    lnf[col_c] = t("transformer.ln_f.weight")
    lnf[plan.cp + col_c] = t("transformer.ln_f.bias")
    image.write_vector(hbm["lnf"], lnf)
    cmask = np.zeros(plan.cp, np.float16)
    cmask[col_c] = 1
    image.write_vector(hbm["cmask"], cmask)

    heads = range(dev * hl, (dev + 1) * hl)
    qkv_src = [part * c + h * hd + np.arange(hd) for part in range(3) for h in heads]
    qkv_dst = [i * plan.hdp + np.arange(hd) for i in range(3 * hl)]
    qkv_src, qkv_dst = np.concatenate(qkv_src), np.concatenate(qkv_dst)
    out_c = np.arange(dev * plan.c_l, (dev + 1) * plan.c_l)
    out_i = np.arange(dev * plan.i_l, (dev + 1) * plan.i_l)
    for layer in range(s.n_layer):
        p = f"transformer.h.{layer}."
        base = hbm["layers"] + layer * plan.layer_stride
        lay = {k: base + r.offset for k, r in plan.layer_regions.items()}

        w_attn = t(p + "attn.c_attn.weight").T  # (3C out, C in)
        rows = np.zeros((plan.qkv_rows, s.n_embd), np.float16)
        rows[qkv_dst] = w_attn[qkv_src]
        image.write_matrix(lay["c_attn"], plan.ldb_c, _place(rows, col_c, plan.cp))
        w_proj = t(p + "attn.c_proj.weight").T[out_c]  # (c_l out, C in)
        image.write_matrix(lay["c_proj"], plan.ldb_h, _place(w_proj, col_h, plan.hp))
        w_fc = t(p + "mlp.c_fc.weight").T[out_i]  # (i_l out, C in)
        image.write_matrix(lay["c_fc"], plan.ldb_c, _place(w_fc, col_c, plan.cp))
        w_fcproj = t(p + "mlp.c_proj.weight").T[out_c]  # (c_l out, I in)
        image.write_matrix(lay["c_fcproj"], plan.ldb_i, _place(w_fcproj, col_i, plan.ip))

        fields = {k: np.zeros(r.size, np.float16) for k, r in plan.par.items()}
        for name, key in (("ln1", "ln_1"), ("ln2", "ln_2")):
            fields[f"{name}_g"][col_c] = t(p + f"{key}.weight")
            fields[f"{name}_b"][col_c] = t(p + f"{key}.bias")
        fields["attn_b"][qkv_dst] = t(p + "attn.c_attn.bias")[qkv_src]
        fields["proj_b"][: plan.c_l] = t(p + "attn.c_proj.bias")[out_c]
        fields["fc_b"][: plan.i_l] = t(p + "mlp.c_fc.bias")[out_i]
        fields["fcproj_b"][: plan.c_l] = t(p + "mlp.c_proj.bias")[out_c]
        words = max(r.offset + r.size for r in plan.par.values())
        par = np.zeros(-(-words // cfg.align) * cfg.align, np.float16)
        for k, r in plan.par.items():
            par[r.offset : r.offset + r.size] = fields[k]
        image.write_vector(lay["par"], par)
    return image
