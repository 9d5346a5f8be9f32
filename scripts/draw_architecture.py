"""Draw docs/architecture.png: one checkpoint's path through Tandem, and the package layers.

    python scripts/draw_architecture.py [--out docs/architecture.png]

Left: the data flow (checkpoint -> golden model -> compiler -> per-device program -> one of
three device backends -> tokens and cycles). Right: the packages and the direction their
imports may run (each arrow is an allowed import edge, from DESIGN.md's rules of the house).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

REPO_ROOT = Path(__file__).resolve().parents[1]

FLOW = [  # (label, detail, colour)
    ("HF checkpoint", "config.json + model.safetensors + tokenizer", "#e8e8e8"),
    ("models/", "golden GPT-2 / MoE-GPT in PyTorch; trainer", "#cfe2f3"),
    ("host/compiler", "partition over the ring, tile weights per HBM port", "#d9ead3"),
    ("Program (per device)", "256-bit instruction words + HBM images + symbols", "#fff2cc"),
]
BACKENDS = [
    ("isa", "hw/isasim: instruction-level\nsim, bit-exact + timing model", "#f4cccc"),
    ("rtl", "Amaranth RTL under cocotb\nVerilator / Icarus", "#f4cccc"),
    ("board", "Alveo U280 / U55C\nthrough PYNQ", "#f4cccc"),
]
LAYERS = {  # package: (x, y) on the right-hand panel
    "scripts": (0.5, 0.92), "host": (0.5, 0.72), "models": (0.18, 0.50),
    "sim": (0.82, 0.50), "gpu_kernels": (0.18, 0.28), "rtl": (0.82, 0.28), "hw": (0.5, 0.08),
}
EDGES = [("scripts", "host"), ("host", "models"), ("host", "sim"), ("host", "hw"),
         ("host", "rtl"), ("models", "gpu_kernels"), ("sim", "rtl"), ("sim", "hw"),
         ("rtl", "hw")]


def _box(ax, x, y, w, h, text, colour, size=10, weight="normal"):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.01",
                                facecolor=colour, edgecolor="#444444", linewidth=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight, wrap=True)


def _arrow(ax, a, b, style="-|>", colour="#333333"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=14, color=colour,
                                 linewidth=1.2, shrinkA=0, shrinkB=0))


def draw(out: Path) -> None:
    plt.switch_backend("Agg")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 7.2),
                                      gridspec_kw={"width_ratios": [1.35, 1]})
    for ax in (left, right):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.axis("off")
    left.set_title("One checkpoint, one toolchain", fontsize=13, weight="bold")
    y = 0.92
    for i, (label, detail, colour) in enumerate(FLOW):
        _box(left, 0.5, y, 0.78, 0.1, f"{label}\n{detail}", colour,
             weight="bold" if i == 0 else "normal")
        if i:
            _arrow(left, (0.5, y + 0.095), (0.5, y + 0.05))
        y -= 0.145
    y_back = y - 0.02
    for j, (label, detail, colour) in enumerate(BACKENDS):
        x = 0.2 + 0.3 * j
        _box(left, x, y_back, 0.27, 0.12, f"{label}\n{detail}", colour, size=9)
        _arrow(left, (0.5, y + 0.095), (x, y_back + 0.06))
    y_out = y_back - 0.2
    _box(left, 0.5, y_out, 0.78, 0.09,
         "tokens, per-token cycles by cause, HBM utilization\n-> scripts/ benchmarks and plots",
         "#e8e8e8")
    for j in range(3):
        _arrow(left, (0.2 + 0.3 * j, y_back - 0.06), (0.5, y_out + 0.045))
    left.text(0.5, 0.015, "prompt (summarization) on the GPU, decode and MoE experts on the "
              "FPGAs: host/runtime", ha="center", fontsize=9, style="italic")

    right.set_title("Packages: imports run downward only", fontsize=13, weight="bold")
    for name, (x, y) in LAYERS.items():
        _box(right, x, y, 0.3, 0.09, name + "/", "#ffffff", size=11, weight="bold")
    for a, b in EDGES:
        (xa, ya), (xb, yb) = LAYERS[a], LAYERS[b]
        dx, dy = xb - xa, yb - ya
        norm = (dx * dx + dy * dy) ** 0.5
        start = (xa + 0.06 * dx / norm, ya + 0.06 * dy / norm)
        end = (xb - 0.06 * dx / norm, yb - 0.06 * dy / norm)
        _arrow(right, start, end, colour="#1f4e79")
    right.text(0.5, -0.03, "host imports sim only inside the RTL backend; nothing imports tests",
               ha="center", fontsize=9, style="italic")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "architecture.png")
    args = parser.parse_args(argv)
    draw(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
