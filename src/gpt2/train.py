"""Pretraining and fine-tuning with GPT-2's one objective: predict the next token.

One process on a CPU or GPU, or many through torchrun (DistributedDataParallel; FSDP for models that do not fit
one device). A run folder holds
  train_config.toml   the full configuration (give it back with --config to repeat the run);
  metrics.jsonl       one JSON object per logged step;
  model/              the latest weights in Hugging Face's GPT-2 layout, with the tokenizer;
  checkpoints/        step_NNNNNNN/ folders (weights + training_state.pt), the last k and the best.
A run resumed from its last checkpoint ends with the same weights as one never interrupted: the checkpoint holds
the optimizer, the step, every rank's RNG state and the data position, and is renamed into place only whole.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gpt2.checkpoint import atomic_write, save_model
from gpt2.data import TokenLoader, load_manifest
from gpt2.errors import GPT2Error
from gpt2.model import GPT, PRESETS, GPTConfig
from gpt2.tokenizer import Tokenizer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    # data and output
    data: str = ""  # a folder made by `gpt2 prepare`
    out: str = "runs/gpt2"
    # model: a preset trained from scratch, or a checkpoint to fine-tune
    model: str = "gpt2-tiny"  # preset name (see gpt2.model.PRESETS)
    init_from: str = ""  # model folder or official name; overrides `model`
    n_layer: int = 0  # 0: the preset's
    n_head: int = 0
    n_embd: int = 0
    seq_len: int = 1024  # tokens of context per training sequence
    dropout: float = 0.0
    # batch: batch_size sequences per process per micro-step; gradient accumulation makes up the rest
    batch_size: int = 8
    total_batch_size: int = 0  # sequences per optimizer step over all processes; 0: batch_size x processes
    # AdamW with linear warm-up then cosine decay to min_lr_ratio * lr
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only; biases, LayerNorms and position embeddings are not decayed
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: off
    # evaluation, logging, checkpoints
    eval_interval: int = 250  # steps between val loss, a sample and a checkpoint
    eval_batches: int = 20  # val loss over this many batches of total_batch_size sequences
    log_interval: int = 10
    sample_tokens: int = 64
    sample_prompt: str = ""  # empty: start from <|endoftext|>, an unconditional sample
    keep_last: int = 2  # checkpoints kept besides the best
    # system
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bfloat16 where the hardware has it), bfloat16, float32
    compile: bool = False
    distributed: str = "ddp"  # under torchrun: ddp, or fsdp to shard parameters, gradients and optimizer state
    seed: int = 1337

    def to_toml(self) -> str:
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            text = (
                json.dumps(value)
                if isinstance(value, str)
                else str(value).lower()
                if isinstance(value, bool)
                else repr(value)
            )
            lines.append(f"{f.name} = {text}")
        return "\n".join(lines) + "\n"


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


def checked(key: str, value: Any) -> Any:
    """value as the type of TrainConfig.key (TOML gives 1 for 1.0), or a clear error."""
    default = getattr(TrainConfig, key)
    if isinstance(value, bool) == isinstance(default, bool):
        if isinstance(default, float) and isinstance(value, (int, float)):
            return float(value)
        if type(value) is type(default):
            return value
    raise GPT2Error(f"training option {key} must be {type(default).__name__}, got {value!r}")


def parse_value(text: str, default: Any) -> Any:
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


# ------------------------------------------------------------------------------------------------ system
def autodetect_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPT2Error("device cuda was asked for, but torch sees no CUDA GPU")
    return device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # only where the CPU computes bf16 natively (AVX-512 BF16 or AMX): else it is slow
        cpu = torch.cpu
        return bool(
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    return False


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32)."""
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    if name in ("bfloat16", "bf16"):
        if not bf16_supported(device):
            raise GPT2Error(f"bfloat16 was asked for, but {device} has no native bfloat16 arithmetic")
        return torch.bfloat16
    if name in ("float32", "fp32"):
        return None
    raise GPT2Error(f"dtype must be auto, bfloat16 or float32, got {name!r}")


_PEAKS: dict[tuple[str, str], float] = {}


def matmul_peak(device: torch.device, dtype: torch.dtype | None) -> float:
    """This machine's measured matmul FLOP/s in the training dtype: the denominator of MFU."""
    key = (str(device), str(dtype))
    if key not in _PEAKS:
        n = 4096 if device.type == "cuda" else 1024
        g = torch.Generator(device=device).manual_seed(0)  # not the global RNG: resumed runs must replay it exactly
        a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32, generator=g) for _ in range(2))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for _ in range(3):
            a @ b
        sync()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3 or reps < 5:
            a @ b
            reps += 1
            if reps % 5 == 0:
                sync()
        sync()
        _PEAKS[key] = 2 * n**3 * reps / (time.perf_counter() - t0)
    return _PEAKS[key]


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights' forward and backward, 12 L d T for attention scores."""
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_embd * seq_len


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(), autodetect_device(device_name)
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, torch.device(f"cuda:{d.local_rank}" if use_cuda else "cpu")


