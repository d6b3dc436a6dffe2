"""A family of model sizes trained on the same data and token budget, evaluated, and a power law fitted to validation
loss against non-embedding parameters (`gpt2 scale`).

The paper trained four sizes (117M-1542M) and found every task improving log-linearly with size (Radford et al.
2019, Figure 1 and Table 3); Kaplan et al. (2020, "Scaling Laws for Neural Language Models") fitted
L(N) = (N_c / N)^alpha_N with N the non-embedding parameters, which is what `fit_power_law` estimates, with the
standard error of alpha from the least-squares fit in log space.

Each size trains in its own run folder under `out` through gpt2.train (so an interrupted size resumes from its
last checkpoint), then writes result.json there; a size with a result.json for the same settings is not trained
again.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.io import atomic_write, report

# the paper's four sizes (Table 2): layers, width
PAPER_SHAPES = {"117M": (12, 768), "345M": (24, 1024), "762M": (36, 1280), "1542M": (48, 1600)}
_SHAPE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Size:
    """One model of the family: a preset name or an LxD shape."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int

    @property
    def non_embedding_params(self) -> int:
        return non_embedding_params(self.n_layer, self.n_embd)


def non_embedding_params(n_layer: int, n_embd: int) -> int:
    """Parameters outside the token and position embeddings (Kaplan et al. 2020's N): per block the attention's
    4 d^2 + 4 d, the MLP's 8 d^2 + 5 d and two LayerNorms' 4 d; plus the final LayerNorm's 2 d."""
    return n_layer * (12 * n_embd * n_embd + 13 * n_embd) + 2 * n_embd


