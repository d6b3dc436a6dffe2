"""Evaluation speed: LAMBADA (OpenAI's test set, 5,153 passages) with GPT-2 small's shape (124M).

The issue's target: the full LAMBADA test set with the 124M model in under 10 minutes on a 2-core CPU. Official
weights cannot be downloaded here; random weights of the same shape cost the same compute. Two measurements:

1. peer: the first --peer-n passages scored by our engine (`gpt2 eval`'s path: length-sorted batches, the
   vocabulary projection only where a target token is, float32 log-softmax) and by transformers'
   GPT2LMHeadModel on the same weights, the same length-sorted right-padded batches, full logits (the usual
   way). Repeats are interleaved (other processes' load hits both alike); medians, and the ratio.
2. full: all 5,153 passages through `gpt2.evaluate.evaluate`, once per --dtypes, against the 600 s target.

    python benchmarks/bench_eval.py                                   # both, float32 and bfloat16
    python benchmarks/bench_eval.py --skip-full --peer-n 512 --repeats 5
    python benchmarks/bench_eval.py --skip-peer --dtypes float32 --batch-size 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gpt2 import GPT, GPTConfig
from gpt2.evaluate import evaluate
from gpt2.evaluate.tasks.lambada import read_lambada, split_last_word
from gpt2.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_S = 600.0


@torch.inference_mode()
def transformers_lambada(model, requests: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """The peer: summed target log-probs from full logits of right-padded, length-sorted batches."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    out = [0.0] * len(requests)
    for lo in range(0, len(order), batch_size):
        batch = order[lo : lo + batch_size]
        seqs = [requests[i][0] + requests[i][1] for i in batch]
        width = max(map(len, seqs)) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, : len(s) - 1] = torch.tensor(s[:-1])
            mask[r, : len(s) - 1] = 1
        logp = model(input_ids=x, attention_mask=mask).logits.float().log_softmax(-1)
        for r, i in enumerate(batch):
            c, t = requests[i]
            rows = torch.arange(len(c) - 1, len(c) + len(t) - 1)
            out[i] = float(logp[r, rows, torch.tensor(t)].sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=SHARED, help="folder holding lambada/lambada_test.jsonl")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--peer-n", type=int, default=256, help="passages in the peer comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = Tokenizer.from_pretrained(args.data_dir / "gpt2-vocab")
    passages = read_lambada(args.data_dir / "lambada" / "lambada_test.jsonl")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt2")).eval()
    print(f"GPT-2 small shape, {model.num_params():,} parameters, random weights; {torch.get_num_threads()} threads")
    print(f"LAMBADA: {len(passages)} passages; batch size {args.batch_size}")

    if not args.skip_peer:
        from transformers import GPT2LMHeadModel

        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
        n = args.peer_n
        requests = []
        for text in passages[:n]:
            context, target = split_last_word(text)
            requests.append((tokenizer.encode_ordinary(context), tokenizer.encode_ordinary(target)))
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            r = evaluate(
                model, tokenizer, "lambada", data_dir=args.data_dir, offline=True, limit=n, batch_size=args.batch_size
            )
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            peer = transformers_lambada(theirs, requests, args.batch_size)
            theirs_s.append(time.perf_counter() - start)
        peer_ppl = torch.tensor([-x for x in peer], dtype=torch.float64).mean().exp().item()
        a, b = statistics.median(ours_s), statistics.median(theirs_s)
        print(f"\npeer, first {n} passages, float32, median of {args.repeats}:")
        print(f"  ours          {a:7.2f} s  {n / a:7.2f} examples/s   ppl {r['tasks']['lambada']['ppl']:.6g}")
        print(f"  transformers  {b:7.2f} s  {n / b:7.2f} examples/s   ppl {peer_ppl:.6g}")
        print(f"  ours / transformers speed: {b / a:.2f}x")

    if not args.skip_full:
        print("\nfull test set:")
        for name in args.dtypes:
            model.to(DTYPES[name])
            start = time.perf_counter()
            r = evaluate(model, tokenizer, "lambada", data_dir=args.data_dir, offline=True, batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            verdict = "under" if seconds < TARGET_S else "OVER"
            print(
                f"  {name:9} {seconds:7.1f} s  {len(passages) / seconds:6.2f} examples/s  "
                f"({verdict} the {TARGET_S:.0f} s target)  ppl {r['tasks']['lambada']['ppl']:.6g}"
            )


if __name__ == "__main__":
    main()
