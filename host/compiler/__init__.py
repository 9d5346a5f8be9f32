"""The compiler: a GPT-2 or MoE-GPT checkpoint plus an `AccelConfig` -> one program per device,
the per-device HBM images and a symbol map (for MoE-GPT, with the expert placement; see `moe`).

Steps, each its own module, run by `compile_model`:
- `plan` partitions the model across the devices (attention by heads, every matrix by output
  columns), pads each vector into one slot per device, and lays out the vector buffer and
  every HBM channel (`Plan`); `moe` places an MoE-GPT's experts on the ring;
- `codegen` emits each device's program (`ProgramBuilder`): read the job descriptor, then
  passes of n tokens (prefill chunks, then one token per decode step) through the
  embeddings, every layer's attention and MLP or MoE FFN, and the LM head with an argmax
  across the ring, the weights streamed two matrices ahead;
- `images` writes the checkpoint's weights, rounded to FP16, into each device's HBM layout.

Anything that cannot be mapped is refused with a `CompileError` (`errors`) naming the limit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hw.config import AccelConfig
from hw.hbm import HbmImage
from hw.isa import Instr, disassemble, encode_program

from .codegen import R_LAYER, generate_program
from .errors import CompileError
from .images import build_image
from .plan import ModelShape, Plan, make_plan

__all__ = ["CompileError", "CompiledModel", "ModelShape", "Plan", "compile_model"]


@dataclass
class CompiledModel:
    """What `compile_model` produced: everything a Device backend loads and a reader needs."""

    plan: Plan
    programs: list[list[Instr]]  # one per device
    images: list[HbmImage] | None  # one per device; None for a timing-only compile
    labels: list[dict[str, int]]  # one per device: label -> instruction index

    def loop_hints(self, device: int = 0) -> dict[int, tuple[int, int]]:
        """Loops a timing-only simulation may fast-forward: head pc -> (counter reg, limit)."""
        return {self.labels[device]["layer"]: (R_LAYER, self.plan.shape.n_layer)}

    @property
    def config(self) -> AccelConfig:
        return self.plan.config

    def symbols(self) -> dict:
        """Where everything lives: VBUF words, HBM channel offsets, layer/KV sub-offsets."""
        p = self.plan
        return {
            "config": p.config.to_dict(),
            "model": asdict(p.shape),
            "partition": p.summary(),
            "vbuf": {k: asdict(v) for k, v in p.vbuf.items()},
            "hbm": {k: asdict(v) for k, v in p.hbm.items()},
            "layer": {k: asdict(v) for k, v in p.layer_regions.items()},
            "kv_layer": {k: asdict(v) for k, v in p.kv_regions.items()},
            "layer_stride": p.layer_stride,
            "kv_stride": p.kv_stride,
            **({"moe": {**p.moe.summary(),
                        "expert": {k: asdict(v) for k, v in p.moe.expert_regions.items()}}}
               if p.moe is not None else {}),
        }

    def save(self, out: str | Path) -> list[Path]:
        """programs (binary + text), HBM images per device and bank, symbols.json."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for d, program in enumerate(self.programs):
            binary = out / f"device{d}.bin"
            binary.write_bytes(encode_program(program).tobytes())
            text = out / f"device{d}.s"
            text.write_text(disassemble(program))
            written += [binary, text]
            if self.images is not None:
                written += self.images[d].save(out / f"device{d}_hbm")
        symbols = out / "symbols.json"
        symbols.write_text(json.dumps(self.symbols(), indent=2) + "\n")
        return [*written, symbols]


def compile_model(model_or_shape, config: AccelConfig, max_chunk: int = 128,
                  expert_loads: dict[int, list[float]] | None = None) -> CompiledModel:
    """Compile a golden model (weights included) or a `ModelShape` (timing only).

    expert_loads: for MoE-GPT, {block: tokens per expert} to place experts by (e.g. routing
    counts measured on a corpus); uniform by default."""
    if isinstance(model_or_shape, ModelShape):
        shape, state = model_or_shape, None
        if shape.is_moe:
            raise CompileError("an MoE model needs its checkpoint to compile: the routing "
                               "tables are part of the memory image; pass the checkpoint")
    else:
        shape = ModelShape.from_config(model_or_shape.config)
        state = model_or_shape.state_dict()
    plan = make_plan(shape, config, max_chunk, expert_loads)
    generated = [generate_program(plan, d) for d in range(config.devices)]
    programs = [program for program, _ in generated]
    for d, program in enumerate(programs):
        if len(program) > config.imem_words:
            raise CompileError(f"device {d}'s program has {len(program)} instructions; the "
                               f"config's instruction memory holds imem_words={config.imem_words}")
    images = None if state is None else [build_image(plan, state, d)
                                         for d in range(config.devices)]
    return CompiledModel(plan, programs, images, [labels for _, labels in generated])
