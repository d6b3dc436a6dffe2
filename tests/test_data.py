"""Token shards, `gpt2 prepare` and the training loader."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2.data import HEADER, PrepareConfig, TokenLoader, is_val, prepare, read_shard, write_shard
from gpt2.errors import GPT2Error


def test_shard_round_trip_and_damage(tmp_path: Path) -> None:
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    write_shard(tmp_path / "a.bin", tokens, vocab_size=50257)
    read, vocab = read_shard(tmp_path / "a.bin")
    assert vocab == 50257 and read.dtype == np.dtype("<u2") and read.tolist() == tokens.tolist()
    assert (tmp_path / "a.bin").stat().st_size == HEADER.size + 2 * len(tokens)
    write_shard(tmp_path / "big.bin", np.array([70000, 1]), vocab_size=100_000)  # > 65,536 tokens: uint32
    assert read_shard(tmp_path / "big.bin")[0].tolist() == [70000, 1]

    raw = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-1])
    with pytest.raises(GPT2Error, match="truncated"):
        read_shard(tmp_path / "cut.bin")
    (tmp_path / "bad.bin").write_bytes(b"XXXX" + raw[4:])
    with pytest.raises(GPT2Error, match="magic"):
        read_shard(tmp_path / "bad.bin")


def test_validation_routing_is_exact_and_spread() -> None:
    for fraction in (0.1, 0.005, 0.25, 1 / 3):
        chosen = [k for k in range(1000) if is_val(k, fraction)]
        assert len(chosen) == int(1000 * fraction)
        assert max(np.diff(chosen)) <= int(1 / fraction) + 1  # spread evenly, not bunched


def write_corpus(folder: Path) -> list[str]:
    """Documents in three formats; returns their texts in the order prepare reads them."""
    folder.mkdir()
    docs = [f"Document {i}: the quick brown fox jumps over the lazy dog. " * (1 + i % 5) for i in range(40)]
    (folder / "a.txt").write_text(docs[0])
    with open(folder / "b.jsonl", "w") as f:
        for d in docs[1:20]:
            f.write(json.dumps({"text": d, "id": 1}) + "\n\n")
    with gzip.open(folder / "c.jsonl.gz", "wt") as f:
        for d in docs[20:30]:
            f.write(json.dumps({"text": d}) + "\n")
    import zstandard

    payload = "".join(json.dumps({"text": d}) + "\n" for d in docs[30:])
    (folder / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload.encode()))
    return docs


def all_tokens(out: Path, split: str) -> list[int]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [t for s in manifest["splits"][split]["shards"] for t in read_shard(out / s["file"])[0].tolist()]


def test_prepare_formats_and_separators(tmp_path: Path, gpt2_tokenizer) -> None:
    docs = write_corpus(tmp_path / "corpus")
    tok_dir = tmp_path / "tok"
    gpt2_tokenizer.save_pretrained(tok_dir)
    m = prepare(PrepareConfig([str(tmp_path / "corpus")], str(tok_dir), str(tmp_path / "out"), 0.0), progress=False)
    assert m["complete"] and m["documents_done"] == 40 and m["splits"]["val"]["tokens"] == 0
    expected = [t for d in docs for t in [gpt2_tokenizer.eot_id, *gpt2_tokenizer.encode(d)]]
    assert all_tokens(tmp_path / "out", "train") == expected
    assert m["tokenizer"]["fingerprint"] == gpt2_tokenizer.fingerprint


def test_prepare_val_split_and_resume_after_interruption(tmp_path: Path, gpt2_tokenizer, monkeypatch) -> None:
    write_corpus(tmp_path / "corpus")
    tok_dir = tmp_path / "tok"
    gpt2_tokenizer.save_pretrained(tok_dir)
    cfg = dict(val_fraction=0.2, shard_tokens=300, piece_tokens=50)
    whole = prepare(PrepareConfig([str(tmp_path / "corpus")], str(tok_dir), str(tmp_path / "whole"), **cfg), False)
    assert len(whole["splits"]["train"]["shards"]) > 2
    n_val = whole["splits"]["val"]["tokens"]
    assert 0.1 < n_val / (n_val + whole["splits"]["train"]["tokens"]) < 0.3

    import gpt2.data

    calls = {"n": 0}
    real = gpt2.data.write_shard

    def crash_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # the process dies between shards
        real(*args, **kwargs)

    monkeypatch.setattr(gpt2.data, "write_shard", crash_after_three)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig([str(tmp_path / "corpus")], str(tok_dir), str(out), **cfg), False)
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(gpt2.data, "write_shard", real)
    resumed = prepare(PrepareConfig([str(tmp_path / "corpus")], str(tok_dir), str(out), **cfg), False)
    for split in ("train", "val"):
        assert all_tokens(out, split) == all_tokens(tmp_path / "whole", split)
        assert resumed["splits"][split]["tokens"] == whole["splits"][split]["tokens"]
    with pytest.raises(GPT2Error, match="other inputs or settings"):
        prepare(PrepareConfig([str(tmp_path / "corpus")], str(tok_dir), str(out), val_fraction=0.5), False)


def test_prepare_knows_a_copied_corpus_and_refuses_a_changed_one(tmp_path: Path, gpt2_tokenizer) -> None:
    write_corpus(tmp_path / "corpus")
    gpt2_tokenizer.save_pretrained(tmp_path / "tok")
    first = prepare(PrepareConfig([str(tmp_path / "corpus")], str(tmp_path / "tok"), str(tmp_path / "out"), 0.0), False)
    assert {e["file"] for e in first["inputs"]} == {"a.txt", "b.jsonl", "c.jsonl.gz", "d.jsonl.zst"}
    shutil.copytree(tmp_path / "corpus", tmp_path / "moved" / "corpus", copy_function=shutil.copy)  # new times
    shutil.copytree(tmp_path / "out", tmp_path / "moved" / "out")
    again = prepare(
        PrepareConfig(
            [str(tmp_path / "moved" / "corpus")], str(tmp_path / "tok"), str(tmp_path / "moved" / "out"), 0.0
        ),
        False,
    )
    assert again["splits"] == first["splits"]
    a = tmp_path / "moved" / "corpus" / "a.txt"
    a.write_text(a.read_text().replace("quick", "QUICK"))  # same size, other bytes
    with pytest.raises(GPT2Error, match="other inputs or settings"):
        prepare(PrepareConfig([str(a.parent)], str(tmp_path / "tok"), str(tmp_path / "moved" / "out"), 0.0), False)


@pytest.mark.slow
def test_prepare_killed_outright_resumes_from_its_last_progress_record(tmp_path: Path, shared_data: Path) -> None:
    """A real SIGKILL, as training's resume test does: progress is recorded every --save-every seconds, so
    the resumed run re-reads only what came after, and the shards hold the same tokens as an uninterrupted run."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text("utf-8")
    scenes = text.split("\n\n")
    with open(tmp_path / "plays.jsonl", "w", encoding="utf-8") as f:
        for copy in range(12):
            f.writelines(json.dumps({"text": f"{copy}: {scene}"}) + "\n" for scene in scenes)
    vocab = str(shared_data / "gpt2-vocab")
    args = ["--input", str(tmp_path / "plays.jsonl"), "--tokenizer", vocab, "--quiet", "--val-fraction", "0.01"]
    run = [sys.executable, "-m", "gpt2", "prepare", *args, "--save-every", "0.2"]
    proc = subprocess.Popen([*run, "--output", str(tmp_path / "killed")], stderr=subprocess.PIPE)
    manifest = tmp_path / "killed" / "manifest.json"
    deadline, done = time.time() + 120, 0
    while proc.poll() is None and time.time() < deadline:
        try:
            done = json.loads(manifest.read_text())["documents_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done > 0:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and 0 < done < 12 * len(scenes), proc.stderr.read().decode()[-2000:]
    assert not json.loads(manifest.read_text())["complete"]
    subprocess.run([*run, "--output", str(tmp_path / "killed")], check=True)
    subprocess.run([*run, "--output", str(tmp_path / "whole"), "--save-every", "1000"], check=True)
    for split in ("train", "val"):
        assert all_tokens(tmp_path / "killed", split) == all_tokens(tmp_path / "whole", split)
    assert len(json.loads(manifest.read_text())["splits"]["train"]["shards"]) > 1  # progress was recorded


def test_prepare_bad_input(tmp_path: Path, gpt2_tokenizer) -> None:
    tok_dir = tmp_path / "tok"
    gpt2_tokenizer.save_pretrained(tok_dir)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    (tmp_path / "empty" / "y.jsonl").write_text("\n")
    with pytest.raises(GPT2Error, match="empty"):
        prepare(PrepareConfig([str(tmp_path / "empty")], str(tok_dir), str(tmp_path / "o1"), 0.0), False)
    with pytest.raises(GPT2Error, match="no such file"):
        prepare(PrepareConfig([str(tmp_path / "missing")], str(tok_dir), str(tmp_path / "o2"), 0.0), False)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(GPT2Error, match=r"bad.jsonl:2: no string field 'text'"):
        prepare(PrepareConfig([str(tmp_path / "bad.jsonl")], str(tok_dir), str(tmp_path / "o3"), 0.0), False)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"invalid UTF-8 in 1 byte of 1 document \(in .*latin1.txt\)"):
        prepare(PrepareConfig([str(tmp_path / "latin1.txt")], str(tok_dir), str(tmp_path / "o4"), 0.0), False)
    assert gpt2_tokenizer.decode(all_tokens(tmp_path / "o4", "train")) == "<|endoftext|>caf\ufffd au lait"


