"""Quality of int8 weights (gpt2.quantize), measured rather than assumed: a trained checkpoint evaluated at
float32, bfloat16 and int8 on WikiText-2 (token-level perplexity) and LAMBADA (accuracy), and how often int8's
greedy tokens equal float32's.

Two more rows compare scale layouts without a kernel for them: float32 models whose matrices are replaced by
what int8 with one scale per row ("rows, simulated": the layout gpt2.quantize uses, which must match the int8
row) or per group of --group consecutive weights of a row stands for. The issue's target: int8 perplexity
within 1% of float32's. Greedy agreement: for --prompts prompts from WikiText-2 (--prompt-tokens each), the
share of --new-tokens greedy tokens equal to float32's until the first difference (texts part for good there),
and, fed float32's greedy text, the share of positions whose next-token choice is float32's (top-1 agreement).
Speed is benchmarks/bench_generate.py's (GPT-2 small's shape with random weights).

    python benchmarks/bench_quant.py --model runs/demo/run/model
    python benchmarks/bench_quant.py --model runs/demo/run/model --wikitext-limit 8 --lambada-limit 500 --group 64
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn as nn

from gpt2 import GPT
from gpt2.evaluate import evaluate
from gpt2.quantize import QMAX
from gpt2.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fake_quantize(weight: torch.Tensor, group: int | None) -> torch.Tensor:
    """What symmetric int8 with one scale per row (group None) or per `group` weights of a row stands for."""
    w = weight.detach().float()
    rows, cols = w.shape
    g = cols if group is None or cols % group else group  # a row that does not split evenly keeps one scale
    blocks = w.reshape(rows, cols // g, g)
    scale = blocks.abs().amax(-1, keepdim=True) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(blocks / scale).clamp(-QMAX, QMAX) * scale).reshape(rows, cols)


def simulated(model: GPT, group: int | None) -> GPT:
    """A float32 copy of model whose decoder matrices and (untied) output layer are fake_quantize's."""
    sim = copy.deepcopy(model)
    with torch.no_grad():
        for block in sim.transformer.h:
            for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                layer.weight.copy_(fake_quantize(layer.weight, group))
        vocab = sim.config.vocab_size
        head = nn.Linear(sim.config.n_embd, vocab, bias=False)
        head.weight = nn.Parameter(fake_quantize(sim.transformer.wte.weight[:vocab], group), requires_grad=False)
        sim.lm_head = head
    return sim.eval()


@torch.no_grad()
def greedy_agreement(model: GPT, reference: GPT, prompts: torch.Tensor, new: int) -> tuple[float, float]:
    """(share of greedy tokens equal to reference's until the first difference, top-1 agreement on reference's
    greedy text), over all prompts."""
    same_prefix, agree, total = 0, 0, 0
    for prompt in prompts:
        ref = reference.generate(prompt[None], new, temperature=0)
        out = model.generate(prompt[None], new, temperature=0)
        differs = (out[0, -new:] != ref[0, -new:]).nonzero()
        same_prefix += int(differs[0]) if len(differs) else new
        n_ctx = model.config.n_positions
        text = ref[:, -n_ctx:]
        start = text.shape[1] - new - 1  # the position whose next token is the first generated one
        choices = model(text[:, :-1])[0, start:].argmax(-1)
        agree += int((choices == text[0, start + 1 :]).sum())
        total += new
    return same_prefix / total, agree / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained model folder with its tokenizer")
    parser.add_argument("--data-dir", type=Path, default=SHARED, help="folder laid out as ../shared/data")
    parser.add_argument("--wikitext-limit", type=int, default=None, help="first N WikiText-2 articles (default: all)")
    parser.add_argument("--lambada-limit", type=int, default=None, help="first N LAMBADA passages (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--group", type=int, default=128, help="group size of the simulated per-group row")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = Tokenizer.from_pretrained(args.model)
    fp32 = GPT.from_pretrained(args.model)
    variants = {
        "float32": fp32,
        "bfloat16": GPT.from_pretrained(args.model, dtype=torch.bfloat16),
        "int8": GPT.from_pretrained(args.model, dtype="int8"),
        "int8 rows, simulated": simulated(fp32, None),
        f"int8 groups of {args.group}, simulated": simulated(fp32, args.group),
    }
    print(
        f"{args.model}: {fp32.num_params():,} parameters, vocab {fp32.config.vocab_size}, context "
        f"{fp32.config.n_positions}; WikiText-2 limit {args.wikitext_limit}, LAMBADA limit {args.lambada_limit}; "
        f"torch {torch.get_num_threads()} threads"
    )
    text = (args.data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    ids = tokenizer.encode(" ".join(text.split()[:20000]))
    step = max(1, (len(ids) - args.prompt_tokens) // args.prompts)
    prompts = torch.tensor([ids[i * step : i * step + args.prompt_tokens] for i in range(args.prompts)])
    metrics: dict[str, dict[str, float]] = {}
    for name, model in variants.items():
        start = time.perf_counter()
        row = {}
        for task, limit in (("wikitext2", args.wikitext_limit), ("lambada", args.lambada_limit)):
            result = evaluate(
                model, tokenizer, task, data_dir=args.data_dir, offline=True, limit=limit, batch_size=args.batch_size
            )
            row |= {f"{task} {m}": v for m, v in result["tasks"][task].items() if m != "n"}
            row[f"{task} n"] = result["tasks"][task]["n"]
        if name != "float32":
            row["greedy prefix"], row["greedy top-1"] = greedy_agreement(model, fp32, prompts, args.new_tokens)
        metrics[name] = row
        print(f"  {name}: evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    base = metrics["float32"]
    shown = [k for k in ("wikitext2 token_ppl", "lambada acc", "lambada ppl") if k in base]
    print(f"\n| weights | {' | '.join(shown)} | token ppl vs float32 | greedy = float32's (prefix / top-1) |")
    print(f"|---|{'---|' * len(shown)}---|---|")
    for name, row in metrics.items():
        cells = [f"{row[k]:.4f}" if "ppl" in k else f"{row[k]:.2f}" for k in shown]
        ppl_key = next((k for k in shown if k.endswith("token_ppl")), None)
        change = f"{(row[ppl_key] / base[ppl_key] - 1) * 100:+.2f}%" if ppl_key else "-"
        greedy = (
            f"{row['greedy prefix'] * 100:.1f}% / {row['greedy top-1'] * 100:.1f}%" if "greedy top-1" in row else "-"
        )
        print(f"| {name} | {' | '.join(cells)} | {change} | {greedy} |")
    tokens = args.prompts * args.new_tokens
    print(f"\nWikiText-2: {base['wikitext2 n']} articles; LAMBADA: {base['lambada n']} passages")
    print(f"greedy: {args.prompts} prompts x {args.new_tokens} new tokens = {tokens} tokens against float32's")


if __name__ == "__main__":
    main()
