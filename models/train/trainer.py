"""`train()`: a small, exact, resumable language-model trainer for CPU or CUDA, in one process
or many (torch.distributed: DDP, FSDP2 with `shard`, expert parallelism for MoE).

A run directory is a loadable HF-format checkpoint at every save (config.json,
model.safetensors, tokenizer.json) plus `trainer_state.pt` (fp32 weights, optimizer state,
step, the grad scaler, the unfinished logging window and every rank's RNG states) and
`train_log.jsonl`. Batches are drawn from a generator seeded by (seed, step), so a resumed
run continues exactly where an uninterrupted one would be; `stop_after` ends a run after a
checkpoint, as a preemption would.

Several processes (see `models.train.distributed`): the global batch of a step is
batch_size x grad_accum x world_size windows, the same windows one process would train on
with grad_accum x world_size. Dense models run under DDP, or FSDP2 (`fully_shard`) with
`shard`; an MoE-GPT averages its gradients with `models.moe.allreduce_gradients` over the
data-parallel and expert-data-parallel groups of `models.moe.parallel`, its experts split
over groups of `moe_ep_size` ranks.

Precision: `fp32`; `bf16` (autocast, FP32 master weights and optimizer state); `fp16`
(autocast with a gradient scaler, CUDA only); `auto` is bf16 on CUDA and fp32 elsewhere.

Models may expose `auxiliary_losses() -> dict[str, Tensor]` (already weighted) for the last
forward; the trainer adds them to the loss and logs each one. They may also expose
`train_metrics() -> dict[str, float]` (logged, not optimised) and
`begin_train_step(step, seed)`, called before each optimiser step so that any randomness or
schedule inside the model is a function of (seed, step) and a resumed run stays exact.

MoE options (`moe_*`) build an MoE-GPT instead of GPT-2; `init_from` starts from a
checkpoint's weights (a dense checkpoint is upcycled into the MoE model); `distill_from`
adds a Mixture-of-Students distillation term towards a teacher checkpoint.

Data efficiency (`data_efficiency`, DeepSpeed's JSON): curriculum learning draws the windows
(a seqlen_truncate curriculum shortens them; the log's `tokens` counts what was drawn) and
random-LTD drops tokens in the middle layers. FIM (`fim_rate`): the train split is decoded
into its documents, FIM-transformed at the character level once per run (seeded; whole
documents, or with `fim_max_chars` context-level pieces of them) and tokenised again with the
sentinels (`models.data.fim.fim_train_data`); the validation split
stays left-to-right, and the checkpoint's tokenizer.json carries the sentinels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gpu_kernels import triton_available

from ..config import GPT2Config
from ..data import DataEfficiency, TokenData, parse_data_efficiency, read_data_efficiency
from ..data.fim import FIMConfig, fim_train_data
from ..errors import CheckpointError, ModelConfigError
from ..gpt2 import GPT2LMHead
from ..moe import MoEGPT, kd_loss, kd_weight, upcycle_into
from ..moe.parallel import (
    allreduce_gradients,
    create_expert_parallel_groups,
    split_parameters,
)
from ..registry import load_model
from ..sizing import available_memory_bytes, parameter_count, training_bytes
from ..tokenizer import Tokenizer
from .config import TrainConfig
from .distributed import (
    DistContext,
    get_rng_states,
    init_distributed,
    seed_global_rngs,
    set_rng_states,
)
from .schedule import lr_at
from .throughput import flops_per_token, peak_tflops_for

__all__ = ["TrainResult", "build_model", "check_options", "evaluate_split", "train"]

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
RANK_STATE_DIR = "rank_states"  # expert parallelism: each rank's experts and optimizer state


@dataclass
class TrainResult:
    steps: int  # optimiser steps taken in total
    train_loss: float  # mean loss of the last logging window
    val_loss: float  # loss on the fixed validation batches at the end
    seconds: float  # wall time of this invocation
    tokens: int  # training tokens seen in total
    stopped_early: bool = False  # ended by stop_after before max_steps


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_config(cfg: TrainConfig, vocab_size: int, eot_id: int) -> GPT2Config:
    """The checkpoint config of the model `cfg` describes (an MoEGPTConfig for MoE)."""
    if cfg.is_moe:
        return cfg.moe_config(vocab_size, eot_id)
    return GPT2Config(vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=eot_id,
                      eos_token_id=eot_id)


def build_model(cfg: TrainConfig, vocab_size: int, eot_id: int) -> nn.Module:
    """The model `cfg` describes, running the kernels `cfg.kernels` names."""
    cls = MoEGPT if cfg.is_moe else GPT2LMHead
    return cls(model_config(cfg, vocab_size, eot_id), kernels=cfg.kernels)


def check_fits(cfg: TrainConfig, vocab_size: int, eot_id: int) -> None:
    """Refuse, before anything is allocated, a model and micro-batch whose training state
    cannot fit in the memory this machine has free (`models.sizing.training_bytes`)."""
    config = model_config(cfg, vocab_size, eot_id)
    need, free = training_bytes(config, cfg.batch_size, cfg.block_size), available_memory_bytes()
    if need > free:
        raise ModelConfigError(
            f"training needs at least {need / 1e9:.3g} GB of memory "
            f"({parameter_count(config) / 1e6:.4g} M parameters with AdamW, micro-batches of "
            f"{cfg.batch_size} x {cfg.block_size} tokens) but {free / 1e9:.3g} GB is free; use "
            "a smaller --n-layer, --n-embd, --batch-size or --block-size")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class LMLoss(nn.Module):
    """model + next-token loss as one module, the unit DDP, FSDP2 and torch.compile wrap.

    forward(x (B, T), y (B, T)) -> (mean cross-entropy in FP32, logits (B, T, V) or None).
    fused: the model's `lm_loss` (the Triton LM head + loss, which never materialises the
    logits, so None is returned for them); otherwise the logits and F.cross_entropy."""

    def __init__(self, model: nn.Module, fused: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fused = fused

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        if self.fused:
            return self.model.lm_loss(x, y), None
        logits, _ = self.model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return loss, logits


def _lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def init_weights(model: nn.Module, path: str | Path) -> None:
    """Replace `model`'s weights by the checkpoint's: same architecture, or a dense GPT-2
    checkpoint upcycled into an MoE-GPT (experts copied from its MLPs, routers kept)."""
    source = load_model(path)
    if isinstance(model, MoEGPT) and not isinstance(source, MoEGPT):
        upcycle_into(model, source)
        return
    want, have = model.state_dict(), source.state_dict()
    for key, tensor in want.items():
        if key not in have or have[key].shape != tensor.shape:
            found = "no such tensor" if key not in have else f"shape {tuple(have[key].shape)}"
            raise CheckpointError(
                f"--init-from {path}: the configured model needs {key!r} of shape "
                f"{tuple(tensor.shape)}, the checkpoint has {found}; match the model options "
                "(--n-layer, --n-embd, --n-head, --block-size, --moe-*) to it")
    extra = sorted(set(have) - set(want))
    if extra:
        raise CheckpointError(
            f"--init-from {path}: the checkpoint holds {extra[0]!r}, which the configured model "
            "has no place for; match the model options (--moe-*) to it")
    with torch.no_grad():
        for key, tensor in want.items():
            tensor.copy_(have[key])


def _aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    hook = getattr(model, "auxiliary_losses", None)
    return hook() if hook is not None else {}


def _train_metrics(model: nn.Module) -> dict[str, float]:
    hook = getattr(model, "train_metrics", None)
    return dict(hook()) if hook is not None else {}


def _teacher(cfg: TrainConfig, data: TokenData, device) -> nn.Module | None:
    if not cfg.distill_from:
        return None
    teacher = load_model(cfg.distill_from, device=str(device))
    if teacher.config.vocab_size != data.meta.vocab_size:
        raise CheckpointError(
            f"--distill-from {cfg.distill_from} has a {teacher.config.vocab_size}-token "
            f"vocabulary but the corpus has {data.meta.vocab_size}; use a teacher trained on it")
    return teacher.eval().requires_grad_(False)


@torch.no_grad()
def evaluate_split(
    model: nn.Module, data: TokenData, split: str = "val", batch_size: int = 32,
    progress: bool = True,
) -> dict[str, float]:
    """Loss over every token of a split, in non-overlapping windows of the model's context.

    Returns the mean loss per predicted token (nats), its perplexity and the token count.
    """
    model.eval()
    device = next(model.parameters()).device
    block = model.config.n_positions
    tokens = torch.from_numpy(data.splits[split].astype("int64"))
    n_windows = (len(tokens) - 1) // block
    total, count = 0.0, 0
    starts = list(range(0, n_windows * block, block))
    for i in tqdm(range(0, len(starts), batch_size), desc=f"evaluating {split}",
                  unit="batch", disable=not progress):
        rows = torch.stack([tokens[s : s + block + 1] for s in starts[i : i + batch_size]])
        x, y = rows[:, :-1].to(device), rows[:, 1:].to(device)
        logits, _ = model(x)
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


# -- precision, kernels, parallel wrapping ----------------------------------------------------


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 for `precision` on `device` (auto: bf16 on CUDA, else fp32)."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ModelConfigError(
            f"precision fp16 needs CUDA (its gradient scaler is CUDA-only); on {device.type} "
            "use fp32 or bf16")
    return precision


def check_options(cfg: TrainConfig, world_size: int, device: torch.device) -> str:
    """Refuse what cannot run with `world_size` processes on `device`; the precision to use."""
    precision = resolve_precision(cfg.precision, device)
    if cfg.shard and world_size < 2:
        raise ModelConfigError(
            "shard (FSDP2) needs several processes: launch with --nproc N or torchrun")
    if cfg.shard and cfg.is_moe:
        raise ModelConfigError(
            "shard (FSDP2) is for dense models; an MoE model splits its experts with "
            "--moe-ep-size")
    if cfg.moe_ep_size > 1 and world_size % cfg.moe_ep_size:
        raise ModelConfigError(
            f"moe_ep_size ({cfg.moe_ep_size}) must divide the number of processes "
            f"({world_size})")
    if cfg.data_efficiency:
        read_data_efficiency(cfg.data_efficiency)
    return precision


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def resolve_kernels(kernels: str, device: torch.device, say: Callable[[str], None]) -> str:
    """torch or triton: Triton only on CUDA with triton installed (training under Triton's CPU
    interpreter would be pointlessly slow); an explicit `triton` that cannot run falls back
    to torch with one notice."""
    if kernels == "torch":
        return "torch"
    why = None
    if device.type != "cuda":
        why = f"Triton kernels need CUDA, this run is on {device.type}"
    elif not triton_available(device):
        why = "triton is not installed (pip install 'tandem[triton]')"
    if why is None:
        return "triton"
    if kernels == "triton":
        say(f"notice: --kernels triton: {why}; using the torch kernels")
    return "torch"


def _shard_fsdp(loss_module: LMLoss) -> None:
    """FSDP2: each transformer block, then the rest, sharded over all ranks (in place); the
    loss module is the root, so that every forward (also the fused loss) gathers the rest."""
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns that a block returns views: those are the KV cache (k, v), which training
    # never modifies in place, so the warning does not apply here
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor",
                            category=UserWarning)
    for block in loss_module.model.transformer.h:
        fully_shard(block)
    fully_shard(loss_module)


def _fsdp_state_dicts(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts on rank 0's CPU; collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    prefix = "model."  # the loss module's: the checkpoint holds the model's own names
    return ({k.removeprefix(prefix): v for k, v in full.items()},
            get_optimizer_state_dict(model, optimizer, options=options))


def _fsdp_load_optimizer(model: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def _expert_names(model: nn.Module) -> dict[str, str]:
    """Expert parallelism: this rank's local expert parameter names -> the full model's."""
    from ..moe.layer import MoE

    names = {}
    for prefix, moe in model.named_modules():
        if not isinstance(moe, MoE):
            continue
        for local, expert in enumerate(moe.experts):
            global_id = moe.local_expert_ids[local]
            for rest, _ in expert.named_parameters():
                names[f"{prefix}.experts.{local}.{rest}"] = f"{prefix}.experts.{global_id}.{rest}"
    return names


def _full_moe_state(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """The full model's state dict from the expert shards of every rank; collective."""
    names = _expert_names(model)
    own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    experts = {names[k]: v for k, v in own.items() if k in names}
    full = {k: v for k, v in own.items() if k not in names}
    for shard in ctx.all_gather_object(experts):
        full.update(shard)
    return full