@pytest.fixture()
def prepared(tmp_path: Path, gpt2_tokenizer) -> Path:
    write_corpus(tmp_path / "corpus")
    gpt2_tokenizer.save_pretrained(tmp_path / "tok")
    cfg = PrepareConfig([str(tmp_path / "corpus")], str(tmp_path / "tok"), str(tmp_path / "out"), 0.1, 400)
    prepare(cfg, progress=False)
    return tmp_path / "out"


def test_loader_windows_shift_and_resume(prepared: Path) -> None:
    loader = TokenLoader(prepared, "train", batch_size=3, seq_len=16, seed=1)
    stream = all_tokens(prepared, "train")
    x, y = loader.next_batch()
    assert x.shape == y.shape == (3, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    text = " ".join(map(str, stream))
    for row in range(3):  # every row is a real window of the shards
        assert " ".join(map(str, x[row].tolist() + y[row, -1:].tolist())) in text
    for _ in range(5):
        loader.next_batch()
    state = loader.state_dict()
    ahead = [loader.next_batch()[0] for _ in range(40)]  # crosses an epoch boundary
    again = TokenLoader(prepared, "train", batch_size=3, seq_len=16, seed=1)
    again.load_state_dict(state)
    assert all((a == again.next_batch()[0]).all() for a in ahead)
    assert loader.epoch >= 1


def test_loader_ranks_read_disjoint_blocks_equal_to_accumulation(prepared: Path) -> None:
    single = TokenLoader(prepared, "train", batch_size=2, seq_len=8, seed=3)
    ranks = [TokenLoader(prepared, "train", batch_size=2, seq_len=8, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        a, b = single.next_batch()[0], single.next_batch()[0]  # one step of 2 accumulation micro-steps
        r0, r1 = ranks[0].next_batch()[0], ranks[1].next_batch()[0]
        assert (a == r0).all() and (b == r1).all()


def test_loader_errors(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(GPT2Error, match="fewer than one batch"):
        TokenLoader(prepared, "val", batch_size=1000, seq_len=64)
    with pytest.raises(GPT2Error, match="not a prepared data folder"):
        TokenLoader(tmp_path, "train", batch_size=1, seq_len=8)


def test_compressed_text_files_in_folders(tmp_path: Path, gpt2_tokenizer) -> None:
    import bz2

    (tmp_path / "c").mkdir()
    with gzip.open(tmp_path / "c" / "a.txt.gz", "wt") as f:
        f.write("first document")
    (tmp_path / "c" / "b.txt.bz2").write_bytes(bz2.compress(b"second document"))
    gpt2_tokenizer.save_pretrained(tmp_path / "tok")
    m = prepare(PrepareConfig([str(tmp_path / "c")], str(tmp_path / "tok"), str(tmp_path / "o"), 0.0), False)
    assert m["documents_done"] == 2
    assert gpt2_tokenizer.decode(all_tokens(tmp_path / "o", "train")).split("<|endoftext|>")[1:] == [
        "first document",
        "second document",
    ]
    assert (tmp_path / "o" / "manifest.json").stat().st_mode & 0o044  # readable by others, as files usually are


def test_prepare_on_a_full_disk_is_one_line(tmp_path: Path, shared_data: Path, small_disk) -> None:
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog " * 40_000, "utf-8")
    disk = small_disk("128k")
    tok = ["--tokenizer", str(shared_data / "gpt2-vocab")]
    proc = subprocess.run(
        [sys.executable, "-m", "gpt2", "prepare", "--input", str(tmp_path / "corpus.txt"), *tok, "--output",
         str(disk / "data"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "the disk is full" in proc.stderr and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
