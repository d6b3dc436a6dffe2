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

import contextlib
import errno
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gpt2.checkpoint import (
    TrainingProgress,
    checkpoint_dirs,
    load_training_checkpoint,
    save_training_checkpoint,
)
from gpt2.data import TokenLoader, load_manifest
from gpt2.devices import keep_freed_memory, pick_device, pick_dtype
from gpt2.errors import GPT2Error
from gpt2.io import atomic_write, disk_full, progress_bar, report
from gpt2.model import GPT, PRESETS, GPTConfig
from gpt2.perf import clip_grad_norm, compile_if_faster, flops_per_token, matmul_peak
from gpt2.tokenizer import Tokenizer
from gpt2.train_config import TrainConfig, with_absolute_paths


# ------------------------------------------------------------------------------------------------ system
def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the `dtype` option (None: plain float32)."""
    dtype = pick_dtype(name, device, training=True)
    return None if dtype == torch.float32 else dtype


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
        return Dist(), pick_device(device_name)
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


def logged(line: str) -> dict[str, Any] | None:
    """A metrics.jsonl record, or None for a blank line or one cut short by a kill."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        if cfg.distributed not in ("ddp", "fsdp"):
            raise GPT2Error(f"distributed must be ddp or fsdp, got {cfg.distributed!r}")
        if cfg.keep_last < 1:
            raise GPT2Error(
                f"keep_last must be >= 1 (the newest checkpoint is what --resume continues), got {cfg.keep_last}"
            )
        if not cfg.data:
            raise GPT2Error("no training data: pass --data DIR (a folder made by `gpt2 prepare`)")
        self.dist, self.device = setup_distributed(cfg.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # ~25% of a CPU step was the kernel faulting in freshly mapped memory
        self.sharded = cfg.distributed == "fsdp" and self.dist.enabled  # FSDP shards; else whole replicas
        self.amp_dtype = autocast_dtype(cfg.dtype, self.device)
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
        self.progress = TrainingProgress()
        if resume:
            self._resume()
        elif checkpoint_dirs(self.out):
            raise GPT2Error(f"{self.out} already holds a training run; continue it with --resume, or use a new --out")
        elif self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "train_config.toml", with_absolute_paths(cfg).to_toml())
            atomic_write(self.out / "metrics.jsonl", b"")
        self.compile_note = ""  # how compile went, for the first progress line
        self._compile()
        self.flops_per_token = flops_per_token(self.raw_model, cfg.seq_len)
        self.peak = matmul_peak(self.device, self.amp_dtype)
        self.tensorboard = self._tensorboard()

    def _compile(self) -> None:
        """Compile the model (and the fused loss inside it) per the `compile` option (gpt2.perf.compile_if_faster),
        probing on a batch before training. The probe leaves no trace: its gradients are dropped and the RNG state
        (dropout) is restored, so the run's numbers do not depend on it."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randint(0, self.raw_model.config.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
        x = x.to(self.device)
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        try:
            self.model, self.compile_note = compile_if_faster(
                self.model,
                cfg.compile,
                self.device,
                lambda model, reps: self._probe(model, x, reps),
                (cfg.max_steps - self.progress.step) * self.accum,
                self._everywhere,
            )
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], self.device)

    def _probe(self, model: torch.nn.Module, x: torch.Tensor, reps: int) -> tuple[float, float]:
        """Seconds of the first forward + backward of x through model, and the median of the other reps."""
        model.train()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            with self.autocast():
                _, loss = model(x, x, return_logits=False)
            loss.backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t0)
        return times[0], statistics.median(times[1:]) if reps > 1 else times[0]

    def _everywhere(self, flag: bool) -> bool:
        """flag on every process (one decision for all: their timings differ)."""
        if not self.dist.enabled:
            return flag
        value = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def _wrap_distributed(self) -> None:
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            for block in self.raw_model.transformer.h:
                fully_shard(block)
            fully_shard(self.raw_model)
        else:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)

    def _tensorboard(self) -> Any:
        if not self.dist.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # -------------------------------------------------------------------------------------------- state
    def save_checkpoint(self) -> None:
        """checkpoints/step_N (weights + training state), then model/; see gpt2.checkpoint."""
        save_training_checkpoint(
            self.out,
            self.raw_model,
            self.optimizer,
            self.progress,
            self.train_loader.state_dict(),
            sharded=self.sharded,
            tokenizer=self.tokenizer,
            keep_last=self.cfg.keep_last,
        )

    def _resume(self) -> None:
        self.progress, loader_state = load_training_checkpoint(
            self.out, self.raw_model, self.optimizer, sharded=self.sharded
        )
        self.train_loader.load_state_dict(loader_state)
        step = self.progress.step
        if step > self.cfg.max_steps:
            raise GPT2Error(
                f"{self.out} is at step {step} already, past --max-steps {self.cfg.max_steps}; give a larger "
                f"--max-steps to extend the run"
            )
        if self.dist.main:
            done = " (already finished: give a larger --max-steps to extend it)" if step == self.cfg.max_steps else ""
            report(f"resuming {self.out} from step {step} of {self.cfg.max_steps}{done}")
            # forget metrics logged after the checkpoint (those steps run again), and a last line a kill cut short
            metrics = self.out / "metrics.jsonl"
            lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True) if metrics.exists() else []
            kept = [line for line in lines if (record := logged(line)) is not None and record["step"] <= step]
            atomic_write(metrics, "".join(line if line.endswith("\n") else line + "\n" for line in kept))

    # -------------------------------------------------------------------------------------------- loop
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
        if not self.dist.enabled or last:
            return contextlib.nullcontext()
        if self.sharded:
            self.raw_model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.model.no_sync()

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
            group["lr"] = lr_at(self.progress.step, self.cfg)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            last = micro == self.accum - 1
            if self.sharded and last:
                self.raw_model.set_requires_gradient_sync(True)
            x, y = self.train_loader.next_batch(self.device)
            with self._no_sync(last), self.autocast():
                _, loss = self.model(x, y, return_logits=False)
            (loss / self.accum).backward()
            loss_sum += loss.detach().float()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf  # 0: not clipped, the norm logged
        grad_norm = clip_grad_norm(list(self.model.parameters()), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens_seen += self.tokens_per_step
        return self._mean(loss_sum / self.accum), float(
            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        )

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation: this process's share of tokens/s times FLOPs per token, over the measured
        matmul peak. Above 1 the peak was timed while the machine was busier than now (at start-up, beside
        another job): it is timed again, and where the figure still passes 1 there is none (None)."""
        per_process = tokens_per_s / self.dist.world_size * self.flops_per_token
        if per_process > self.peak:
            self.peak = matmul_peak(self.device, self.amp_dtype, refresh=True)
        return per_process / self.peak if per_process <= self.peak else None

    @torch.no_grad()
    def val_loss(self) -> float:
        # the uncompiled model: a compiled one would compile again for eval mode, for a few batches
        self.raw_model.eval()
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
                _, loss = self.raw_model(x, y, return_logits=False)
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
        line = json.dumps(record) + "\n"
        try:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:  # a line cut short here is dropped on --resume
            if e.errno == errno.ENOSPC:
                raise disk_full(self.out / "metrics.jsonl", len(line.encode())) from None
            raise
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "tokens"):
                    self.tensorboard.add_scalar(key, value, record["tokens"])

    def run(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main:
            c = self.raw_model.config
            report(
                f"model: {self.raw_model.num_params() / 1e6:.2f}M parameters ({c.n_layer} layers, {c.n_embd} wide, "
                f"{c.n_head} heads, context {cfg.seq_len}, vocab {c.vocab_size}); "
                f"{self.dist.world_size} process(es) on {self.device}, "
                f"{'bf16 autocast' if self.amp_dtype else 'fp32'}; "
                f"{self.tokens_per_step:,} tokens per step "
                f"({self.accum} micro-steps of {cfg.batch_size} x {cfg.seq_len})"
            )
        bar = progress_bar(
            total=cfg.max_steps, initial=self.progress.step, unit="step", enabled=progress and self.dist.main
        )
        last: dict[str, Any] = {}
        window_start, window_steps = time.perf_counter(), 0
        while self.progress.step < cfg.max_steps:
            loss, grad_norm = self.train_step()
            window_steps += 1
            if not math.isfinite(loss):
                kept = checkpoint_dirs(self.out)
                where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written yet"
                raise GPT2Error(
                    f"loss became {loss} at step {self.progress.step}; training stopped ({where}); "
                    f"try a lower lr or more warmup_steps"
                )
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            is_eval = self.progress.step % cfg.eval_interval == 0 or self.progress.step == cfg.max_steps
            if self.progress.step % cfg.log_interval == 0 or is_eval or self.progress.step == 1:
                elapsed = time.perf_counter() - window_start
                tps = window_steps * self.tokens_per_step / elapsed
                record = {
                    "step": self.progress.step,
                    "tokens": self.progress.tokens_seen,
                    "loss": loss,
                    "lr": lr_at(self.progress.step - 1, cfg),
                    "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "mfu": self.mfu(tps),
                }
                if is_eval:
                    if self.has_val:
                        record["val_loss"] = self.val_loss()
                    if self.dist.main and cfg.sample_tokens:
                        record["sample"] = self.sample()
                self.log(record)
                if self.dist.main and (self.progress.step % cfg.log_interval == 0 or is_eval):
                    line = (
                        f"step {self.progress.step}: loss {loss:.4f}, lr {record['lr']:.2e}, "
                        f"grad norm {grad_norm:.3f}, {tps:,.0f} tokens/s, "
                        + (
                            f"MFU {record['mfu']:.1%} of the measured matmul peak"
                            if record["mfu"] is not None
                            else "MFU not shown (faster than the matmul peak, timed twice: the machine's load moved)"
                        )
                    )
                    if "val_loss" in record:
                        line += f", val loss {record['val_loss']:.4f}"
                    report(line)
                    if "sample" in record:
                        report(f"sample: {record['sample']!r}")
                if self.dist.main and self.progress.step == 1 and self.compile_note:
                    report(f"step 1: loss {loss:.4f}, {tps:,.0f} tokens/s; torch.compile: {self.compile_note}")
                if is_eval:
                    val = record.get("val_loss", loss)
                    if val < self.progress.best_val:
                        self.progress.best_val, self.progress.best_step = val, self.progress.step
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