def _heads(width: int) -> int:
    # GPT-2's heads are 64 wide; a width that 64 does not divide gets the most heads of at least 32 dims that do
    if width % 64 == 0:
        return width // 64
    for heads in range(max(1, width // 32), 0, -1):
        if width % heads == 0:
            return heads
    return 1


def parse_sizes(spec: str | Sequence[str]) -> list[Size]:
    """Sizes from "gpt2-tiny,4x256,...": presets of gpt2.model, or LAYERSxWIDTH (heads: width / 64, or the most
    heads of at least 32 dimensions that divide the width)."""
    from gpt2.model import PRESETS

    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise GPT2Error("--sizes is empty: give sizes such as 2x64,2x128,4x256 or gpt2-tiny,gpt2-mini")
    sizes = []
    for name in names:
        if name in PRESETS:
            p = PRESETS[name]
            sizes.append(Size(name, p["n_layer"], p["n_head"], p["n_embd"]))
            continue
        m = _SHAPE.match(name)
        if not m:
            raise GPT2Error(
                f"unknown size {name!r}: give a preset ({', '.join(PRESETS)}) or LAYERSxWIDTH such as 4x256"
            )
        layers, width = int(m.group(1)), int(m.group(2))
        if layers < 1 or width < 8 or width % 2:
            raise GPT2Error(f"size {name!r}: layers must be >= 1 and the width an even number >= 8")
        sizes.append(Size(name, layers, _heads(width), width))
    if len({s.name for s in sizes}) != len(sizes):
        raise GPT2Error(f"--sizes names a size twice: {', '.join(names)}")
    return sorted(sizes, key=lambda s: s.non_embedding_params)


# ------------------------------------------------------------------------------------------------ the fit
@dataclass
class PowerLaw:
    """L = a * N^-alpha (+ c): alpha with its standard error, in log space."""

    a: float
    alpha: float
    alpha_se: float | None
    c: float = 0.0
    r2: float | None = None
    points: int = 0

    def __call__(self, n: float) -> float:
        return self.a * n**-self.alpha + self.c

    def describe(self) -> str:
        se = f" ± {self.alpha_se:.3f}" if self.alpha_se is not None else ""
        const = f" + {self.c:.3f}" if self.c else ""
        return f"L = {self.a:.3g} · N^-{self.alpha:.3f}{const}, alpha = {self.alpha:.3f}{se}"


def _line_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float | None, float | None]:
    """Least squares y = b0 + b1 x: (b0, b1, standard error of b1, R^2); the error needs three points or more."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    if sxx == 0:
        raise GPT2Error("the sizes have the same number of parameters: nothing to fit a slope to")
    b1 = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
    b0 = my - b1 * mx
    sse = sum((yi - b0 - b1 * xi) ** 2 for xi, yi in zip(x, y, strict=True))
    syy = sum((yi - my) ** 2 for yi in y)
    se = math.sqrt(sse / (n - 2) / sxx) if n > 2 else None
    r2 = 1 - sse / syy if syy > 0 else None
    return b0, b1, se, r2


def fit_power_law(params: Sequence[float], losses: Sequence[float], constant: bool = False) -> PowerLaw:
    """Fit L = a * N^-alpha by least squares on log L against log N; the slope's standard error is alpha's.

    With `constant`, L = a * N^-alpha + c (an irreducible loss, c in [0, min L)): c is chosen by a grid search
    that minimises the log-space residual, and alpha's standard error is the one given that c (it leaves out c's
    own uncertainty, so it is a lower bound)."""
    if len(params) != len(losses):
        raise GPT2Error("fit_power_law: parameters and losses differ in length")
    if len(params) < 2:
        raise GPT2Error(f"a power law needs at least two sizes, got {len(params)}")
    if any(p <= 0 for p in params) or any(not (math.isfinite(v) and v > 0) for v in losses):
        raise GPT2Error("a power law needs positive parameter counts and positive, finite losses")
    x = [math.log(p) for p in params]

    def fit(c: float) -> PowerLaw:
        b0, b1, se, r2 = _line_fit(x, [math.log(v - c) for v in losses])
        return PowerLaw(math.exp(b0), -b1, se, c, r2, len(params))

    if not constant:
        return fit(0.0)
    if len(params) < 4:
        raise GPT2Error(f"a power law with a constant needs at least four sizes, got {len(params)}")

    lo, hi = 0.0, min(losses) * (1 - 1e-6)
    best = fit(0.0)
    for _ in range(4):  # a grid, then finer grids around the best
        grid = [lo + (hi - lo) * i / 200 for i in range(201)]
        cands = [fit(c) for c in grid if c < min(losses)]
        best = min(cands + [best], key=lambda law: _residual(law, x, losses))
        step = (hi - lo) / 200
        lo, hi = max(0.0, best.c - step), min(min(losses) * (1 - 1e-6), best.c + step)
    return best


def _residual(law: PowerLaw, x: Sequence[float], losses: Sequence[float]) -> float:
    # in loss units, so fits with different c compare on the same scale
    return sum((law(math.exp(xi)) - v) ** 2 for xi, v in zip(x, losses, strict=True))


# ------------------------------------------------------------------------------------------------ the family
@dataclass
class ScaleConfig:
    sizes: list[Size]
    data: str
    tokens: int
    out: str
    tasks: list[str]
    data_dir: str | None = None
    limit: int | None = None
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 0  # 0: a tenth of the steps
    evals: int = 4  # val loss measurements (and checkpoints) per run; the last one is the run's figure
    eval_batches: int = 20
    device: str = "auto"
    seed: int = 1337
    fit_constant: bool = False
    offline: bool = True

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))


def _train_config(cfg: ScaleConfig, size: Size) -> Any:
    from gpt2.train_config import load_config

    steps = cfg.steps
    every = max(1, math.ceil(steps / max(1, cfg.evals)))
    return load_config(
        None,
        {
            "data": cfg.data,
            "out": str(Path(cfg.out) / size.name),
            "model": "gpt2-tiny",  # the shape overrides every dimension of the preset
            "n_layer": size.n_layer,
            "n_head": size.n_head,
            "n_embd": size.n_embd,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "total_batch_size": 0,
            "max_steps": steps,
            "lr": cfg.lr,
            "warmup_steps": cfg.warmup_steps or max(1, steps // 10),
            "eval_interval": every,
            "eval_batches": cfg.eval_batches,
            "log_interval": max(1, every // 5),
            "sample_tokens": 0,
            "keep_last": 1,
            "device": cfg.device,
            "dtype": "auto",
            "seed": cfg.seed,
        },
    )


def _settings(cfg: ScaleConfig, size: Size) -> dict[str, Any]:
    """What a size's result depends on: a result.json for other settings is trained again."""
    return {
        "data": str(Path(cfg.data).resolve()),
        "shape": [size.n_layer, size.n_head, size.n_embd],
        "tokens": cfg.tokens,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps,
        "seed": cfg.seed,
        "eval_batches": cfg.eval_batches,
    }


def _last_val(run: Path) -> tuple[float | None, int]:
    from gpt2.plot import read_metrics

    rows = read_metrics(run)
    val = [r for r in rows if "val_loss" in r]
    return (val[-1]["val_loss"], val[-1]["step"]) if val else (None, rows[-1]["step"])


