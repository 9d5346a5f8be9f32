"""`python -m hw.vitis --config u280 [--devices K] [--verilog FILE] --out DIR`: write a board
build directory (see `hw.vitis`). Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..outdir import OutputDirError, output_dir
from . import RingLink, write_build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw.vitis", description=__doc__)
    p.add_argument("--config", required=True, help="u280, u55c or a JSON config of either")
    p.add_argument("--devices", type=int, default=1, help="cards in the ring (default 1)")
    p.add_argument("--ring-link", default=None,
                   help="with --devices > 1: the QSFP28 link kernel, KERNEL:TX_PORT:RX_PORT:XO")
    p.add_argument("--verilog", default=None,
                   help="the RTL build's tandem_kernel.v: kernel.xml and the wrapper are "
                   "written from its ports")
    p.add_argument("--target", choices=("hw", "hw_emu"), default="hw")
    p.add_argument("--out", required=True, help="directory to write (whole, or not at all)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even when it is a non-empty directory this command did "
                   "not write")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        verilog = None
        if args.verilog is not None:
            path = Path(args.verilog)
            if not path.is_file():
                raise ConfigError(f"no Verilog at {path}; run the RTL build first")
            try:
                verilog = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read the Verilog {path} ({e})") from None
        ring = RingLink.parse(args.ring_link) if args.ring_link else None
        inputs = [args.config if Path(args.config).is_file() else None, args.verilog]
        with output_dir(args.out, "hw.vitis", inputs=inputs, force=args.force) as tmp:
            written = write_build(config, tmp, args.devices, ring, verilog, args.target)
        for path in written:
            print(Path(args.out) / path.relative_to(tmp))
    except (ConfigError, OutputDirError) as e:
        print(f"python -m hw.vitis: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
