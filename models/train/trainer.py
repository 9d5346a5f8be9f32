"""`train()`: a small, exact, resumable language-model trainer for CPU or CUDA.

A run directory is a loadable HF-format checkpoint at every save (config.json,
model.safetensors, tokenizer.json) plus `trainer_state.pt` (fp32 weights, optimizer state, step)
and `train_log.jsonl`. Batches are drawn from a generator seeded by (seed, step), so a resumed
run continues exactly where an uninterrupted one would be.

Models may expose `auxiliary_losses() -> dict[str, Tensor]` (already weighted) for the last
forward; the trainer adds them to the loss and logs each one. They may also expose
`train_metrics() -> dict[str, float]` (logged, not optimised) and
`begin_train_step(step, seed)`, called before each optimiser step so that any randomness or
schedule inside the model is a function of (seed, step) and a resumed run stays exact.

MoE options (`moe_*`) build an MoE-GPT instead of GPT-2; `init_from` starts from a
checkpoint's weights (a dense checkpoint is upcycled into the MoE model); `distill_from`
adds a Mixture-of-Students distillation term towards a teacher checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import GPT2Config
from ..data import TokenData
from ..errors import CheckpointError
from ..gpt2 import GPT2LMHead
from ..moe import MoEGPT, kd_loss, kd_weight, upcycle_into
from ..registry import load_model
from .config import TrainConfig
from .schedule import lr_at

__all__ = ["TrainResult", "build_model", "evaluate_split", "train"]

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    steps: int  # optimiser steps taken in total
    train_loss: float  # mean loss of the last logging window
    val_loss: float  # loss on the fixed validation batches at the end
    seconds: float  # wall time of this invocation
    tokens: int  # training tokens seen in total


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(cfg: TrainConfig, vocab_size: int, eot_id: int) -> nn.Module:
    if cfg.is_moe:
        return MoEGPT(cfg.moe_config(vocab_size, eot_id))
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    return GPT2LMHead(config)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


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
def _fixed_val_loss(model: nn.Module, data: TokenData, cfg: TrainConfig, device) -> float:
    """Mean loss over `eval_batches` validation batches that are the same at every call."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = data.batch("val", cfg.batch_size, cfg.block_size, generator)
        losses.append(_lm_loss(model, x.to(device), y.to(device)).item())
    model.train(was_training)
    return sum(losses) / len(losses)


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


def _save(out: Path, model: nn.Module, optimizer, cfg: TrainConfig, step: int, data: TokenData):
    model.save_pretrained(out, dtype=getattr(torch, cfg.save_dtype))
    shutil.copyfile(data.directory / "tokenizer.json", out / "tokenizer.json")
    state = {
        "step": step,
        "config": cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)  # a kill mid-save never leaves a half-written state


def _read_log(out: Path, upto_step: int) -> list[dict]:
    if not (out / LOG_FILE).is_file():
        return []
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines() if line]
    return [r for r in rows if r["step"] <= upto_step]


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    model_builder: Callable[[TrainConfig, int, int], nn.Module] = build_model,
) -> TrainResult:
    """Train from `cfg` on the prepared corpus in `data_dir`, checkpointing into `out_dir`."""
    t0 = time.perf_counter()
    data = TokenData(data_dir)
    out = Path(out_dir)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = model_builder(cfg, data.meta.vocab_size, data.meta.eot_id)
    if cfg.init_from and not resume:
        init_weights(model, cfg.init_from)
    model = model.to(dev)
    teacher = _teacher(cfg, data, dev)
    optimizer = _optimizer(model, cfg)
    start = 0
    if resume:
        state_file = out / STATE_FILE
        if not state_file.is_file():
            raise CheckpointError(f"cannot resume: {state_file} does not exist")
        state = torch.load(state_file, map_location=dev, weights_only=True)
        saved = TrainConfig.from_dict(state["config"]).to_dict()  # options added since: defaults
        if saved != cfg.to_dict():
            changed = sorted(k for k in cfg.to_dict() if saved.get(k) != getattr(cfg, k))
            raise CheckpointError(
                f"cannot resume {out}: options differ from the saved run ({', '.join(changed)})"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    elif out.exists() and (out / STATE_FILE).exists():
        raise CheckpointError(f"{out} already holds a run; pass --resume or pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    log = _read_log(out, start)
    (out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in log))
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
    model.train()
    window: list[float] = []
    aux_window: dict[str, list[float]] = {}
    val_loss = float("nan")
    bar = tqdm(total=cfg.max_steps, initial=start, desc="training", unit="step",
               disable=not progress)
    for step in range(start, cfg.max_steps):
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        begin = getattr(model, "begin_train_step", None)
        if begin is not None:
            begin(step, cfg.seed)
        alpha = kd_weight(step, cfg.distill_alpha, cfg.distill_stop_step)
        aux_totals: dict[str, float] = {}
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            x, y = data.batch("train", cfg.batch_size, cfg.block_size, generator)
            x, y = x.to(dev), y.to(dev)
            logits, _ = model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
            aux = _aux_losses(model)
            metrics = _train_metrics(model)
            total = loss + sum(aux.values()) if aux else loss
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits, _ = teacher(x)
                kd = kd_loss(logits, teacher_logits, cfg.distill_temperature)
                total = total + alpha * (kd - loss)  # (1 - alpha) * CE + alpha * KD + aux
                metrics["distill_kd"] = kd.item()
            (total / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            for name, value in aux.items():
                aux_totals[name] = aux_totals.get(name, 0.0) + value.item() / cfg.grad_accum
            for name, value in metrics.items():
                aux_totals[name] = aux_totals.get(name, 0.0) + value / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(step_loss)
        for name, value in aux_totals.items():
            aux_window.setdefault(name, []).append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}")

        done = step + 1
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            val_loss = _fixed_val_loss(model, data, cfg, dev)
            row = {"step": done, "lr": lr, "train_loss": sum(window) / len(window),
                   "val_loss": val_loss, "tokens": done * tokens_per_step,
                   "elapsed_s": round(time.perf_counter() - t0, 2),
                   **{k: sum(v) / len(v) for k, v in aux_window.items()}}
            with (out / LOG_FILE).open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.write(f"step {done}: train {row['train_loss']:.4f} val {val_loss:.4f}")
            window = []
            aux_window = {}
            _save(out, model, optimizer, cfg, done, data)
    bar.close()
    log = _read_log(out, cfg.max_steps)
    last = log[-1] if log else {"train_loss": float("nan"), "val_loss": float("nan")}
    return TrainResult(
        steps=cfg.max_steps,
        train_loss=last["train_loss"],
        val_loss=last["val_loss"],
        seconds=time.perf_counter() - t0,
        tokens=cfg.max_steps * tokens_per_step,
    )
