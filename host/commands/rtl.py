"""Hardware builds of the accelerator's RTL.

`tandem rtl build --config tiny|u280|PATH --devices K --out DIR` writes the Verilog of the
kernel (one per FPGA) and of a cluster top holding K kernels in a ring, with a manifest
(config, register map, files); see `rtl.build`.
"""

from __future__ import annotations

from pathlib import Path

from hw.config import load_config
from hw.outdir import output_dir

NAME = "rtl"
HELP = "write the accelerator's Verilog (kernel and K-device cluster top)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="write Verilog for a config",
                       description="Write tandem_kernel.v, tandem_cluster.v and manifest.json.")
    b.add_argument("--config", default="tiny", help="tiny, u280, u55c or a JSON file")
    b.add_argument("--devices", type=int, default=1, help="kernels in the cluster's ring")
    b.add_argument("--out", required=True, help="output directory (written whole, or not at all)")
    b.add_argument("--force", action="store_true",
                   help="replace --out even when it is a non-empty directory this command did "
                   "not write")


def run(args) -> int:
    from rtl.build import build

    config = load_config(args.config, args.devices)
    inputs = [args.config if Path(args.config).is_file() else None]
    # keep_existing: a kernel converted before from the same sources is reused, not redone
    with output_dir(args.out, "rtl build", inputs=inputs, force=args.force,
                    keep_existing=True) as tmp:
        written = build(config, args.devices, tmp)
    for path in written:
        print(Path(args.out) / path.relative_to(tmp))
    return 0