_RUN_KEYS = ("data", "n_layer", "n_head", "n_embd", "seq_len", "batch_size", "max_steps", "lr", "warmup_steps", "seed")


def _check_same_run(run: Path, tcfg: Any) -> None:
    """A stopped run is resumed only if it was started with these settings (the learning-rate schedule depends
    on the step count, so a run resumed under another budget would be neither the old run nor the new one)."""
    from gpt2.train_config import load_config, with_absolute_paths

    try:
        saved = load_config(str(run / "train_config.toml"), {})
    except GPT2Error:
        raise GPT2Error(f"{run} holds checkpoints but no readable train_config.toml; use a new --out") from None
    new = with_absolute_paths(tcfg)
    differ = [k for k in _RUN_KEYS if getattr(saved, k) != getattr(new, k)]
    if differ:
        raise GPT2Error(
            f"{run} holds a run with other settings ({', '.join(f'{k} {getattr(saved, k)}' for k in differ)}, now "
            f"{', '.join(str(getattr(new, k)) for k in differ)}); use a new --out or remove that folder"
        )


def train_size(cfg: ScaleConfig, size: Size, progress: bool = True) -> dict[str, Any]:
    """Train one size (resuming its run folder if it holds a checkpoint), evaluate it, and write result.json;
    a result.json for the same settings is read back instead. Reports a line per stage."""
    from gpt2.checkpoint import checkpoint_dirs

    run = Path(cfg.out) / size.name
    result_path = run / "result.json"
    settings = _settings(cfg, size)
    evaluated = sorted(cfg.tasks)
    if result_path.is_file():
        try:
            old = json.loads(result_path.read_text("utf-8"))
        except ValueError:
            old = {}
        if old.get("settings") == settings and sorted(old.get("tasks_run", [])) == evaluated:
            report(f"{size.name}: already trained and evaluated ({result_path}); not retrained")
            return old
    tcfg = _train_config(cfg, size)
    done_steps = 0
    if checkpoint_dirs(run):
        _check_same_run(run, tcfg)
        done_steps = int(checkpoint_dirs(run)[-1].name.split("_")[-1])
    start = time.perf_counter()
    if done_steps < cfg.steps:
        from gpt2.train import train

        resuming = f", resuming from step {done_steps}" if done_steps else ""
        report(f"{size.name}: training to {cfg.steps} steps ({cfg.tokens:,} tokens){resuming}")
        train(tcfg, resume=done_steps > 0, progress=progress)
    seconds = time.perf_counter() - start
    val_loss, step = _last_val(run)
    if val_loss is None:
        raise GPT2Error(f"{run}: no validation loss was measured (does {cfg.data} have a val split?)")
    result: dict[str, Any] = {
        "size": size.name,
        "n_layer": size.n_layer,
        "n_head": size.n_head,
        "n_embd": size.n_embd,
        "non_embedding_params": size.non_embedding_params,
        "tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "steps": step,
        "val_loss": val_loss,
        "train_seconds": round(seconds, 1) if done_steps < cfg.steps else None,
        "settings": settings,
        "tasks_run": evaluated,
        "tasks": {},
    }
    import torch

    from gpt2.model import GPT
    from gpt2.tokenizer import Tokenizer

    model = GPT.from_pretrained(run / "model")
    result["params"] = model.num_params()
    if cfg.tasks:
        from gpt2.evaluate import evaluate

        tokenizer = Tokenizer.from_pretrained(run / "model")
        with torch.no_grad():
            r = evaluate(
                model, tokenizer, cfg.tasks, data_dir=cfg.data_dir, offline=cfg.offline, limit=cfg.limit,
                model_name=size.name, skip_missing=True, seed=cfg.seed,
            )  # fmt: skip
        result["tasks"] = r["tasks"]
        result["skipped"] = r["skipped"]
    atomic_write(result_path, json.dumps(result, indent=1) + "\n")
    return result