# ------------------------------------------------------------------------------------------------ model and optimizer
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # Decay the matrices (and the token embedding, which is also the output matrix); not biases, LayerNorm gains or
    # the position embeddings.
    decay = [p for n, p in params.items() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in params.items() if p.dim() < 2 or "wpe" in n]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")  # torch's fused AdamW: one kernel for all parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused)


def build_model(cfg: TrainConfig, manifest: dict[str, Any], data_tok: Tokenizer) -> tuple[GPT, Tokenizer]:
    """A fresh model of the preset, or the init_from checkpoint after checking it fits the data."""
    data_vocab = manifest["tokenizer"]["vocab_size"]
    if cfg.init_from:
        model = GPT.from_pretrained(cfg.init_from)
        try:
            model_tok = Tokenizer.from_pretrained(cfg.init_from)
        except GPT2Error:
            model_tok = None
        if model_tok is not None and model_tok.fingerprint != data_tok.fingerprint:
            raise GPT2Error(
                f"the data in {cfg.data} was tokenized with {data_tok.name!r} ({data_tok.vocab_size} tokens), "
                f"but {cfg.init_from} uses {model_tok.name!r} ({model_tok.vocab_size} tokens); "
                f"run `gpt2 prepare --tokenizer {cfg.init_from}` first"
            )
        if data_vocab > model.config.vocab_size:
            raise GPT2Error(
                f"the data's vocabulary ({data_vocab}) is larger than the model's ({model.config.vocab_size})"
            )
        if cfg.seq_len > model.config.n_positions:
            raise GPT2Error(
                f"seq_len {cfg.seq_len} exceeds the context of {cfg.init_from} ({model.config.n_positions})"
            )
        if cfg.dropout:
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
                if hasattr(m, "dropout") and isinstance(m.dropout, float):
                    m.dropout = cfg.dropout
        return model, model_tok or data_tok
    if cfg.model not in PRESETS:
        raise GPT2Error(f"unknown model preset {cfg.model!r}; known: {', '.join(PRESETS)} (or use init_from)")
    shape = {k: v for k in ("n_layer", "n_head", "n_embd") if (v := getattr(cfg, k))}
    config = GPTConfig.from_name(
        cfg.model, vocab_size=data_vocab, n_positions=cfg.seq_len, dropout=cfg.dropout, **shape
    )
    return GPT(config), data_tok


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(p for p in root.glob("step_*") if (p / "training_state.pt").is_file()) if root.is_dir() else []


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist, self.device = setup_distributed(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.dtype, self.device)
        if not cfg.data:
            raise GPT2Error("no training data: pass --data DIR (a folder made by `gpt2 prepare`)")
        manifest = load_manifest(cfg.data)
        data_tok = Tokenizer.from_pretrained(Path(cfg.data) / "tokenizer")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model, self.tokenizer = build_model(cfg, manifest, data_tok)
        self.model = model.to(self.device)
        self.raw_model = self.model

        W = self.dist.world_size
        total = cfg.total_batch_size or cfg.batch_size * W
        if total % (cfg.batch_size * W):
            raise GPT2Error(
                f"total_batch_size ({total}) must be a multiple of batch_size x processes ({cfg.batch_size} x {W})"
            )
        self.accum = total // (cfg.batch_size * W)
        self.tokens_per_step = total * cfg.seq_len
        self.train_loader = TokenLoader(
            cfg.data, "train", cfg.batch_size, cfg.seq_len, rank=self.dist.rank, world_size=W, seed=cfg.seed
        )
        self.has_val = bool(manifest["splits"]["val"]["shards"])
        if not self.has_val and self.dist.main:
            warnings.warn(f"{cfg.data} has no val split: no val loss will be measured", stacklevel=2)
        if self.dist.enabled:
            self._wrap_distributed()
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.step, self.tokens_seen, self.best_val = 0, 0, float("inf")
        self.best_step: int | None = None
        if resume:
            self._resume()
        elif checkpoint_dirs(self.out):
            raise GPT2Error(f"{self.out} already holds a training run; continue it with --resume, or use a new --out")
        elif self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "train_config.toml", cfg.to_toml().encode())
            atomic_write(self.out / "metrics.jsonl", b"")
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.flops_per_token = flops_per_token(self.raw_model, cfg.seq_len)
        self.peak = matmul_peak(self.device, self.amp_dtype)
        self.tensorboard = self._tensorboard()

    def _wrap_distributed(self) -> None:
        if self.cfg.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)
        elif self.cfg.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in self.raw_model.transformer.h:
                fully_shard(block)
            fully_shard(self.raw_model)
        else:
            raise GPT2Error(f"distributed must be ddp or fsdp, got {self.cfg.distributed!r}")

    def _tensorboard(self) -> Any:
        if not self.dist.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # -------------------------------------------------------------------------------------------- state
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.distributed == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.raw_model.state_dict()

    def _optimizer_state(self) -> dict[str, Any]:
        if self.cfg.distributed == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return self.optimizer.state_dict()

    def save_checkpoint(self) -> None:
        """checkpoints/step_N (weights + training state) renamed into place whole, then model/ updated."""
        model_state, optim_state = self._model_state(), self._optimizer_state()
        rngs = [rng_state(self.device)]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, rng_state(self.device))
        if not self.dist.main:
            return
        root = self.out / "checkpoints"
        final = root / f"step_{self.step:07d}"
        tmp = root / f".tmp_step_{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        snapshot = self.raw_model
        if self.cfg.distributed == "fsdp" and self.dist.enabled:  # the gathered full weights, on the CPU
            snapshot = GPT(self.raw_model.config)
            snapshot.load_state_dict(model_state)
        save_model(snapshot, tmp, tokenizer=self.tokenizer)
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "optimizer": optim_state,
            "rng": rngs,
            "loader": self.train_loader.state_dict(),
            "world_size": self.dist.world_size,
        }
        tmp_state = tmp / "training_state.pt"
        torch.save(state, tmp_state)
        with open(tmp_state, "rb") as f:
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        save_model(snapshot, self.out / "model", tokenizer=self.tokenizer)
        keep = {p.name for p in checkpoint_dirs(self.out)[-self.cfg.keep_last :]}
        if self.best_step is not None:
            keep.add(f"step_{self.best_step:07d}")
        for p in checkpoint_dirs(self.out):
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def _resume(self) -> None:
        found = checkpoint_dirs(self.out)
        if not found:
            raise GPT2Error(f"{self.out}: no checkpoint to resume from (checkpoints/step_*/training_state.pt)")
        latest = found[-1]
        try:
            state = torch.load(latest / "training_state.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise GPT2Error(f"{latest / 'training_state.pt'}: cannot be read ({type(e).__name__}: {e})") from None
        if state["world_size"] != self.dist.world_size and self.dist.main:
            warnings.warn(
                f"{latest} was written by {state['world_size']} processes and this run has "
                f"{self.dist.world_size}: it continues, but not exactly as the original would have",
                stacklevel=2,
            )
        weights = GPT.from_pretrained(latest).state_dict()
        if self.cfg.distributed == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, weights, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        else:
            self.raw_model.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.best_val, self.best_step = state["best_val"], state["best_step"]
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"][self.dist.rank % len(state["rng"])], self.device)
        if self.dist.main:  # forget metrics logged after the checkpoint: those steps run again
            metrics = self.out / "metrics.jsonl"
            lines = metrics.read_text().splitlines(keepends=True) if metrics.exists() else []
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
            atomic_write(metrics, "".join(kept).encode())

    # -------------------------------------------------------------------------------------------- loop
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
        if not self.dist.enabled or last:
            return contextlib.nullcontext()
        if self.cfg.distributed == "ddp":
            return self.model.no_sync()
        self.raw_model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    def _mean(self, value: torch.Tensor) -> float:
        """The mean of value over processes (gloo has no AVG: sum, then divide)."""
        if self.dist.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.dist.world_size
        return value.item()

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over accum micro-batches: (mean loss, gradient norm before clipping)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            last = micro == self.accum - 1
            if self.cfg.distributed == "fsdp" and self.dist.enabled and last:
                self.raw_model.set_requires_gradient_sync(True)
            x, y = self.train_loader.next_batch(self.device)
            with self._no_sync(last), self.autocast():
                _, loss = self.model(x, y)
            (loss / self.accum).backward()
            loss_sum += loss.detach().float()
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return self._mean(loss_sum / self.accum), float(
            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        )

    @torch.no_grad()
    def val_loss(self) -> float:
        self.model.eval()
        loader = TokenLoader(
            self.cfg.data,
            "val",
            self.cfg.batch_size,
            self.cfg.seq_len,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            shuffle=False,
        )
        # eval_batches full batches (total_batch_size sequences each): the same sequences however many processes
        per_rank = self.cfg.batch_size * self.dist.world_size
        batches = min(self.cfg.eval_batches * self.accum, loader.num_sequences // per_rank)
        total = torch.zeros((), device=self.device)
        for _ in range(batches):
            x, y = loader.next_batch(self.device)
            with self.autocast():
                _, loss = self.model(x, y)
            total += loss.float()
        return self._mean(total / batches)

    @torch.no_grad()
    def sample(self) -> str:
        from gpt2.generate import generate

        self.raw_model.eval()
        n = min(self.cfg.sample_tokens, self.raw_model.config.n_positions)
        with self.autocast():
            return generate(
                self.raw_model,
                self.tokenizer,
                self.cfg.sample_prompt,
                n,
                top_k=40,
                seed=self.cfg.seed,
                stop_at_eot=True,
            )[0]

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "tokens"):
                    self.tensorboard.add_scalar(key, value, record["tokens"])

    def run(self, progress: bool = True) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        say = tqdm.write if progress else print
        if self.dist.main:
            c = self.raw_model.config
            say(
                f"model: {self.raw_model.num_params() / 1e6:.2f}M parameters ({c.n_layer} layers, {c.n_embd} wide, "
                f"{c.n_head} heads, context {cfg.seq_len}, vocab {c.vocab_size}); "
                f"{self.dist.world_size} process(es) on {self.device}, "
                f"{'bf16 autocast' if self.amp_dtype else 'fp32'}; "
                f"{self.tokens_per_step:,} tokens per step "
                f"({self.accum} micro-steps of {cfg.batch_size} x {cfg.seq_len})"
            )
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not (progress and self.dist.main))
        last: dict[str, Any] = {}
        window_start, window_steps = time.perf_counter(), 0
        while self.step < cfg.max_steps:
            loss, grad_norm = self.train_step()
            window_steps += 1
            if not math.isfinite(loss):
                kept = checkpoint_dirs(self.out)
                where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
                raise GPT2Error(
                    f"loss became {loss} at step {self.step}; training stopped ({where}); "
                    f"try a lower lr or more warmup_steps"
                )
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            is_eval = self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps
            if self.step % cfg.log_interval == 0 or is_eval or self.step == 1:
                elapsed = time.perf_counter() - window_start
                tps = window_steps * self.tokens_per_step / elapsed
                record = {
                    "step": self.step,
                    "tokens": self.tokens_seen,
                    "loss": loss,
                    "lr": lr_at(self.step - 1, cfg),
                    "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "mfu": tps / self.dist.world_size * self.flops_per_token / self.peak,
                }
                if is_eval:
                    if self.has_val:
                        record["val_loss"] = self.val_loss()
                    if self.dist.main and cfg.sample_tokens:
                        record["sample"] = self.sample()
                self.log(record)
                if self.dist.main and (self.step % cfg.log_interval == 0 or is_eval):
                    line = (
                        f"step {self.step}: loss {loss:.4f}, lr {record['lr']:.2e}, grad norm {grad_norm:.3f}, "
                        f"{tps:,.0f} tokens/s, MFU {record['mfu']:.1%}"
                    )
                    if "val_loss" in record:
                        line += f", val loss {record['val_loss']:.4f}"
                    say(line)
                    if "sample" in record:
                        say(f"sample: {record['sample']!r}")
                if is_eval:
                    val = record.get("val_loss", loss)
                    if val < self.best_val:
                        self.best_val, self.best_step = val, self.step
                    self.save_checkpoint()
                last = record
                window_start, window_steps = time.perf_counter(), 0
        bar.close()
        if self.dist.enabled:
            dist.barrier()
        return last

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run training to cfg.max_steps; returns the last logged metrics."""
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.run(progress=progress)
    finally:
        trainer.close()


# ------------------------------------------------------------------------------------------------ CLI
def cli(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="gpt2 train",
        description="Train a GPT-2 on prepared shards. Every TrainConfig field is an option: --key value.",
    )
    p.add_argument("--config", help="TOML file of training options")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in fields(TrainConfig):
        default = f.default
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar=type(default).__name__.upper(),
            help=f"(default {default!r})",
        )
    a = p.parse_args(argv)
    overrides = {}
    for f in fields(TrainConfig):
        text = getattr(a, f.name)
        if text is not None:
            try:
                overrides[f.name] = parse_value(text, f.default)
            except GPT2Error as e:
                raise GPT2Error(f"--{f.name.replace('_', '-')}: {e}") from None
    config_file = a.config
    if a.resume:
        saved = Path(a.resume) / "train_config.toml"
        if not saved.is_file():
            raise GPT2Error(f"{a.resume}: not a run folder (no train_config.toml)")
        config_file = config_file or str(saved)
        overrides["out"] = a.resume
    cfg = load_config(config_file, overrides)
    train(cfg, resume=bool(a.resume), progress=not a.quiet)
