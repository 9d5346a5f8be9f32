"""Generate a continuation of a prompt, token by token, and report the speed.

--json prints one object: prompt_tokens, tokens (generated ids), text, and steps (one entry
per generated token with at least `token` and `ms`), plus the backend's own figures. The
accelerator backends add `time_split`: host prefill (device, ms), the KV transfer (bytes, host
ms, projected ms over PCIe), the devices' first token and decode ms/token at the configured
clock beside the simulator's wall time.

--suffix infills (fill-in-the-middle): --prompt is the prefix, the prompt sent to the backend
is the PSM order <pre> prefix <suf> suffix <mid> (models.data.fim.infill_prompt_ids), and
generation stops at the end-of-middle sentinel; only the middle is printed. It is only a token
order, so every backend runs it; the model must have been trained with FIM (its tokenizer
holds the sentinels, e.g. `tandem train --fim-rate 0.5`).
"""

from __future__ import annotations

import json
import math

import models
from models.data.fim import infill_prompt_ids
from models.tokenizer import IncrementalDecoder

from ..checkpoints import (
    add_model_arguments,
    backend_options,
    check_tokenizer_fits,
    require_backend,
    resolve_tokenizer,
)
from ..errors import UsageError
from ..runtime import GenerationRequest, make_backend

NAME = "generate"
HELP = "generate text from a prompt (torch golden model or the accelerator)"


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text, tokenized with the model's tokenizer")
    src.add_argument("--prompt-ids", help="prompt as comma-separated token ids, e.g. 1,2,3")
    p.add_argument("--suffix", help="infill: generate the middle between --prompt (the prefix) "
                   "and this suffix, stopping at the end-of-middle token (FIM-trained models)")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--return-logits", action="store_true",
                   help="isa: add each step's final logits to the JSON (`logits`)")
    p.add_argument("--xclbin", default=None,
                   help="board: the kernel's .xclbin (its link.cfg beside it gives the HBM "
                   "bank of every port)")


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError(f"--prompt-ids must be comma-separated integers, not {text!r}") from None


def _options(args) -> dict:
    options = backend_options(args)
    if args.backend == "board":
        if args.xclbin is None:
            raise UsageError("--backend board needs --xclbin PATH (the kernel's .xclbin)")
        options["xclbin"] = args.xclbin
    elif args.xclbin is not None:
        raise UsageError(f"--xclbin applies to --backend board, not {args.backend}")
    return options