def _fill_missing_grads(model: nn.Module) -> None:
    # a parameter that got no gradient this step still takes part in every all-reduce
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def _clip_expert_parallel(model: nn.Module, max_norm: float, groups) -> None:
    """clip_grad_norm_ over the full model when each rank holds part of the experts: the
    squared norms of the expert gradients are summed over the EP group."""
    dense, expert = split_parameters(model)
    zero = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
    d = sum((p.grad.float().square().sum() for p in dense if p.grad is not None), zero)
    e = sum((p.grad.float().square().sum() for p in expert if p.grad is not None), zero.clone())
    dist.all_reduce(e, group=groups.ep_group)
    coef = (max_norm / ((d + e).sqrt() + 1e-6)).clamp(max=1.0)
    for p in dense + expert:
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))


# -- validation, checkpoints, logs ------------------------------------------------------------


@torch.no_grad()
def _fixed_val_loss(model: nn.Module, data: TokenData, cfg: TrainConfig, device,
                    ctx: DistContext | None = None, precision: str = "fp32",
                    loss_module: LMLoss | None = None) -> float:
    """Mean loss over `eval_batches` validation batches that are the same at every call.

    Several ranks share the batches (batch j on rank j % world_size); a rank with nothing
    left runs batch 0 again uncounted, so every rank runs as many forwards (collectives
    inside an expert-parallel or sharded model must match)."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    batches = [data.batch("val", cfg.batch_size, cfg.block_size, generator)
               for _ in range(cfg.eval_batches)]
    rounds = math.ceil(cfg.eval_batches / ctx.world_size)
    losses = []
    for i in range(rounds):
        j = i * ctx.world_size + ctx.rank
        x, y = batches[j if j < cfg.eval_batches else 0]
        with _autocast(precision, device):
            if loss_module is None:
                loss = _lm_loss(model, x.to(device), y.to(device)).item()
            else:
                loss = loss_module(x.to(device), y.to(device))[0].item()
        if j < cfg.eval_batches:
            losses.append(loss)
    model.train(was_training)
    if not ctx.enabled:
        return sum(losses) / len(losses)
    return ctx.all_reduce_sum([sum(losses)])[0] / cfg.eval_batches


def _read_log(out: Path, upto_step: int) -> list[dict]:
    if not (out / LOG_FILE).is_file():
        return []
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines() if line]
    return [r for r in rows if r["step"] <= upto_step]


@dataclass
class _Run:
    """What a checkpoint save needs besides the step."""

    cfg: TrainConfig
    out: Path
    data: TokenData
    ctx: DistContext
    model: nn.Module  # the module itself (not the DDP wrapper; sharded under FSDP2 or EP)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    export: Callable[[], nn.Module]  # builds an unsharded CPU model to save weights from
    expert_parallel: bool
    loss_module: LMLoss | None = None  # the FSDP2 root under `shard`
    efficiency_raw: dict | None = None  # the data_efficiency JSON the run trains with
    tokens: int = 0  # training tokens seen up to the step being saved
    tokenizer: Tokenizer | None = None  # saved instead of the corpus' (FIM: with sentinels)


def _save(run: _Run, step: int, window: list[float], aux_window: dict[str, list[float]]):
    """Write the checkpoint of `step` (rank 0 writes; every rank must call: collective)."""
    cfg, out, ctx, model = run.cfg, run.out, run.ctx, run.model
    if cfg.shard:
        full_model, optimizer_state = _fsdp_state_dicts(run.loss_module, run.optimizer)
    elif run.expert_parallel:
        full_model, optimizer_state = _full_moe_state(model, ctx), None
        rank_dir = out / RANK_STATE_DIR
        if ctx.is_main:
            rank_dir.mkdir(exist_ok=True)
        ctx.barrier()
        own = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "optimizer": run.optimizer.state_dict()}
        tmp = rank_dir / f"rank{ctx.rank}.pt.tmp"
        torch.save(own, tmp)
        tmp.replace(rank_dir / f"rank{ctx.rank}.pt")
    else:
        full_model = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        optimizer_state = run.optimizer.state_dict()
    rng = ctx.all_gather_object(get_rng_states())
    if ctx.is_main:
        if cfg.shard or run.expert_parallel:
            export = run.export()
            export.load_state_dict(full_model)
        else:
            export = model
        export.save_pretrained(out, dtype=getattr(torch, cfg.save_dtype))
        if run.tokenizer is not None:
            run.tokenizer.save(out)
        else:
            shutil.copyfile(run.data.directory / "tokenizer.json", out / "tokenizer.json")
        state = {
            "step": step,
            "config": cfg.to_dict(),
            "world_size": ctx.world_size,
            "model": full_model,
            "optimizer": optimizer_state,
            "scaler": run.scaler.state_dict(),
            "window": list(window),
            "tokens": run.tokens,
            "data_efficiency": run.efficiency_raw,
            "aux_window": {k: list(v) for k, v in aux_window.items()},
            "rng": rng,
        }
        tmp = out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(out / STATE_FILE)  # a kill mid-save never leaves a half-written state
    ctx.barrier()


def _load_state(out: Path, cfg: TrainConfig, ctx: DistContext) -> dict:
    state_file = out / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"cannot resume: {state_file} does not exist")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    saved = TrainConfig.from_dict(state["config"]).to_dict()  # options added since: defaults
    if saved != cfg.to_dict():
        changed = sorted(k for k in cfg.to_dict() if saved.get(k) != getattr(cfg, k))
        raise CheckpointError(
            f"cannot resume {out}: options differ from the saved run ({', '.join(changed)})"
        )
    world = state.get("world_size", 1)
    if world != ctx.world_size:
        raise CheckpointError(
            f"cannot resume {out}: it was trained by {world} process(es), this launch has "
            f"{ctx.world_size}; resume with --nproc {world} (the data order depends on it)")
    return state


def _data_efficiency(cfg: TrainConfig, data: TokenData, ctx: DistContext, state: dict | None,
                     out: Path) -> DataEfficiency | None:
    """The run's curriculum / random-LTD, from cfg.data_efficiency; a resumed run keeps the
    JSON it started with (saved in its trainer state) and refuses a file changed since."""
    if not cfg.data_efficiency:
        return None
    raw = read_data_efficiency(cfg.data_efficiency)
    metrics = parse_data_efficiency(raw).curriculum
    if cfg.fim_rate > 0 and metrics.enabled and \
            any(m.metric != "seqlen_truncate" for m in metrics.metrics):
        raise ModelConfigError(
            "a FIM run's curriculum can only be seqlen_truncate: the difficulty index of "
            "`tandem data analyze` describes the corpus before the FIM transform")
    if state is not None and state.get("data_efficiency") not in (None, raw):
        raise CheckpointError(
            f"cannot resume {out}: {cfg.data_efficiency} changed since the run started")
    efficiency = DataEfficiency(parse_data_efficiency(raw), data, cfg.block_size, cfg.n_layer,
                                rank=ctx.rank)
    efficiency.raw = raw
    return efficiency


# -- the loop ---------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    model_builder: Callable[[TrainConfig, int, int], nn.Module] = build_model,
    stop_after: int | None = None,
    peak_tflops: float | None = None,
) -> TrainResult:
    """Train from `cfg` on the prepared corpus in `data_dir`, checkpointing into `out_dir`.

    Under torchrun (or inside a process group the caller initialised) every rank calls this;
    rank 0 writes `out_dir`. `stop_after` K ends the run once step K's checkpoint is written;
    `peak_tflops` (per process) sets the peak for MFU, which otherwise comes from the GPU
    table in `models.train.throughput` and is left out where unknown (the CPU)."""
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after <= 0):
        raise ModelConfigError(f"stop_after must be a positive integer, not {stop_after!r}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise ModelConfigError(f"peak_tflops must be > 0, not {peak_tflops!r}")
    ctx = init_distributed(device)
    try:
        return _train(cfg, data_dir, out_dir, resume, ctx, progress, model_builder, stop_after,
                      peak_tflops)
    finally:
        ctx.close()


def _train(cfg, data_dir, out_dir, resume, ctx: DistContext, progress, model_builder,
           stop_after, peak_tflops) -> TrainResult:
    t0 = time.perf_counter()
    data = TokenData(data_dir)
    check_fits(cfg, data.meta.vocab_size, data.meta.eot_id)
    tokenizer = None  # the corpus' own tokenizer.json, unless FIM adds the sentinels
    if cfg.fim_rate > 0:
        data, tokenizer = fim_train_data(
            data, FIMConfig(cfg.fim_rate, cfg.fim_spm_rate, cfg.fim_max_chars), cfg.seed)
    out = Path(out_dir)
    dev = ctx.device

    def say(line: str) -> None:
        if ctx.is_main:
            tqdm.write(line, file=sys.stderr)

    precision = check_options(cfg, ctx.world_size, dev)
    kernels = resolve_kernels(cfg.kernels, dev, say)
    build_cfg = dataclasses.replace(cfg, kernels=kernels)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = model_builder(build_cfg, data.meta.vocab_size, data.meta.eot_id)
    if cfg.init_from and not resume:
        init_weights(model, cfg.init_from)
    seed_global_rngs(cfg.seed, ctx.rank)  # whatever draws from them (dropout) differs by rank
    state = _load_state(out, cfg, ctx) if resume else None
    if state is None and out.exists() and (out / STATE_FILE).exists():
        raise CheckpointError(f"{out} already holds a run; pass --resume or pick another --out")
    model = model.to(dev)
    groups = None
    expert_parallel = cfg.is_moe and ctx.enabled and cfg.moe_ep_size > 1
    if cfg.is_moe and ctx.enabled:
        groups = create_expert_parallel_groups(cfg.moe_ep_size)
        if expert_parallel:
            model.shard_experts(groups.ep_group)
    if state is not None:
        if expert_parallel:
            own = torch.load(out / RANK_STATE_DIR / f"rank{ctx.rank}.pt", map_location="cpu",
                             weights_only=True)
            model.load_state_dict(own["model"])
        else:
            model.load_state_dict(state["model"])
    efficiency = _data_efficiency(cfg, data, ctx, state, out)
    if efficiency is not None:
        efficiency.attach(model)  # random-LTD's hooks, when enabled
    fpt = flops_per_token(model, cfg.n_layer, cfg.n_embd, cfg.block_size)
    teacher = _teacher(cfg, data, dev)

    # the fused LM-head loss never makes the logits, which distillation needs
    loss_module = LMLoss(model, fused=kernels == "triton" and teacher is None)
    if cfg.shard:
        _shard_fsdp(loss_module)
    if cfg.compile:
        loss_module.compile()
    trained: nn.Module = loss_module  # what the training forward calls
    if ctx.enabled and not cfg.is_moe and not cfg.shard:
        ddp_ids = [dev.index] if dev.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(loss_module, device_ids=ddp_ids)
    optimizer = _optimizer(model, cfg)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    start = 0
    window: list[float] = []
    aux_window: dict[str, list[float]] = {}
    if state is not None:
        if expert_parallel:
            optimizer.load_state_dict(own["optimizer"])
        elif cfg.shard:
            _fsdp_load_optimizer(loss_module, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        window = list(state.get("window", []))
        aux_window = {k: list(v) for k, v in state.get("aux_window", {}).items()}
        if "rng" in state:
            set_rng_states(state["rng"][ctx.rank])
        start = state["step"]
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        log = _read_log(out, start)
        (out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in log))
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    ctx.barrier()

    def export() -> nn.Module:
        return model_builder(dataclasses.replace(cfg, kernels="torch"), data.meta.vocab_size,
                             data.meta.eot_id)

    run = _Run(cfg, out, data, ctx, model, optimizer, scaler, export, expert_parallel,
               loss_module, efficiency_raw=None if efficiency is None else efficiency.raw,
               tokenizer=tokenizer)
    peak = peak_tflops if peak_tflops is not None else peak_tflops_for(dev)
    # full windows; a seqlen_truncate curriculum draws shorter ones, counted as drawn
    tokens_per_step = cfg.batch_size * cfg.grad_accum * ctx.world_size * cfg.block_size
    tokens_seen = start * tokens_per_step if state is None else \
        state.get("tokens", start * tokens_per_step)
    timed_tokens = 0
    mine = ctx.my_micro_batches(cfg.grad_accum)
    routing_seed = cfg.seed if ctx.rank == 0 else cfg.seed + 104_729 * ctx.rank  # per rank
    model.train()
    val_loss = float("nan")
    timed_steps, timed_s = 0, 0.0
    done = start
    bar = tqdm(total=cfg.max_steps, initial=start, desc="training", unit="step",
               disable=not (progress and ctx.is_main and sys.stderr.isatty()), file=sys.stderr)
    for step in range(start, cfg.max_steps):
        t_step = time.perf_counter()
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        begin = getattr(model, "begin_train_step", None)
        if begin is not None:
            begin(step, routing_seed)
        alpha = kd_weight(step, cfg.distill_alpha, cfg.distill_stop_step)
        # the step's global batch, drawn in one order; this rank keeps its share
        if efficiency is None:
            batches = [data.batch("train", cfg.batch_size, cfg.block_size, generator)
                       for _ in range(cfg.grad_accum * ctx.world_size)]
        else:
            efficiency.begin_step(step)  # random-LTD's kept count and draws of this step
            batches = [efficiency.batch(step, cfg.batch_size, generator)
                       for _ in range(cfg.grad_accum * ctx.world_size)]
        step_tokens = sum(x.numel() for x, _ in batches)  # (B, T) each; T may be truncated
        aux_totals: dict[str, float] = {}
        step_loss = 0.0
        for a, j in enumerate(mine):
            x, y = batches[j]
            x, y = x.to(dev), y.to(dev)
            last = a == len(mine) - 1
            with contextlib.ExitStack() as stack:
                if isinstance(trained, nn.parallel.DistributedDataParallel) and not last:
                    stack.enter_context(trained.no_sync())
                if cfg.shard:
                    loss_module.set_requires_gradient_sync(last)
                with _autocast(precision, dev):
                    loss, logits = trained(x, y)  # (), (B, T, V) or None when fused
                    aux = _aux_losses(model)
                    metrics = _train_metrics(model)
                    total = loss + sum(aux.values()) if aux else loss
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits, _ = teacher(x)
                        kd = kd_loss(logits, teacher_logits, cfg.distill_temperature)
                        total = total + alpha * (kd - loss)  # (1 - alpha) CE + alpha KD + aux
                        metrics["distill_kd"] = kd.item()
                scaler.scale(total / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            for name, value in aux.items():
                aux_totals[name] = aux_totals.get(name, 0.0) + value.item() / cfg.grad_accum
            for name, value in metrics.items():
                aux_totals[name] = aux_totals.get(name, 0.0) + value / cfg.grad_accum
        if groups is not None:  # MoE on several ranks: dense over all, experts over EDP
            _fill_missing_grads(model)
            allreduce_gradients(model, groups)
        if ctx.enabled:  # the step's loss and metrics: means over all ranks
            names = sorted(aux_totals)
            sums = ctx.all_reduce_sum([step_loss] + [aux_totals[n] for n in names])
            step_loss = sums[0] / ctx.world_size
            aux_totals = {n: v / ctx.world_size for n, v in zip(names, sums[1:], strict=True)}
        scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            if expert_parallel:
                _clip_expert_parallel(model, cfg.grad_clip, groups)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window.append(step_loss)
        for name, value in aux_totals.items():
            aux_window.setdefault(name, []).append(value)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timed_steps += 1
        timed_s += time.perf_counter() - t_step
        timed_tokens += step_tokens
        tokens_seen += step_tokens
        run.tokens = tokens_seen
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}",
                        tok_s=f"{timed_tokens / timed_s:.0f}")

        done = step + 1
        saved = False
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            val_loss = _fixed_val_loss(model, data, cfg, dev, ctx, precision, loss_module)
            tokens_per_s = timed_tokens / timed_s
            row = {"step": done, "lr": lr, "train_loss": sum(window) / len(window),
                   "val_loss": val_loss, "tokens": tokens_seen,
                   "elapsed_s": round(time.perf_counter() - t0, 2),
                   "tokens_per_s": round(tokens_per_s, 1),
                   **{k: sum(v) / len(v) for k, v in aux_window.items()}}
            line = (f"step {done}: train {row['train_loss']:.4f} val {val_loss:.4f} "
                    f"{tokens_per_s:.0f} tok/s")
            if peak is not None:
                row["mfu"] = round(tokens_per_s * fpt / (peak * 1e12 * ctx.world_size), 5)
                line += f" MFU {100 * row['mfu']:.1f}%"
            if ctx.is_main:
                with (out / LOG_FILE).open("a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.write(line)
            window = []
            aux_window = {}
            timed_steps, timed_s, timed_tokens = 0, 0.0, 0
            _save(run, done, window, aux_window)
            saved = True
        if stop_after is not None and done >= stop_after:
            if not saved:
                _save(run, done, window, aux_window)
            say(f"stopped after step {done} (checkpoint written; continue with --resume)")
            break
    bar.close()
    log = _read_log(out, done)
    last = log[-1] if log else {"train_loss": float("nan"), "val_loss": float("nan")}
    return TrainResult(
        steps=done,
        train_loss=last["train_loss"],
        val_loss=last["val_loss"],
        seconds=time.perf_counter() - t0,
        tokens=tokens_seen,
        stopped_early=done < cfg.max_steps,
    )
