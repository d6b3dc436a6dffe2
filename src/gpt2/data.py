"""Training data: text files -> token shards (`gpt2 prepare`), and the loader that serves them to training.

A prepared folder holds
  manifest.json         what was read, with which tokenizer, and the shards of each split;
  tokenizer/            the vocabulary used (vocab.json + merges.txt), so training never mixes vocabularies;
  train_000000.bin ...  shards: a 64-byte header (magic, version, vocab size, token count, bytes per token) and
  val_000000.bin ...    the tokens as little-endian uint16 (uint32 for vocabularies over 65,536), memory-mappable.
Each document is preceded by <|endoftext|>, as in GPT-2's training data, so the model learns where texts begin.

Shards are written to a temp file and renamed, and the header's token count must match the file size, so a
half-written shard never looks whole. The manifest records every finished shard and how many documents they
hold, at least every few seconds of work (a shard ends there early); an interrupted `gpt2 prepare` run again with
the same arguments skips those documents. Inputs are identified by path (relative to their common folder), size
and sha256, so changed files are refused and a copied corpus is recognised.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2.errors import GPT2Error
from gpt2.hub import sha256_file
from gpt2.io import DocumentReader, atomic_write, input_files, progress_bar
from gpt2.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

MAGIC = 0x32545047  # b"GPT2" read as a little-endian uint32
VERSION = 1
HEADER = struct.Struct("<IIIIQ40x")  # magic, version, vocab size, bytes per token, token count; 64 bytes
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------ shards
def write_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    header = HEADER.pack(MAGIC, VERSION, vocab_size, np.dtype(dtype).itemsize, len(tokens))
    atomic_write(path, header + tokens.astype(dtype, copy=False).astype("<" + np.dtype(dtype).str[1:]).tobytes())


def read_shard(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The tokens of a shard (a read-only memory map) and the vocabulary size it was written for."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
        size = path.stat().st_size
    except OSError as e:
        raise GPT2Error(f"{path}: cannot read token shard ({e.strerror})") from None
    if len(raw) < HEADER.size:
        raise GPT2Error(f"{path}: too short to be a token shard")
    magic, version, vocab_size, itemsize, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise GPT2Error(f"{path}: not a gpt2 token shard (bad magic number)")
    if version != VERSION:
        raise GPT2Error(f"{path}: shard format version {version}, this gpt2 reads version {VERSION}")
    if itemsize not in (2, 4) or size != HEADER.size + count * itemsize:
        raise GPT2Error(f"{path}: truncated or damaged: header says {count} tokens, file holds {size} bytes")
    dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,)), vocab_size


# ------------------------------------------------------------------------------------------------ prepare
@dataclass
class PrepareConfig:
    inputs: list[str]
    tokenizer: str
    output: str
    val_fraction: float = 0.005
    shard_tokens: int = 100_000_000
    piece_tokens: int = 2048  # documents longer than this are split into pieces for the train/val routing
    text_field: str = "text"
    save_every: float = 5.0  # seconds of work between progress records (shards written, manifest updated)


def is_val(piece_index: int, fraction: float) -> bool:
    """Route evenly: piece k is validation when floor((k+1) * f) > floor(k * f); exactly a fraction f of pieces,
    spread through the corpus rather than all at its end, and the same on every run."""
    return math.floor((piece_index + 1) * fraction) > math.floor(piece_index * fraction)


def describe_inputs(files: list[Path], known: list[Any] | None = None) -> list[dict[str, Any]]:
    """What identifies each input: its path relative to the inputs' common folder (so that a copied or moved
    corpus is the same corpus), its size and a sha256 of its bytes. The sha256 is reused from `known` (an earlier
    manifest's entries) when path, size and modification time all match, so a resumed run does not re-read it."""
    root = Path(os.path.commonpath([p.resolve().parent for p in files]))
    earlier = {e["file"]: e for e in known or () if isinstance(e, dict)}
    entries = []
    for path in files:
        st = path.stat()
        name = path.resolve().relative_to(root).as_posix()
        old = earlier.get(name)
        same = old is not None and (old.get("bytes"), old.get("mtime_ns")) == (st.st_size, st.st_mtime_ns)
        digest = old["sha256"] if same else sha256_file(path)
        entries.append({"file": name, "bytes": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns})
    return entries


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict[str, Any]:
    """Tokenize cfg.inputs into shards in cfg.output; returns the manifest. Resumes an interrupted run from its
    last progress record (written at least every cfg.save_every seconds of work)."""
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise GPT2Error(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    tok = Tokenizer.from_pretrained(cfg.tokenizer)
    files = input_files(cfg.inputs)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    inputs = describe_inputs(files, old.get("inputs") if old else None)
    identity = {
        "inputs": [{k: v for k, v in entry.items() if k != "mtime_ns"} for entry in inputs],
        "tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size},
        "val_fraction": cfg.val_fraction,
        "shard_tokens": cfg.shard_tokens,
        "piece_tokens": cfg.piece_tokens,
    }
    manifest: dict[str, Any] = {"format": "gpt2-token-shards", "version": VERSION, **identity, "complete": False}
    manifest["inputs"] = inputs
    manifest["splits"] = {s: {"shards": [], "tokens": 0, "documents": 0} for s in ("train", "val")}
    manifest["documents_done"] = manifest["pieces_done"] = 0
    if old is not None:
        old_identity = {**old, "inputs": [{k: v for k, v in e.items() if k != "mtime_ns"} for e in old["inputs"]]}
        if any(old_identity.get(k) != v for k, v in identity.items()):
            raise GPT2Error(f"{out} already holds shards prepared from other inputs or settings; use a new --output")
        old["inputs"] = inputs  # the same files; their times may differ (a copied folder)
        if old.get("complete"):
            return old
        manifest = old
    tok.save_pretrained(out / "tokenizer")

    reader = DocumentReader(files, cfg.text_field)
    skip = manifest["documents_done"]
    buffers: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    pending = {"train": 0, "val": 0}
    doc_counts = {"train": 0, "val": 0}
    piece = manifest["pieces_done"]
    documents = skip
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32

    def flush(final: bool = False) -> None:
        """Write both splits' buffers as shards and record them: the manifest is the resume point."""
        nonlocal saved
        for split, parts in buffers.items():
            if not parts:
                continue
            info = manifest["splits"][split]
            name = f"{split}_{len(info['shards']):06d}.bin"
            tokens = np.concatenate(parts)
            write_shard(out / name, tokens, tok.vocab_size)
            info["shards"].append({"file": name, "tokens": int(len(tokens))})
            info["tokens"] += int(len(tokens))
            parts.clear()
            pending[split] = 0
        for split in doc_counts:
            manifest["splits"][split]["documents"] += doc_counts[split]
            doc_counts[split] = 0
        manifest["documents_done"], manifest["pieces_done"], manifest["complete"] = documents, piece, final
        atomic_write(manifest_path, json.dumps(manifest, indent=2) + "\n")
        saved = time.monotonic()

    saved = time.monotonic()
    bar = progress_bar(enabled=progress, desc="tokenizing", unit="doc", initial=skip)
    batch: list[str] = []

    def consume(texts: list[str]) -> None:
        nonlocal piece, documents
        for ids in tok.encode_batch(texts):
            ids = np.asarray([tok.eot_id, *ids], dtype=dtype)
            splits_seen = set()
            for start in range(0, len(ids), cfg.piece_tokens):
                split = "val" if cfg.val_fraction and is_val(piece, cfg.val_fraction) else "train"
                buffers[split].append(ids[start : start + cfg.piece_tokens])
                pending[split] += len(buffers[split][-1])
                splits_seen.add(split)
                piece += 1
            for split in splits_seen:
                doc_counts[split] += 1
            documents += 1
            if pending["train"] >= cfg.shard_tokens or time.monotonic() - saved >= cfg.save_every:
                flush()
        bar.update(len(texts))

    for n, text in enumerate(reader.texts()):
        if n < skip:
            continue
        batch.append(text)
        if len(batch) >= 256 or sum(map(len, batch)) > 8 << 20:
            consume(batch)
            batch = []
    if batch:
        consume(batch)
    bar.close()
    if documents == 0:
        raise GPT2Error(f"no text found in {', '.join(map(str, cfg.inputs))}: the corpus is empty")
    reader.warn_invalid()
    flush(final=True)
    if cfg.val_fraction and not manifest["splits"]["val"]["tokens"]:
        warnings.warn(
            f"the val split is empty: {piece} pieces of up to {cfg.piece_tokens} tokens are too few for a "
            f"val fraction of {cfg.val_fraction}; raise --val-fraction to hold some out",
            stacklevel=2,
        )
    return manifest


# ------------------------------------------------------------------------------------------------ loading
def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise GPT2Error(f"{data_dir}: not a prepared data folder (no {MANIFEST}); run `gpt2 prepare` first")
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        raise GPT2Error(f"{data_dir}: `gpt2 prepare` did not finish; run it again with the same arguments")
    return manifest


class TokenLoader:
    """Batches (x, y) of shape (B, T) from one split, in a shuffled order that resumes exactly.

    The split is cut into sequences of T+1 tokens at stride T within each shard. Every epoch visits all of
    them once, in a permutation drawn from (seed, epoch). A step of a data-parallel run takes the next
    world_size * B sequences of the permutation, rank r the r-th block of B: so ranks read disjoint data,
    and one process with gradient accumulation reads exactly what world_size processes read together.
    The position (epoch, cursor) is the whole state.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        batch_size: int,
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        manifest = load_manifest(data_dir)
        info = manifest["splits"].get(split)
        if not info or not info["shards"]:
            raise GPT2Error(f"{data_dir}: the {split!r} split is empty (raise --val-fraction in `gpt2 prepare`)")
        self.shards = [read_shard(Path(data_dir) / s["file"])[0] for s in info["shards"]]
        self.vocab_size = manifest["tokenizer"]["vocab_size"]
        counts = np.array([(len(s) - 1) // seq_len for s in self.shards], dtype=np.int64)
        self.num_sequences = int(counts.sum())
        if self.num_sequences < batch_size * world_size:
            raise GPT2Error(
                f"{data_dir}: the {split!r} split has {self.num_sequences} sequences of {seq_len + 1} tokens, "
                f"fewer than one batch ({world_size} x {batch_size}); use a shorter sequence or a smaller batch"
            )
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # first sequence index of each shard
        self.B, self.T = batch_size, seq_len
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_sequences)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)

    def _sequence(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        offset = (index - int(self.starts[shard])) * self.T
        return self.shards[shard][offset : offset + self.T + 1]

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        import torch  # here, so that `gpt2 prepare` never loads torch

        step = self.B * self.world_size
        if self.cursor + step > self.num_sequences:  # the rest of the epoch is shorter than a step: next epoch
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        first = self.cursor + self.rank * self.B
        rows = np.stack([self._sequence(int(i)) for i in self._order[first : first + self.B]]).astype(np.int64)
        self.cursor += step
        batch = torch.from_numpy(rows)
        if torch.device(device).type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)
