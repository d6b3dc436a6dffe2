"""Training throughput: tokens/s and MFU of one full optimizer step, ours against nanoGPT (and optionally
transformers' GPT-2), interleaved so that a busy machine slows every contender alike.

One iteration is a whole optimizer step (forward, backward, gradient clipping, AdamW). Ours is what `gpt2 train`
runs: the fused output layer + loss, the padded vocabulary, gpt2.kernels' C++ ops (GELU, attention, the row-split
matmul where it applies), gpt2.perf.clip_grad_norm, torch's fused AdamW; the others clip with torch's
clip_grad_norm_, as their training scripts do. nanoGPT is imported from a checkout when NANOGPT_DIR is set (its
model.py and its configure_optimizers, as its train.py uses them; it is not vendored here, and the bench runs
without it); its vocabulary is its own 50,304. Each contender lives in a process of its own, as each is run by its
users: ours sets what `gpt2 train` sets for the process (glibc's malloc keeps freed memory,
gpt2.devices.keep_freed_memory; "ours, default allocator" leaves it out), which in a shared process would speed the
others up too. The parent asks each for one step in turn, round after round, and reports each one's median step. MFU
counts 6N + 12*L*d*T FLOPs per token (N without padding) against this machine's matmul peak in the same dtype,
measured in the same run.

    NANOGPT_DIR=~/nanoGPT python benchmarks/bench_train.py        # 124M 1x1024, 2x1024, gpt2-mini 16x256; fp32, bf16
    NANOGPT_DIR=~/nanoGPT python benchmarks/bench_train.py --shapes gpt2-mini:16x256 --dtypes float32 --compile
    python benchmarks/bench_train.py --shapes gpt2-mini:16x256 --ablate   # what each of our pieces contributes
    python benchmarks/bench_train.py --shapes gpt2:1x1024 --ablate attention,loss   # some of them
    python benchmarks/bench_train.py --curve                      # fp32 vs bf16 loss curves on tinyshakespeare
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.nn.functional as F

import gpt2.kernels
import gpt2.model
from gpt2 import GPT, GPTConfig
from gpt2.devices import bf16_supported, keep_freed_memory
from gpt2.perf import clip_grad_norm, flops_per_token, matmul_peak
from gpt2.train import TrainConfig, make_optimizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, targets) -> loss; the bench does the rest
Clip = Callable[[list, float], torch.Tensor]  # (parameters, max norm) -> norm: each contender's own clipping


def ours(
    config: GPTConfig,
    compile_model: bool,
    fused: bool = True,
    pad: bool = True,
    keep: bool = True,
    gelu: bool = True,
    attention: bool = True,
    clip: bool = True,
    split: bool = True,
) -> tuple:
    """(step, optimizer, model, clip) for our GPT as `gpt2 train` runs it; fused/pad/keep/gelu/attention/clip/split off
    measure those pieces (each contender has a process of its own, so what one turns off stays off only there)."""
    if keep:
        keep_freed_memory()
    if not gelu:  # torch's GELU in place of csrc/gelu.cpp
        gpt2.kernels.gelu_tanh = partial(F.gelu, approximate="tanh")
    if not attention:  # torch's attention backward in place of csrc/attention.cpp's
        gpt2.kernels.causal_attention_applies = lambda qkv, n_head: False
    if not split:  # torch's matmul partition throughout, not csrc/matmul.cpp's row split where it measured faster
        gpt2.kernels.split_rows_applies = lambda rows, columns: False
    saved = gpt2.model.PAD_VOCAB_TO
    gpt2.model.PAD_VOCAB_TO = saved if pad else 1
    try:
        model = GPT(config)
    finally:
        gpt2.model.PAD_VOCAB_TO = saved
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    fn = torch.compile(model) if compile_model else model
    clipping = clip_grad_norm if clip else torch.nn.utils.clip_grad_norm_
    return (lambda x, y: fn(x, y, return_logits=not fused)[1]), opt, model, clipping


def load_nanogpt() -> object | None:
    """nanoGPT's model.py from the checkout in NANOGPT_DIR, or None when it is not set."""
    root = os.environ.get("NANOGPT_DIR")
    if not root:
        return None
    path = Path(root).expanduser() / "model.py"
    if not path.is_file():
        raise SystemExit(f"NANOGPT_DIR={root}: no model.py there (a nanoGPT checkout holds one)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt(module: object, config: GPTConfig, compile_model: bool) -> tuple:
    """nanoGPT's GPT with its own defaults for GPT-2 (vocabulary 50,304, biases) and its own AdamW."""
    c = module.GPTConfig(
        block_size=config.n_positions,
        vocab_size=50304 if config.vocab_size == 50257 else config.vocab_size,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        dropout=0.0,
        bias=True,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts
        model = module.GPT(c)
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    fn = torch.compile(model) if compile_model else model
    return (lambda x, y: fn(x, y)[1]), opt, model, torch.nn.utils.clip_grad_norm_  # as its train.py clips


def transformers_peer(config: GPTConfig) -> tuple:
    """transformers' GPT2LMHeadModel (SDPA attention) with the same AdamW settings as ours."""
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
    clipping = torch.nn.utils.clip_grad_norm_
    return (lambda x, y: model(input_ids=x, labels=x).loss), opt, model, clipping  # it shifts the labels itself


def one_step(step: Step, opt: torch.optim.Optimizer, model: torch.nn.Module, clip: Clip, xy: tuple, amp) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
        loss = step(*xy)
    loss.backward()
    clip(list(model.parameters()), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def make(impl: str, config: GPTConfig) -> tuple:
    """(step, optimizer, model, clip) of the contender named impl."""
    if impl.startswith("nanoGPT"):
        return nanogpt(load_nanogpt(), config, impl.endswith("+compile"))
    if impl == "transformers":
        return transformers_peer(config)
    return {
        "ours": partial(ours, config, False),
        "ours+compile": partial(ours, config, True),
        "ours, plain loss": partial(ours, config, False, fused=False),
        "ours, no padding": partial(ours, config, False, pad=False),
        "ours, default allocator": partial(ours, config, False, keep=False),
        "ours, torch's GELU": partial(ours, config, False, gelu=False),
        "ours, torch's attention": partial(ours, config, False, attention=False),
        "ours, torch's clipping": partial(ours, config, False, clip=False),
        "ours, torch's matmul partition": partial(ours, config, False, split=False),
    }[impl]()


# --ablate's pieces: each names the contender that is ours without it
ABLATIONS = {
    "loss": "ours, plain loss",
    "padding": "ours, no padding",
    "allocator": "ours, default allocator",
    "gelu": "ours, torch's GELU",
    "attention": "ours, torch's attention",
    "clipping": "ours, torch's clipping",
    "split": "ours, torch's matmul partition",
}


def ablated_pieces(text: str) -> list[str]:
    """--ablate's value: "all", or pieces by name, comma-separated."""
    pieces = list(ABLATIONS) if text == "all" else [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in pieces if p not in ABLATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown piece(s) {', '.join(unknown)}; known: all, {', '.join(ABLATIONS)}")
    return pieces


def worker(impl: str, config: GPTConfig, batch: int, seq: int, amp: torch.dtype | None, conn: Connection) -> None:
    """One contender in a process of its own: built, then one timed optimizer step per request until None."""
    torch.manual_seed(0)
    contender = make(impl, config)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
    xy = (x[:, :-1].contiguous(), x[:, 1:].contiguous())  # nanoGPT views its targets: they must be whole
    conn.send("ready")
    try:
        while conn.recv() is not None:
            conn.send(one_step(*contender, xy, amp))
    except (EOFError, BrokenPipeError):  # the parent stopped (another contender died): nothing to report
        return


def throughput(args: argparse.Namespace) -> None:
    nano = load_nanogpt() is not None  # checked here; each nanoGPT worker loads its own copy
    if not nano:
        print("NANOGPT_DIR is not set: nanoGPT is left out (set it to a nanoGPT checkout to compare)")
    if "bfloat16" in args.dtypes and not bf16_supported(torch.device("cpu")):
        # `gpt2 train` refuses it there (gpt2.devices); emulated on an AVX2 CPU, gpt2-mini --ablate had not
        # finished its 35 bfloat16 steps after 26 minutes
        print("bfloat16 left out: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX)")
        args.dtypes = [d for d in args.dtypes if d != "bfloat16"]
    peaks = {d: matmul_peak(torch.device("cpu"), getattr(torch, d), seconds=2.0) for d in args.dtypes}  # as gpt2 train
    for d, p in peaks.items():
        print(f"matmul peak {d}: {p / 1e9:.0f} GFLOP/s, measured here (MFU below is of this, not of a datasheet peak)")
    print(f"{'shape':<18} {'dtype':<9} {'impl':<30} {'tokens/s':>9} {'MFU':>6} {'first s':>8}  vs nanoGPT")
    impls = ["ours"] + [ABLATIONS[piece] for piece in args.ablate]
    if nano:
        impls.append("nanoGPT")
    if args.compile:
        impls += ["ours+compile"] + (["nanoGPT+compile"] if nano else [])
    if args.transformers:
        impls.append("transformers")
    context = multiprocessing.get_context("spawn")
    for spec in args.shapes:
        name, _, bt = spec.partition(":")
        batch, seq = (int(v) for v in (bt or "2x1024").split("x"))
        config = GPTConfig.from_name(name, n_positions=seq)
        with torch.device("meta"):
            fpt = flops_per_token(GPT(config), seq)
        for d in args.dtypes:
            amp = None if d == "float32" else torch.bfloat16
            pipes: dict[str, Connection] = {}
            for impl in impls:  # one at a time, so that building one does not slow another's steps
                mine, theirs = context.Pipe()
                context.Process(target=worker, args=(impl, config, batch, seq, amp, theirs), daemon=True).start()
                mine.recv()
                pipes[impl] = mine

            def step(impl: str, pipes: dict[str, Connection] = pipes, where: str = f"{name} {batch}x{seq}") -> float:
                try:
                    pipes[impl].send(True)
                    return pipes[impl].recv()
                except (BrokenPipeError, EOFError):
                    raise SystemExit(
                        f"bench_train: the {impl!r} process died at {where} (out of memory? every "
                        "contender holds its own model, optimizer and activations at once: time fewer of them, "
                        "e.g. --ablate attention,gelu or none, at the larger shapes)"
                    ) from None

            # the first step (compiling, where there is one) and one more warm-up, each contender in turn
            first = {impl: step(impl) for impl in impls}
            for impl in impls:
                step(impl)
            times: dict[str, list[float]] = {impl: [] for impl in impls}
            for _ in range(args.steps):  # interleaved: a slow patch of the machine hits every contender
                for impl in impls:
                    times[impl].append(step(impl))
            for conn in pipes.values():
                conn.send(None)
            tps = {impl: batch * seq / statistics.median(t) for impl, t in times.items()}
            for impl, v in tps.items():
                ratio = f"{v / tps['nanoGPT']:.2f}x" if "nanoGPT" in tps else ""
                if impl.endswith("+compile") and "nanoGPT+compile" in tps:
                    ratio += f"  ({v / tps['nanoGPT+compile']:.2f}x nanoGPT+compile)"
                label = f"{name} {batch}x{seq}"
                print(
                    f"{label:<18} {d:<9} {impl:<30} {v:>9.0f} {v * fpt / peaks[d]:>6.1%} {first[impl]:>8.1f}  {ratio}",
                    flush=True,
                )


def curve(args: argparse.Namespace) -> None:
    """fp32 and bf16 autocast from the same initial weights on the same batches: how far apart are the losses?
    The yardstick of "normal noise" is a second fp32 run that differs only in its initial weights' seed."""
    from gpt2.tokenizer import Tokenizer

    keep_freed_memory()  # as `gpt2 train` runs
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
                _, loss = model(batch[:, :-1], batch[:, 1:], return_logits=False)  # the fused loss, as trained
            loss.backward()
            clip_grad_norm(list(model.parameters()), 1.0)  # as trained
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
    p.add_argument(
        "--shapes",
        type=lambda s: s.split(","),
        default=["gpt2:1x1024", "gpt2:2x1024", "gpt2-mini:16x256"],
        help="PRESET:BATCHxSEQ, comma-separated",
    )
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=5, help="timed rounds (median reported), after two warm-up rounds")
    p.add_argument("--compile", action="store_true", help="also time ours and nanoGPT under torch.compile")
    p.add_argument(
        "--ablate",
        nargs="?",
        const="all",
        default=[],
        type=ablated_pieces,
        help=f"also time ours without each of these pieces (comma-separated; alone: all): {', '.join(ABLATIONS)}",
    )
    p.add_argument("--transformers", action="store_true", help="also time transformers' GPT2LMHeadModel")
    p.add_argument("--curve", action="store_true", help="compare fp32 and bf16 loss curves instead")
    p.add_argument("--curve-steps", type=int, default=200)
    args = p.parse_args()
    curve(args) if args.curve else throughput(args)


if __name__ == "__main__":
    main()