def run_family(cfg: ScaleConfig, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every size, fit the power law, and write scaling.json, scaling.md and the plots."""
    if cfg.tokens < 1:
        raise GPT2Error(f"--tokens must be >= 1, got {cfg.tokens}")
    if cfg.seq_len < 2 or cfg.batch_size < 1:
        raise GPT2Error("--seq-len must be >= 2 and --batch-size >= 1")
    from gpt2.data import load_manifest

    load_manifest(cfg.data)  # a clear error before any training if the data folder is not prepared
    results = [train_size(cfg, size, progress) for size in cfg.sizes]
    law = fit_power_law([r["non_embedding_params"] for r in results], [r["val_loss"] for r in results],
                        constant=cfg.fit_constant) if len(results) >= 2 else None  # fmt: skip
    out = Path(cfg.out)
    summary = {
        "sizes": results,
        "fit": asdict(law) if law else None,
        "fit_text": law.describe() if law else None,
        "tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "data": str(Path(cfg.data).resolve()),
    }
    atomic_write(out / "scaling.json", json.dumps(summary, indent=1) + "\n")
    atomic_write(out / "scaling.md", markdown_table(results, law))
    summary["plots"] = [str(p) for p in plot_family(results, law, out)]
    return summary


def markdown_table(results: list[dict[str, Any]], law: PowerLaw | None) -> str:
    metrics = sorted({(t, m) for r in results for t, ms in r["tasks"].items() for m in ms if m != "n"})
    head = ["size", "layers", "width", "heads", "params", "non-embedding", "tokens", "val loss"]
    head += [f"{t} {m}" for t, m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r["size"], r["n_layer"], r["n_embd"], r["n_head"], f"{r.get('params', 0):,}",
               f"{r['non_embedding_params']:,}", f"{r['tokens']:,}", f"{r['val_loss']:.4f}"]  # fmt: skip
        row += [_fmt(r["tasks"].get(t, {}).get(m)) for t, m in metrics]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    if law is not None:
        lines += ["", f"Fit over {law.points} sizes (least squares in log space): {law.describe()}"
                  + (f", R² {law.r2:.3f}" if law.r2 is not None else "") + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _paper_points(task: str, metric: str) -> list[tuple[int, float]]:
    from gpt2.evaluate.paper import PAPER

    return [(non_embedding_params(*PAPER_SHAPES[s]), PAPER[s][(task, metric)]) for s in PAPER_SHAPES
            if (task, metric) in PAPER[s]]  # fmt: skip


def plot_family(results: list[dict[str, Any]], law: PowerLaw | None, out: Path) -> list[Path]:
    """scaling.png: val loss against non-embedding parameters with the fit; scaling_tasks.png: each task metric
    against parameters, beside the paper's four sizes where Table 3 has the metric."""
    from matplotlib.ticker import FormatStrFormatter

    from gpt2.plot import new_figure, save_png

    written = []
    ns = [r["non_embedding_params"] for r in results]
    fig = new_figure(figsize=(6.5, 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.plot(ns, [r["val_loss"] for r in results], "o", color="C0", ms=7, label="validation loss", zorder=3)
    for r in results:
        ax.annotate(r["size"], (r["non_embedding_params"], r["val_loss"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)  # fmt: skip
    if law is not None:
        lo, hi = min(ns) / 1.5, max(ns) * 1.5
        xs = [lo * (hi / lo) ** (i / 100) for i in range(101)]
        ax.plot(xs, [law(x) for x in xs], "--", color="C1", label=law.describe())
    ax.set_xscale("log")
    ax.set_yscale("log")
    # losses span a narrow range: plain numbers on the log axis read better than powers of ten
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats per token)")
    tokens = results[0]["tokens"] if results else 0
    ax.set_title(f"{len(results)} sizes, {tokens:,} training tokens each", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(save_png(fig, out / "scaling.png"))

    metrics = sorted({(t, m) for r in results for t, ms in r["tasks"].items() for m in ms if m != "n"})
    if metrics:
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig = new_figure(figsize=(4.5 * cols, 3.5 * rows), dpi=110)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (task, metric) in zip(axes.flat, metrics, strict=False):
            pts = [(r["non_embedding_params"], r["tasks"][task][metric]) for r in results
                   if task in r["tasks"] and r["tasks"][task].get(metric) is not None]  # fmt: skip
            ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", color="C0", label="this family")
            paper = _paper_points(task, metric)
            if paper:
                ax.plot([p for p, _ in paper], [v for _, v in paper], "s-", color="0.5",
                        label="GPT-2 paper (Table 3)")  # fmt: skip
            ax.set_xscale("log")
            if "ppl" in metric:
                ax.set_yscale("log")
            ax.set_title(f"{task} {metric}", fontsize=9)
            ax.set_xlabel("non-embedding parameters", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        fig.tight_layout()
        written.append(save_png(fig, out / "scaling_tasks.png"))
    return written


__all__ = ["PowerLaw", "ScaleConfig", "Size", "fit_power_law", "non_embedding_params", "parse_sizes", "run_family"]
