"""The body of one process of the expert-parallel test (tests/models/test_moe_parallel.py).

Every rank builds the same full MoE layer (all experts) and the same W batches. The reference
is the single-process layer: rank r's loss on batch r, averaged over the W ranks, with its
gradients. The expert-parallel layer keeps this rank's experts, routes only batch `rank`,
exchanges tokens with all-to-all, and averages gradients with `allreduce_gradients`. Its
output, losses and gradients must equal the reference's.
"""

from __future__ import annotations

import copy
from datetime import timedelta

import torch
import torch.distributed as dist

from models.config import GPT2Config
from models.errors import ModelConfigError
from models.gpt2 import MLP
from models.moe import MoE, MoEGPT, MoEGPTConfig, allreduce_gradients, create_expert_parallel_groups

M, S, E = 16, 24, 4
#: (name, MoE options): the routing modes the equivalence must hold for.
CASES = [
    ("top1-rts-drop", {"k": 1, "capacity_factor": 0.75, "use_rts": True}),
    ("top2-drop-residual", {"k": 2, "capacity_factor": 0.75, "use_residual": True}),
    ("top3-dropless", {"k": 3, "drop_tokens": False}),
]
AUX_COEF = 0.1


def _full_layer(options: dict) -> MoE:
    torch.manual_seed(0)
    layer = MoE(M, MLP(GPT2Config(vocab_size=8, n_positions=8, n_embd=M, n_layer=1, n_head=1)),
                num_experts=E, min_capacity=0, **options)
    for expert in layer.experts:
        for p in expert.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return layer.train()


def _loss(layer: MoE, x, target, seed: int):
    out, l_aux, counts = layer(x, generator=torch.Generator().manual_seed(seed))
    return (out - target).square().mean() + AUX_COEF * l_aux, out, l_aux, counts


def _check(name: str, what: str, got, want) -> None:
    try:
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    except AssertionError as e:
        raise AssertionError(f"{name}: {what} differs from the single-process layer: {e}") from None


def _check_moe_gpt(groups, rank: int, world: int, ep_size: int) -> None:
    """A sharded MoE-GPT computes the full model's logits, and refuses to be saved when it
    lacks experts."""
    torch.manual_seed(0)
    config = MoEGPTConfig(vocab_size=32, n_positions=16, n_embd=M, n_layer=2, n_head=2,
                          moe_every=1, moe_num_experts=E, moe_top_k=2)
    full = MoEGPT(config).eval()
    ids = torch.randint(0, 32, (world, 2, 12), generator=torch.Generator().manual_seed(9))[rank]
    want = full(ids)[0]
    sharded = copy.deepcopy(full)
    sharded.shard_experts(groups.ep_group)
    _check(f"MoE-GPT, ep_size {ep_size}", "the logits", sharded(ids)[0], want)
    if ep_size == 1:
        return  # nothing was sharded away: the model is whole and may be saved
    try:
        sharded.save_pretrained("/nonexistent")
    except ModelConfigError:
        return
    raise AssertionError("a sharded MoE-GPT was allowed to be saved")


def run(rank: int, world: int, store: str, ep_sizes: list[int]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        data = torch.Generator().manual_seed(1234)
        xs = [torch.randn(S, M, generator=data) for _ in range(world)]
        targets = [torch.randn(S, M, generator=data) for _ in range(world)]
        for ep_size in ep_sizes:
            groups = create_expert_parallel_groups(ep_size)
            for name, options in CASES:
                label = f"world {world}, ep_size {ep_size}, {name}"
                full = _full_layer(options)
                ref = copy.deepcopy(full)
                ref_losses = [_loss(ref, xs[r], targets[r], seed=100 + r) for r in range(world)]
                (sum(r[0] for r in ref_losses) / world).backward()
                ref_grads = dict(ref.named_parameters())

                layer = copy.deepcopy(full)
                layer.shard_experts(groups.ep_group)
                loss, out, l_aux, counts = _loss(layer, xs[rank], targets[rank], 100 + rank)
                loss.backward()
                allreduce_gradients(layer, groups)

                _, ref_out, ref_aux, ref_counts = ref_losses[rank]
                _check(label, "the output", out, ref_out.detach())
                _check(label, "l_aux", l_aux, ref_aux.detach())
                _check(label, "exp_counts", counts, ref_counts)
                _check(label, "the loss", loss.detach(), ref_losses[rank][0].detach())
                for pname, p in layer.named_parameters():
                    if pname.startswith("experts."):
                        local, rest = pname.split(".", 2)[1:]
                        global_id = layer.local_expert_ids[int(local)]
                        want = ref_grads[f"experts.{global_id}.{rest}"].grad
                    else:
                        want = ref_grads[pname].grad
                    _check(label, f"the gradient of {pname}", p.grad, want)
            _check_moe_gpt(groups, rank, world, ep_size)
    finally:
        dist.destroy_process_group()
