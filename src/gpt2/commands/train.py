"""`gpt2 train`: pretrain or fine-tune on prepared shards; every TrainConfig field is an option (--key value)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any

from gpt2.errors import GPT2Error
from gpt2.train_config import TRAIN_PRESETS, TrainConfig, load_config, run_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2 train",
        description="Train a GPT-2 on shards made by `gpt2 prepare`: from a preset, or fine-tuning a checkpoint "
        "(--init-from). Options come from the model preset's defaults, then --config, then --key value.",
    )
    p.add_argument("--config", help="TOML file of training options (a run's train_config.toml repeats it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines (errors and warnings still show)"
    )
    group = p.add_argument_group("training options (TrainConfig fields)")
    preset = TRAIN_PRESETS[TrainConfig.model]
    for f in fields(TrainConfig):
        assert f.default is not MISSING
        if any(f.name in values for values in TRAIN_PRESETS.values()):
            value = preset.get(f.name, f.default)
            default = f" (default {value!r} with --model {TrainConfig.model}; each preset has its own)"
        else:
            default = f" (default {f.default!r})" if f.default != "" else ""
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar=type(f.default).__name__.upper(),
            help=f.metadata["help"] + default,
        )
    return p


def parse_value(text: str, default: Any) -> Any:
    """A command-line string as the type of the option's default."""
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise GPT2Error(f"expected true or false, got {text!r}")
    try:
        return type(default)(text)
    except ValueError:
        raise GPT2Error(f"expected {type(default).__name__}, got {text!r}") from None


def run(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from gpt2.io import quiet

    quiet(getattr(a, "quiet", False))
    overrides = {}
    for f in fields(TrainConfig):
        text = getattr(a, f.name)
        if text is not None:
            try:
                overrides[f.name] = parse_value(text, f.default)
            except GPT2Error as e:
                raise GPT2Error(f"--{f.name.replace('_', '-')}: {e}") from None
    cfg = run_config(a.resume, overrides, a.config) if a.resume else load_config(a.config, overrides)
    from gpt2.train import train

    train(cfg, resume=bool(a.resume), progress=not a.quiet)
