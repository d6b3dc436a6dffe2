"""Training options: TrainConfig (every field is a `gpt2 train --key value` option), the presets' starting
points, and how a run's configuration is assembled, stored and read back for --resume.

Kept apart from the training loop so that reading options (`gpt2 train --help`) never loads torch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gpt2.errors import GPT2Error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def option(default: Any, help: str) -> Any:
    """A TrainConfig field with the sentence `gpt2 train --help` shows for it."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data and output
    data: str = option("", "a folder made by `gpt2 prepare`; needed unless --resume or --config gives it")
    out: str = option("runs/gpt2", "the run folder: config, metrics, model/ and checkpoints/")
    # model: a preset trained from scratch, or a checkpoint to fine-tune
    model: str = option("gpt2-tiny", "model preset to train from scratch (gpt2, gpt2-medium, ..., gpt2-tiny)")
    init_from: str = option("", "model folder or official name to fine-tune instead; overrides --model")
    n_layer: int = option(0, "Transformer blocks; 0: the preset's")
    n_head: int = option(0, "attention heads; 0: the preset's")
    n_embd: int = option(0, "width of the residual stream; 0: the preset's")
    seq_len: int = option(1024, "tokens of context per training sequence (the model's context when from scratch)")
    dropout: float = option(0.0, "dropout rate on embeddings, attention weights and residual branches")
    # batch: batch_size sequences per process per micro-step; gradient accumulation makes up the rest
    batch_size: int = option(8, "sequences per process per forward pass (micro-batch)")
    total_batch_size: int = option(
        0, "sequences per optimizer step over all processes, reached by gradient accumulation; 0: batch x processes"
    )
    # AdamW with linear warm-up then cosine decay to min_lr_ratio * lr
    max_steps: int = option(1000, "optimizer steps to train for (a resumed run may raise it)")
    lr: float = option(6e-4, "peak learning rate, reached after the warm-up")
    min_lr_ratio: float = option(0.1, "the cosine decay ends at this fraction of lr, at max_steps")
    warmup_steps: int = option(100, "steps of linear warm-up from 0 to lr")
    weight_decay: float = option(
        0.1, "AdamW weight decay on matrices only (not biases, LayerNorms or position embeddings)"
    )
    beta1: float = option(0.9, "AdamW's first-moment decay")
    beta2: float = option(0.95, "AdamW's second-moment decay")
    grad_clip: float = option(1.0, "clip the gradient's global norm to this; 0: no clipping")
    # evaluation, logging, checkpoints
    eval_interval: int = option(250, "steps between validation loss, a sample and a checkpoint")
    eval_batches: int = option(20, "validation loss over this many batches of total_batch_size sequences")
    log_interval: int = option(10, "steps between log lines and metrics.jsonl records")
    sample_tokens: int = option(64, "tokens sampled at each evaluation (top-k 40); 0: no sample")
    sample_prompt: str = option("", "text the evaluation sample continues; empty: an unconditional sample")
    keep_last: int = option(2, "most recent checkpoints kept besides the best (at least 1)")
    # system
    device: str = option("auto", "auto (the GPU if there is one), cpu, cuda or cuda:N")
    dtype: str = option("auto", "auto (bfloat16 autocast where the hardware computes it natively), bfloat16, float32")
    compile: str = option(
        "auto",
        "torch.compile the model: true, false, or auto (on CUDA; on a CPU when a timed warm-up shows a gain and "
        "the run is long enough to repay the compile)",
    )
    distributed: str = option("ddp", "under torchrun: ddp, or fsdp to shard parameters, gradients and optimizer state")
    seed: int = option(1337, "seed of the initial weights, the data order and the samples")

    def to_toml(self) -> str:
        """The configuration as TOML, every field in order; load_config reads it back unchanged."""
        import tomli_w

        return tomli_w.dumps(asdict(self))


# Starting points by model size. The paper's four sizes: 1024 context and 512 sequences a step, as in GPT-2; the
# learning rates are GPT-3's for the nearest sizes (the GPT-2 paper tuned them per size but did not publish them).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(seq_len=1024, total_batch_size=512, lr=6e-4, warmup_steps=700, max_steps=19073),
    "gpt2-medium": dict(seq_len=1024, total_batch_size=512, lr=3e-4, warmup_steps=700, max_steps=19073),
    "gpt2-large": dict(seq_len=1024, total_batch_size=512, lr=2.5e-4, warmup_steps=700, max_steps=19073),
    "gpt2-xl": dict(seq_len=1024, total_batch_size=512, lr=2e-4, warmup_steps=700, max_steps=19073),
    "gpt2-mini": dict(seq_len=256, batch_size=16, lr=1e-3, warmup_steps=100, max_steps=2000, eval_interval=200),
    "gpt2-tiny": dict(seq_len=256, batch_size=16, lr=2e-3, warmup_steps=50, max_steps=1000, eval_interval=100),
}


def load_config(config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults <- the model preset's training defaults <- the TOML file <- command-line overrides."""
    known = {f.name: f for f in fields(TrainConfig)}
    from_file: dict[str, Any] = {}
    if config_file:
        try:
            from_file = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise GPT2Error(f"{config_file}: cannot read TOML ({e})") from None
    for key in {**from_file, **overrides}:
        if key not in known:
            raise GPT2Error(f"unknown training option {key!r}; known: {', '.join(known)}")
    model = overrides.get("model", from_file.get("model", TrainConfig.model))
    values = {**TRAIN_PRESETS.get(model, {}), **from_file, **overrides}
    return TrainConfig(**{key: checked(key, value) for key, value in values.items()})


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """cfg with its data folder (and a local init_from folder) as absolute paths: what a run folder stores, so that
    `gpt2 train --resume RUN` works from any working directory."""
    init_from = str(Path(cfg.init_from).resolve()) if cfg.init_from and Path(cfg.init_from).exists() else cfg.init_from
    return replace(cfg, data=str(Path(cfg.data).resolve()) if cfg.data else "", init_from=init_from)


def run_config(run_dir: str | os.PathLike, overrides: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """The configuration to continue the run in run_dir: its train_config.toml (or config_file) with overrides,
    writing to run_dir. A relative data path (runs made before paths were stored absolute) is looked up in the
    run folder, then in the working directory."""
    saved = Path(run_dir) / "train_config.toml"
    if not saved.is_file():
        raise GPT2Error(f"{run_dir}: not a run folder (no train_config.toml)")
    cfg = load_config(config_file or str(saved), {**overrides, "out": str(run_dir)})
    relative = "data" not in overrides and cfg.data and not Path(cfg.data).is_absolute()
    if relative and (Path(run_dir) / cfg.data).is_dir():
        cfg = replace(cfg, data=str(Path(run_dir) / cfg.data))
    return cfg


def checked(key: str, value: Any) -> Any:
    """value as the type of TrainConfig.key (TOML gives 1 for 1.0), or a clear error."""
    default = getattr(TrainConfig, key)
    if key == "compile" and isinstance(value, bool):  # run folders from before "auto" stored true / false
        value = str(value).lower()
    if isinstance(value, bool) == isinstance(default, bool):
        if isinstance(default, float) and isinstance(value, (int, float)):
            return float(value)
        if type(value) is type(default):
            return value
    raise GPT2Error(f"training option {key} must be {type(default).__name__}, got {value!r}")
