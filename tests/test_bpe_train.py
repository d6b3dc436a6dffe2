"""BPE training: the incremental merge loop against the naive re-count, chunked counting against whole-text
counting, and trained vocabularies read by tiktoken, transformers and our own loader."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokenizer import tiktoken_gpt2

import gpt2.io
from gpt2 import bpe_train
from gpt2.bpe_train import Corpus, count_corpus, count_words, cut_chunks, initial_pairs, learn_merges, train_bpe
from gpt2.errors import GPT2Error
from gpt2.tokenizer import EOT, Tokenizer


def pieces(text: str) -> list[str]:
    """GPT-2's pre-tokenization, by tiktoken's spelling of the pattern (not ours)."""
    from tiktoken_ext.openai_public import r50k_pat_str

    return regex.findall(r50k_pat_str, text)


def naive_merges(texts: list[str], n: int) -> list[tuple[bytes, bytes]]:
    """BPE training the slow, obvious way: re-count every pair of every word for every merge."""
    words: Counter[tuple[bytes, ...]] = Counter()
    for text in texts:
        for part in text.split(EOT):
            words.update(tuple(bytes([b]) for b in p.encode()) for p in pieces(part))
    merges = []
    for _ in range(n):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # the stated tie rule: left bytes, then right bytes
        merges.append(best)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@pytest.fixture(scope="module")
def real_text(shared_data: Path) -> str:
    shakespeare = (shared_data / "tinyshakespeare" / "input.txt").read_text("utf-8")
    wiki = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8")
    french = (shared_data / "wmt14-en-fr" / "newstest2014-fren-ref.fr.sgm").read_text("utf-8")
    return shakespeare[:150_000] + wiki[:150_000] + french[:100_000]


# ------------------------------------------------------------------------------------------------ the algorithm
@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.text(alphabet="aab  bc\n'sé1", max_size=60), max_size=6), n=st.integers(0, 40))
def test_incremental_merges_equal_naive_recount(texts: list[str], n: int) -> None:
    assert learn_merges(count_words(texts), n) == naive_merges(texts, n)


def test_incremental_merges_equal_naive_recount_on_real_text(real_text: str) -> None:
    text = real_text[:20_000] + real_text[150_000:160_000] + real_text[-10_000:]
    assert learn_merges(count_words([text]), 150) == naive_merges([text], 150)


def test_vectorized_pair_index_equals_the_loop(real_text: str, monkeypatch) -> None:
    word_counts = count_words([real_text[:100_000] + real_text[-50_000:] + " aaaa abab xx 😀😀 ab"])
    words = [w for w in word_counts if len(w) > 1]
    counts = [word_counts[w] for w in words]
    loop_counts, loop_where = initial_pairs(words, counts, vectorized=False)
    vec_counts, vec_where = initial_pairs(words, counts, vectorized=True)
    assert dict(vec_counts) == dict(loop_counts)
    assert {p: list(ids) for p, ids in vec_where.items()} == {p: list(ids) for p, ids in loop_where.items()}
    assert all(list(ids) == sorted(set(ids)) for ids in vec_where.values())  # each word once, in order
    assert initial_pairs(["ab"], [3], vectorized=True)[0] == {"ab": 3}
    assert initial_pairs([], [], vectorized=True) == ({}, {})
    monkeypatch.setattr(bpe_train, "VECTOR_PAIRS_CHARS", 1 << 60)
    by_loop = learn_merges(word_counts, 300)
    monkeypatch.setattr(bpe_train, "VECTOR_PAIRS_CHARS", 0)
    assert learn_merges(word_counts, 300) == by_loop


def test_quiet_training_does_not_import_tqdm(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text to learn from, " * 50, "utf-8")
    script = (
        "import sys; from pathlib import Path; from gpt2.bpe_train import train_bpe; "
        f"train_bpe([Path({str(tmp_path / 'a.txt')!r})], 270, workers=2); print('tqdm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(st.sampled_from([*"ab1 \n\t\r.'é\u3000", "  ", "\n\n", " \n"]), max_size=150).map("".join),
    size=st.integers(1, 40),
)
def test_chunks_cut_only_where_pieces_end(text: str, size: int) -> None:
    chunks = list(cut_chunks([text[: len(text) // 3], text[len(text) // 3 :]], size))
    assert "".join(chunks) == text
    assert [p for c in chunks for p in pieces(c)] == pieces(text)


def test_text_without_cut_points_is_read_on_then_cut_hard(monkeypatch) -> None:
    blob = "x" * 500 + " tail text\nmore"
    assert list(cut_chunks([blob[:100], blob[100:300], blob[300:]], size=10)) == [
        blob[:500],
        " tail text",
        "\nmore",
    ]
    monkeypatch.setattr(bpe_train, "MAX_CHUNK_CHARS", 200)
    chunks = list(cut_chunks([blob[:100], blob[100:300], blob[300:]], size=10))
    assert chunks == [blob[:300], blob[300:500], " tail text", "\nmore"]  # 300 > 200 chars with no cut: cut there


def test_counting_in_parallel_and_in_pieces_equals_whole_text(real_text: str, tmp_path: Path, monkeypatch) -> None:
    text = real_text + "déjà vu 😀 € " * 2000
    expected = count_words([text])
    assert sum(expected.values()) == len(pieces(text))
    (tmp_path / "a.txt").write_text(text, "utf-8")
    monkeypatch.setattr(gpt2.io, "PIECE_BYTES", 1021)  # many reads end inside multi-byte characters
    corpus = Corpus([tmp_path / "a.txt"])
    assert count_corpus(corpus, workers=2, progress=False, size=30_000) == expected
    assert corpus.reader.invalid_bytes == 0
    assert count_corpus(Corpus([text]), workers=1, progress=False, size=7_000) == expected


def test_endoftext_separates_documents() -> None:
    tok = train_bpe([f"ab{EOT}ab{EOT}ab"], 258)
    assert tok.merges == [(b"a", b"b")]  # nothing learned from the special token's own characters
    assert count_words([f"x{EOT}y"]) == {"x": 1, "y": 1}


def test_training_is_deterministic(real_text: str, tmp_path: Path) -> None:
    docs = real_text.split("\n\n")
    one = train_bpe(docs, 700, workers=1)
    assert train_bpe(docs[::-1], 700, workers=2).merges == one.merges  # order of documents and workers: no matter
    (tmp_path / "a.txt").write_text(real_text, "utf-8")
    assert train_bpe(tmp_path / "a.txt", 700).merges[:100] == one.merges[:100]  # one document: nearly the same


# ------------------------------------------------------------------------------------------------ interchange
def hf_tokenizer_from_files(vocab: Path, merges: Path):
    import transformers
    from transformers import GPT2Tokenizer

    if int(transformers.__version__.split(".")[0]) >= 5:
        return GPT2Tokenizer(vocab=str(vocab), merges=str(merges))
    return GPT2Tokenizer(vocab_file=str(vocab), merges_file=str(merges))


def test_trained_files_read_by_tiktoken_transformers_and_us(real_text: str, tmp_path: Path, capsys) -> None:
    from gpt2.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(real_text[:300_000], "utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(real_text[300_000:])
    out = tmp_path / "vocab"
    inputs = [str(corpus), str(tmp_path / "b.txt.gz")]  # a folder, and a compressed file named explicitly
    main(["tokenizer", "train", "--input", *inputs, "--vocab-size", "2000", "--output", str(out), "--quiet"])
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "vocab.bpe"]
    assert "2,000 tokens" in capsys.readouterr().out
    encoder = json.loads((out / "encoder.json").read_text("utf-8"))
    assert len(encoder) == 2000 and encoder[EOT] == 1999

    ours = Tokenizer.from_pretrained(out)
    assert ours.vocab_size == 2000
    assert ours.merges == train_bpe([real_text[:300_000], real_text[300_000:]], 2000).merges
    tiktoken_enc = tiktoken_gpt2(out / "vocab.bpe", out / "encoder.json")
    hf = hf_tokenizer_from_files(out / "encoder.json", out / "vocab.bpe")
    held_out = "Ünïcödé — emoji 👍🏽\r\n\t  12345 don't " + real_text[-30_000:] + real_text[:5_000].upper()
    ids = ours.encode(held_out)
    assert ids == tiktoken_enc.encode(held_out)
    assert ids == hf(held_out)["input_ids"]
    assert ids == ours.encode_reference(held_out)
    assert ours.decode(ids) == held_out
    assert len(held_out.encode()) / len(ids) > 2.0  # real merges were learned (bytes alone give 1.0)


# ------------------------------------------------------------------------------------------------ bad input
def test_vocab_size_limits(tmp_path: Path) -> None:
    for bad in (256, 0, -5, 2.5, "300", True):
        with pytest.raises(GPT2Error, match="vocab size must be an integer from 257"):
            train_bpe(["some text"], bad)
    assert train_bpe(["ab"], 257).merges == []  # bytes and <|endoftext|> only
    with pytest.raises(GPT2Error, match=r"more than this corpus supports \(at most 262 tokens"):
        train_bpe(["abc abc"], 300)  # words 'abc' and ' abc': at most 2 + 3 merges
    with pytest.raises(GPT2Error, match=r"more than this corpus supports \(260 tokens"):
        train_bpe(["aaaa aaaa"], 262)  # the bound allows 7 merges; training finds 3


def test_empty_and_missing_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    for empty in ([], [""], [tmp_path / "empty.txt"], [EOT]):
        with pytest.raises(GPT2Error, match="holds no text"):
            train_bpe(empty, 300)
    with pytest.raises(GPT2Error, match="missing.txt: no such file or folder"):
        train_bpe([tmp_path / "missing.txt"], 300)
    with pytest.raises(GPT2Error, match="takes texts"):
        train_bpe([b"bytes"], 300)  # type: ignore[list-item]


def test_binary_and_invalid_utf8(tmp_path: Path, shared_data: Path) -> None:
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(GPT2Error, match=r"image.txt: looks like a binary file \(a NUL byte at offset 8\)"):
        train_bpe([tmp_path / "image.txt"], 260)
    (tmp_path / "latin1.txt").write_bytes("café naïve déjà vu café".encode("latin-1"))
    with pytest.warns(
        UserWarning, match=r"invalid UTF-8 in 5 bytes of 1 document \(in .*latin1.txt\) was replaced with U\+FFFD"
    ):
        tok = train_bpe([tmp_path / "latin1.txt"], 260)
    assert (b"\xef\xbf", b"\xbd") in tok.merges or (b"\xbf", b"\xbd") in tok.merges  # U+FFFD, learned from
    (tmp_path / "docs.jsonl").write_bytes(b'{"body": "caf\xe9", "text": "x"}\n{"body": "good"}\n')
    with pytest.raises(GPT2Error, match=r"docs.jsonl:2: no string field 'text'"):
        train_bpe([tmp_path / "docs.jsonl"], 258)
    with pytest.warns(UserWarning, match=r"invalid UTF-8 in 1 byte of 1 document \(in .*docs.jsonl\)"):
        assert train_bpe([tmp_path / "docs.jsonl"], 258, text_field="body").vocab_size == 258
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean UTF-8 file gives no warning
        (tmp_path / "good.txt").write_bytes(bz2.decompress(bz2.compress("café ".encode() * 50)))
        train_bpe([tmp_path / "good.txt"], 260)


def test_cli_failure_leaves_no_output(tmp_path: Path, capsys) -> None:
    from gpt2.cli import main

    (tmp_path / "small.txt").write_text("tiny corpus", "utf-8")
    for vocab in ("100", "5000"):
        with pytest.raises(SystemExit) as e:
            main(["tokenizer", "train", "--input", str(tmp_path / "small.txt"), "--vocab-size", vocab,
                  "--output", str(tmp_path / "out"), "--quiet"])  # fmt: skip
        assert e.value.code == 1 and "error: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