def run(args) -> int:
    require_backend(args.backend)  # checked before the (slow) model load
    options = _options(args)  # usage errors before the (slow) model load
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0, not {args.temperature}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in 0..2**64-1, not {args.seed}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach argv as lone surrogates
            raise UsageError("--prompt is not valid UTF-8 text") from None
    if args.suffix is not None:
        if args.prompt is None:
            raise UsageError("--suffix needs --prompt (the prefix), not --prompt-ids")
        try:
            args.suffix.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("--suffix is not valid UTF-8 text") from None
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, not {args.top_k}")
    model = models.load_model(args.model)  # first: a bad checkpoint is the error to report
    tokenizer = resolve_tokenizer(args.model, args.tokenizer)
    if args.prompt is not None:
        if tokenizer is None:
            raise UsageError(f"{args.model} ships no tokenizer; pass --prompt-ids 1,2,3 or "
                             "--tokenizer gpt2")
        prompt_ids = tokenizer.encode(args.prompt)
    else:
        prompt_ids = _parse_ids(args.prompt_ids)
    stop = None  # infilling: the end-of-middle id, which ends the generation unprinted
    if args.suffix is not None:
        fim = tokenizer.fim_tokens()
        if fim is None:
            raise UsageError(f"--suffix needs a model trained for fill-in-the-middle; the "
                             f"tokenizer of {args.model} has no FIM sentinels")
        prompt_ids = infill_prompt_ids(tokenizer, args.prompt, args.suffix)
        stop = fim.end
    model.check_prompt(prompt_ids, args.max_new_tokens)
    check_tokenizer_fits(tokenizer, model)
    backend = make_backend(args.backend, model, **options)
    request = GenerationRequest(prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                                args.seed)

    steps = []
    decoder = IncrementalDecoder(tokenizer) if tokenizer else None
    stopped = False
    for step in backend.stream(request):
        if step.token == stop:
            stopped = True
            break
        if not args.json and not steps and tokenizer is not None and stop is None:
            # the prompt goes out with the first token, not before: a backend that refuses the
            # request prints nothing on stdout
            print(args.prompt if args.prompt is not None else tokenizer.decode(prompt_ids),
                  end="", flush=True)
        steps.append(step)
        if not args.json:
            piece = decoder.push(step.token) if decoder else f" {step.token}"
            print(piece, end="", flush=True)
    tokens = [s.token for s in steps]
    split = getattr(backend, "time_split", None)
    total_ms = sum(s.ms for s in steps)
    tokens_per_s = len(steps) / (total_ms / 1e3) if total_ms > 0 else float("inf")
    text = tokenizer.decode(tokens) if tokenizer else None
    if args.json:
        record = {
            "model": args.model,
            **backend.describe(),
            "prompt_tokens": prompt_ids,
            "tokens": tokens,
            "text": text,
            "seed": args.seed,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "total_ms": round(total_ms, 3),
            "tokens_per_s": round(tokens_per_s, 2),
            "steps": [s.to_json() for s in steps],
        }
        if stop is not None:
            record["suffix"] = args.suffix
            record["end_of_middle"] = stopped  # False: --max-new-tokens ended it first
        if split is not None:
            record["time_split"] = split
        print(json.dumps(record))
    else:
        print("\n")
        print(_summary(backend.describe(), steps, total_ms, tokens_per_s))
        if split is not None:
            print(_split_line(split))
    return 0


def _split_line(split: dict) -> str:
    """The heterogeneous pipeline's time split, one line."""
    pre, xfer, first, dec = (split[k] for k in ("prefill", "transfer", "first_token", "decode"))
    where = "prefill on the devices; "
    if pre["device"]:
        where = (f"host prefill {pre['tokens']} tokens on {pre['device']} ({pre['numerics']}) "
                 f"{pre['ms']:.1f} ms; KV transfer {xfer['bytes'] / 1024:.1f} KiB: "
                 f"{xfer['ms']:.1f} ms host, {xfer['projected_ms']:.3f} ms projected at "
                 f"{xfer['projected_at_gbps']:g} GB/s; ")
    decode = (f"decode {dec['ms_per_token']:.3f} ms/token at {dec['clock_mhz']:g} MHz "
              f"(simulated in {dec['wall_ms_per_token']:.0f} ms/token wall)"
              if dec["tokens"] else "no decode steps")
    n = first["device_tokens"]
    return (f"[time split: {where}first token on the devices ({n} prompt "
            f"token{'s' if n != 1 else ''}) {first['ms']:.3f} ms; {decode}; total "
            f"{split['total_ms']:.3f} ms (host measured + devices at the clock)]")


def _summary(facts: dict, steps, total_ms: float, tokens_per_s: float) -> str:
    """One bracketed line: speed, and for simulated devices, device time vs simulation time."""
    where = ", ".join(f"{k} {v}" for k, v in facts.items())
    if steps and "cycles" in steps[0].extra:  # simulated accelerator: ms is device time
        wall_s = sum(s.extra["wall_ms"] for s in steps) / 1e3
        decode = steps[1:] or steps
        per_token = sum(s.ms for s in decode) / len(decode)
        return (f"[{len(steps)} tokens; device time {total_ms:.3f} ms at "
                f"{facts.get('clock_mhz')} MHz: first token {steps[0].ms:.3f} ms, then "
                f"{per_token:.3f} ms/token ({1e3 / per_token:.0f} tokens/s); "
                f"simulated in {wall_s:.1f} s; {where}]")
    return f"[{len(steps)} tokens in {total_ms / 1e3:.2f} s: {tokens_per_s:.1f} tokens/s; {where}]"
