"""GPT-2's tokenizer, held to two oracles: tiktoken's `gpt2` encoding built from the same two files (its pattern
and loader, not ours), and Hugging Face transformers' GPT2Tokenizer reading our saved model folders."""

from __future__ import annotations

import bz2
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2.errors import GPT2Error
from gpt2.tokenizer import EOT, ReferenceBPE, Tokenizer, bytes_to_token, clean_text, token_to_bytes

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tiktoken_gpt2(vocab_bpe: Path, encoder_json: Path):
    """tiktoken's own `gpt2` encoding (tiktoken_ext.openai_public.gpt2) with local files instead of URLs."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken caches files by path name; a reused tmp path would go stale
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return tiktoken.Encoding(
        "gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: len(ranks)}
    )


@pytest.fixture(scope="module")
def oracle(shared_data: Path):
    return tiktoken_gpt2(shared_data / "gpt2-vocab" / "vocab.bpe", shared_data / "gpt2-vocab" / "encoder.json")


@pytest.fixture(scope="module")
def shared_texts(shared_data: Path) -> dict[str, str]:
    """Every file of the shared data folder as text (hellaswag decompressed; invalid UTF-8 replaced)."""
    texts = {}
    for path in sorted(p for p in shared_data.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if path.suffix == ".bz2":
            raw = bz2.decompress(raw)
        texts[str(path.relative_to(shared_data))] = raw.decode("utf-8", errors="replace")
    return texts


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


# ------------------------------------------------------------------------------------------------ exactness
def test_published_ids(gpt2_tokenizer: Tokenizer) -> None:
    # The examples in transformers' GPT2Tokenizer documentation.
    assert gpt2_tokenizer.encode("Hello world") == [15496, 995]
    assert gpt2_tokenizer.encode(" Hello world") == [18435, 995]
    assert gpt2_tokenizer.vocab_size == 50257 and gpt2_tokenizer.eot_id == 50256 and gpt2_tokenizer.name == "gpt2"


def test_every_shared_file_matches_tiktoken(gpt2_tokenizer: Tokenizer, oracle, shared_texts: dict[str, str]) -> None:
    assert len(shared_texts) >= 18 and "hellaswag/hellaswag_val_full.txt.bz2" in shared_texts
    expected = {}
    for name, text in shared_texts.items():
        ours, expected[name] = gpt2_tokenizer.encode_ordinary(text), oracle.encode_ordinary(text)
        assert ours == expected[name], f"{name}: first difference at token {first_difference(ours, expected[name])}"
        assert gpt2_tokenizer.decode(ours) == text, name
    small = [name for name, text in shared_texts.items() if len(text) < 1_000_000]
    batch = gpt2_tokenizer.encode_batch([shared_texts[name] for name in small], disallowed_special=())
    assert batch == [expected[name] for name in small]


def test_reference_path_matches_on_shared_files(
    gpt2_tokenizer: Tokenizer, oracle, shared_texts: dict[str, str]
) -> None:
    # A large slice of each file through the pure-Python path (the whole files through it would take minutes).
    for name, text in shared_texts.items():
        part = text[:60_000] + text[-10_000:]
        ours, theirs = gpt2_tokenizer.encode_reference(part, disallowed_special=()), oracle.encode_ordinary(part)
        assert ours == theirs, f"{name}: first difference at token {first_difference(ours, theirs)}"


EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🏳️‍🌈", "🤖", "✅", "🧑🏿‍🚀", "©"]
fragments = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(EMOJI + [" ", "a", "é"]), max_size=12).map("".join),
    st.text(st.characters(categories=["Mn", "Mc", "Me", "Ll", "Lo"]), max_size=20),  # combining marks
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=20),  # controls, odd spaces
    st.builds(
        lambda c, n: c * n,
        st.sampled_from([" ", "0", "7", "\n", "\t", "\r\n", "'", " '", "\u3000"]),
        st.integers(0, 300),
    ),  # fmt: skip
    st.sampled_from(["'s", "'ll", "'VE", "don't", "I'm", "\r\n\r\n", " \n ", "x  \ny", "1,000.5", "$12"]),
)
texts = st.lists(fragments, max_size=8).map("".join)


@HYPOTHESIS
@given(text=texts)
def test_generated_text_matches_tiktoken_and_reference(gpt2_tokenizer: Tokenizer, oracle, text: str) -> None:
    ours = gpt2_tokenizer.encode(text, disallowed_special=())
    assert ours == oracle.encode_ordinary(text)
    assert ours == gpt2_tokenizer.encode_reference(text, disallowed_special=())
    assert gpt2_tokenizer.decode(ours) == text
    assert gpt2_tokenizer.decode_bytes(ours) == text.encode("utf-8")


@HYPOTHESIS
@given(text=st.text(st.characters(categories=["Cs", "Ll", "Zs", "So", "Nd"]), max_size=20))
def test_surrogates_are_repaired_as_tiktoken_does(gpt2_tokenizer: Tokenizer, oracle, text: str) -> None:
    # UTF-8 cannot encode lone surrogates: tiktoken passes text through UTF-16, joining pairs and replacing the
    # rest with U+FFFD, and so do we (fast and reference path alike); the round trip gives that repaired text.
    ours = gpt2_tokenizer.encode(text)
    assert ours == oracle.encode(text) == gpt2_tokenizer.encode_reference(text)
    assert gpt2_tokenizer.decode(ours) == clean_text(text)
    clean_text(text).encode("utf-8")  # always encodable


def test_surrogate_examples(gpt2_tokenizer: Tokenizer) -> None:
    assert clean_text("a\ud800b") == "a\ufffdb"
    assert clean_text("\ud83d\ude00") == "😀"  # a pair written as two code points is the character
    assert gpt2_tokenizer.encode("\ud83d\ude00") == gpt2_tokenizer.encode("😀")


@HYPOTHESIS
@given(ids=st.lists(st.integers(0, 50256), max_size=40))
def test_decode_bytes_of_any_ids_is_exact(gpt2_tokenizer: Tokenizer, oracle, ids: list[int]) -> None:
    raw = gpt2_tokenizer.decode_bytes(ids)
    assert raw == b"".join(oracle.decode_single_token_bytes(i) for i in ids)
    assert gpt2_tokenizer.decode(ids) == raw.decode("utf-8", errors="replace")  # never raises on bad UTF-8


def test_reference_bpe_is_gpt2s_algorithm() -> None:
    # Lowest-ranked pair first, merged everywhere left to right; a pair that is not a merge never merges.
    merges = [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")]
    ranks = {bytes([b]): b for b in range(256)} | {b"bc": 256, b"ab": 257, b"abc": 258}
    ref = ReferenceBPE(merges, ranks, eot_id=259)
    assert ref.bpe(b"abcab") == [b"abc", b"ab"]
    assert ref.bpe(b"bbcc") == [b"b", b"bc", b"c"]
    assert ref.bpe(b"") == [] and ref.bpe(b"x") == [b"x"]


# ------------------------------------------------------------------------------------------------ special token
def test_special_token_only_when_allowed(gpt2_tokenizer: Tokenizer, oracle) -> None:
    text = f"a{EOT}b"
    for encode in (gpt2_tokenizer.encode, gpt2_tokenizer.encode_reference):
        with pytest.raises(GPT2Error, match="special token"):
            encode(text)
        assert encode(text, allowed_special="all") == oracle.encode(text, allowed_special="all")
        assert encode(text, allowed_special={EOT}).count(50256) == 1
        assert encode(text, disallowed_special=()) == oracle.encode_ordinary(text)
    assert gpt2_tokenizer.encode_ordinary(EOT) == oracle.encode_ordinary(EOT) and 50256 not in oracle.encode_ordinary(
        EOT
    )
    with pytest.raises(GPT2Error, match="special token"):
        gpt2_tokenizer.encode_batch(["fine", text])
    assert gpt2_tokenizer.encode_batch(["fine", text], allowed_special="all")[1] == [64, 50256, 65]
    assert gpt2_tokenizer.decode([50256]) == EOT


# ------------------------------------------------------------------------------------------------ files
def test_save_and_load_both_layouts(gpt2_tokenizer: Tokenizer, shared_data: Path, tmp_path: Path) -> None:
    gpt2_tokenizer.save_pretrained(tmp_path / "openai", names="openai")
    gpt2_tokenizer.save_pretrained(tmp_path / "hf")
    original = shared_data / "gpt2-vocab"
    assert (tmp_path / "openai" / "vocab.bpe").read_bytes() == (original / "vocab.bpe").read_bytes()
    assert json.loads((tmp_path / "hf" / "vocab.json").read_text("utf-8")) == json.loads(
        (original / "encoder.json").read_text("utf-8")
    )
    for folder in ("openai", "hf"):
        loaded = Tokenizer.from_pretrained(tmp_path / folder)
        assert loaded.ranks == gpt2_tokenizer.ranks and loaded.merges == gpt2_tokenizer.merges
        assert loaded.fingerprint == gpt2_tokenizer.fingerprint
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["openai", "hf", "encoder.json", "vocab.bpe", "vocab.json", "merges.txt"]
    )  # no temp files left


def test_token_spelling_round_trips() -> None:
    every_byte = bytes(range(256))
    assert token_to_bytes(bytes_to_token(every_byte)) == every_byte
    assert bytes_to_token(b" the") == "Ġthe"
    with pytest.raises(GPT2Error, match="byte alphabet"):
        token_to_bytes("a b")


def test_model_folder_is_read_by_transformers(
    gpt2_tokenizer: Tokenizer, shared_texts: dict[str, str], tmp_path: Path
) -> None:
    from transformers import GPT2Tokenizer

    from gpt2.model import GPT, GPTConfig

    model = GPT(GPTConfig.from_name("gpt2-tiny", n_layer=1, n_head=2, n_embd=32, n_positions=64))
    model.save_pretrained(tmp_path, tokenizer=gpt2_tokenizer)
    assert Tokenizer.from_pretrained(tmp_path).fingerprint == gpt2_tokenizer.fingerprint
    hf = GPT2Tokenizer.from_pretrained(str(tmp_path))
    texts = shared_texts
    sample = [
        texts["wikitext-2-raw/wiki.test.raw"][:100_000],
        texts["wmt14-en-fr/newstest2014-fren-ref.fr.sgm"][:50_000],
    ]
    sample.append("Ünïcödé — emoji 👍🏽 and\r\ntabs\t\t  and    spaces 12345678 don't")
    for text in sample:
        assert hf(text)["input_ids"] == gpt2_tokenizer.encode(text)
    assert hf.eos_token_id == gpt2_tokenizer.eot_id


def test_bad_tokenizer_files_are_named(gpt2_tokenizer: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(GPT2Error, match="no such tokenizer folder"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GPT2Error, match="holds neither"):
        Tokenizer.from_pretrained(tmp_path / "empty")

    small = Tokenizer(gpt2_tokenizer.merges[:50])
    small.save_pretrained(tmp_path / "t", names="openai")
    vocab, merges = tmp_path / "t" / "encoder.json", tmp_path / "t" / "vocab.bpe"
    good_vocab, good_merges = vocab.read_text("utf-8"), merges.read_text("utf-8")
    merges.write_text(good_merges.replace("Ġ t\n", "Ġ t x\n"), "utf-8")
    with pytest.raises(GPT2Error, match=r"vocab\.bpe:2: expected two tokens"):
        Tokenizer.from_pretrained(tmp_path / "t")
    lines = good_merges.splitlines(keepends=True)
    merges.write_text(lines[0] + lines[2] + lines[1] + "".join(lines[3:]), "utf-8")  # merge order swapped
    with pytest.raises(GPT2Error, match="does not match"):
        Tokenizer.from_pretrained(tmp_path / "t")
    merges.write_text(good_merges, "utf-8")
    vocab.write_text(good_vocab.replace('"Ġt"', '"G t"'), "utf-8")
    with pytest.raises(GPT2Error, match="outside GPT-2's byte alphabet"):
        Tokenizer.from_pretrained(tmp_path / "t")
    vocab.write_text(json.dumps({**json.loads(good_vocab), "extra": 999}), "utf-8")
    with pytest.raises(GPT2Error, match="expected 307 tokens"):
        Tokenizer.from_pretrained(tmp_path / "t")
    vocab.write_text("{not json", "utf-8")
    with pytest.raises(GPT2Error, match="cannot read tokenizer files"):
        Tokenizer.from_pretrained(tmp_path / "t")
    with pytest.raises(GPT2Error, match="uses a token that no earlier merge made"):
        Tokenizer([(b"ab", b"c")])


def test_bad_ids_are_named(gpt2_tokenizer: Tokenizer) -> None:
    for bad in ([50257], [1, -1], [10**30]):
        with pytest.raises(GPT2Error, match="outside the vocabulary"):
            gpt2_tokenizer.decode_bytes(bad)


def test_gpt2_by_name_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("GPT2_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(GPT2Error, match="could not download .*encoder.json"):
        Tokenizer.from_pretrained("gpt2")


# ------------------------------------------------------------------------------------------------ command line
def test_cli_encode_decode(shared_data: Path, capsysbinary: pytest.CaptureFixture, monkeypatch) -> None:
    import io
    import sys

    from gpt2.cli import main

    vocab = str(shared_data / "gpt2-vocab")
    main(["tokenizer", "encode", "--tokenizer", vocab, "--text", "Hello world"])
    assert capsysbinary.readouterr().out == b"15496 995\n"
    main(["tokenizer", "decode", "--tokenizer", vocab, "15496", "995"])
    assert capsysbinary.readouterr().out == b"Hello world"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"x{EOT}\n"))
    main(["tokenizer", "encode", "--tokenizer", vocab, "--allow-special"])
    assert capsysbinary.readouterr().out == b"87 50256 198\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("87, 50256\n198"))
    main(["tokenizer", "decode", "--tokenizer", vocab])
    assert capsysbinary.readouterr().out == f"x{EOT}\n".encode()
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "decode", "--tokenizer", vocab, "12", "x"])
    assert e.value.code == 1 and b"error: expected token ids (integers), got 'x'" in capsysbinary.readouterr().err
