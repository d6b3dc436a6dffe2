"""Training throughput: tokens/s and MFU of one full optimizer step, ours against transformers' GPT-2, same run.

Shapes: the paper's 124M model and a small one, on batches of 1024-token sequences. One iteration is a whole
optimizer step (forward, backward, gradient clipping, fused AdamW). MFU counts 6N + 12*L*d*T FLOPs per token
against this machine's matmul peak in the same dtype, measured in the same run.

    python benchmarks/bench_train.py                        # 124M and small, fp32 and bf16 autocast
    python benchmarks/bench_train.py --shapes gpt2 --dtypes bfloat16 --steps 8 --compile
    python benchmarks/bench_train.py --curve                # fp32 vs bf16 loss curves on tinyshakespeare
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from gpt2 import GPT, GPTConfig
from gpt2.train import TrainConfig, flops_per_token, make_optimizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of an n x n matmul in dtype over a few seconds."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def ours(config: GPTConfig, compile_model: bool) -> tuple:
    """(loss function, optimizer, model) for our GPT with the optimizer `gpt2 train` uses."""
    model = GPT(config)
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    fn = torch.compile(model) if compile_model else model
    return (lambda x, y: fn(x, y)[1]), opt, model


def peer(config: GPTConfig) -> tuple:
    """The same for transformers' GPT2LMHeadModel (SDPA attention) with the same AdamW settings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_config)
    model.config._attn_implementation = "sdpa"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    return (lambda x, y: model(input_ids=x, labels=y).loss), opt, model


def time_steps(loss_fn, opt, model, batch: int, seq: int, vocab: int, amp: torch.dtype | None, steps: int) -> float:
    """Median seconds of one optimizer step, after two warm-up steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, seq), generator=g)
    ctx = (lambda: torch.autocast("cpu", dtype=amp)) if amp else contextlib.nullcontext
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with ctx():
            loss = loss_fn(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(args: argparse.Namespace) -> None:
    peaks = {d: peak_flops(torch.float32 if d == "float32" else torch.bfloat16) for d in args.dtypes}
    for d, p in peaks.items():
        print(f"matmul peak {d}: {p / 1e9:.0f} GFLOP/s, measured here (MFU below is of this, not of a datasheet peak)")
    print(f"{'shape':<10} {'dtype':<9} {'impl':<13} {'tokens/s':>9} {'MFU':>6} {'vs peer':>8}")
    for shape in args.shapes:
        config = GPTConfig.from_name(shape)
        with torch.device("meta"):
            fpt = flops_per_token(GPT(config), 1024)
        for d in args.dtypes:
            amp = None if d == "float32" else torch.bfloat16
            results = {}
            impls = [("ours", partial(ours, config, False))]
            if args.compile:
                impls.append(("ours+compile", partial(ours, config, True)))
            impls.append(("transformers", partial(peer, config)))
            for name, make in impls:
                torch.manual_seed(0)
                loss_fn, opt, model = make()
                seconds = time_steps(loss_fn, opt, model, args.batch, 1024, config.vocab_size, amp, args.steps)
                tps = args.batch * 1024 / seconds
                mfu = tps * fpt / peaks[d]
                results[name] = tps
                ratio = f"{tps / results['transformers']:.2f}x" if "transformers" in results else ""
                print(f"{shape:<10} {d:<9} {name:<13} {tps:>9.0f} {mfu:>6.1%} {ratio:>8}", flush=True)
                del loss_fn, opt, model
            for name, tps in results.items():
                if name != "transformers":
                    print(f"{'':<10} {'':<9} {name:<13} {tps / results['transformers']:.2f}x transformers")


def curve(args: argparse.Namespace) -> None:
    """fp32 and bf16 autocast from the same initial weights on the same batches: how far apart are the losses?
    The yardstick of "normal noise" is a second fp32 run that differs only in its initial weights' seed."""
    from gpt2.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(SHARED / "gpt2-vocab")
    ids = torch.tensor(tok.encode((SHARED / "tinyshakespeare" / "input.txt").read_text()))
    config = GPTConfig.from_name("gpt2-mini", n_positions=256)
    losses = {}
    runs = {"float32": ("float32", 0), "bfloat16": ("bfloat16", 0), "float32, other init": ("float32", 1)}
    for run, (d, init_seed) in runs.items():
        torch.manual_seed(init_seed)
        model = GPT(config)
        opt = make_optimizer(model, TrainConfig(lr=1e-3), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if d == "bfloat16" else contextlib.nullcontext
        losses[run] = []
        for _ in range(args.curve_steps):
            starts = torch.randint(0, len(ids) - 257, (8,), generator=g)
            batch = torch.stack([ids[s : s + 257] for s in starts])
            with ctx():
                _, loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[run].append(loss.item())
    tail = slice(-20, None)
    print(f"loss after {args.curve_steps} steps (mean of the last 20):")
    for run, points in losses.items():
        print(f"  {run:20s} {statistics.mean(points[tail]):.4f}")
    a = losses["float32"]
    for other in ("bfloat16", "float32, other init"):
        diffs = [abs(x - y) for x, y in zip(a, losses[other], strict=True)]
        print(f"|fp32 - {other}| per step: median {statistics.median(diffs):.4f}, max {max(diffs):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda s: s.split(","), default=["gpt2", "gpt2-mini"])
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=2, help="sequences of 1024 tokens per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    p.add_argument("--curve", action="store_true", help="compare fp32 and bf16 loss curves instead")
    p.add_argument("--curve-steps", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    curve(args) if args.curve else throughput(args)


if __name__ == "__main__":
    main()
