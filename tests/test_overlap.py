"""gpt2.analysis.bloom, gpt2.analysis.overlap and `gpt2 overlap`: the paper's 8-gram Bloom filters (Section 4),
checked against an exact Python set on real text."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import pytest

pytest.importorskip("rbloom")

from gpt2.analysis import bloom  # noqa: E402
from gpt2.analysis.bloom import (  # noqa: E402
    Hasher,
    build_filter,
    load_filter,
    measure_false_positives,
    ngrams,
    normalize,
)
from gpt2.analysis.overlap import Unit, exact_ngrams, measure_overlap, units_of  # noqa: E402
from gpt2.cli import main  # noqa: E402
from gpt2.errors import GPT2Error  # noqa: E402

FP = 20_000  # random 8-grams per build in tests; the command's default is the paper's 1M


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path) -> Path:
    return shared_data / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def ts_filter(tmp_path_factory: pytest.TempPathFactory, shakespeare: Path) -> Path:
    out = tmp_path_factory.mktemp("filter") / "ts.bloom"
    build_filter([shakespeare], out, workers=1, fp_samples=FP)
    return out


def test_normalisation_is_the_papers() -> None:
    # lower-cased alphanumeric words; punctuation splits words, so raw and tokenised copies agree
    assert normalize("Don't STOP—me now!  É2e_x") == ["don", "t", "stop", "me", "now", "é2e", "x"]
    assert normalize("don 't stop") == normalize("don't stop")
    assert normalize("well @-@ known") == normalize("well-known")
    assert ngrams(list("abcdefghi")) == ["a b c d e f g h", "b c d e f g h i"]


def test_hashes_are_those_of_each_window() -> None:
    words = normalize("one two three four five six seven eight nine ten eleven")
    h = Hasher().hashes(words)
    assert len(h) == len(words) - 7
    for i in range(len(h)):
        assert h[i] == Hasher().hashes(words[i : i + 8])[0]
    assert len(set(h.tolist())) == len(h)
    assert Hasher().hashes(words[:7]).size == 0


def test_filter_and_exact_agree_on_real_text(ts_filter: Path, shakespeare: Path, shared_data: Path, tmp_path: Path):
    text = shakespeare.read_text("utf-8")
    (tmp_path / "slice.txt").write_text("\n".join(text.splitlines()[8000:10000]), "utf-8")  # whole lines
    tests = [
        shared_data / "wikitext-2-raw" / "wiki.test.raw",
        shared_data / "lambada" / "lambada_test.jsonl",
        tmp_path / "slice.txt",
    ]
    filt = load_filter(ts_filter)
    exact = exact_ngrams([shakespeare])
    assert filt.header["ngrams"] == len(ngrams(normalize(text)))
    assert abs(filt.header["approx_distinct_ngrams"] - len(exact)) / len(exact) < 0.01
    results = measure_overlap(tests, filt, exact)
    wiki, lambada, own = results
    assert (wiki.kind, len(wiki.units)) == ("wikitext", 60)  # WikiText-2's test articles
    assert (lambada.kind, len(lambada.units)) == ("lambada", 5153)  # LAMBADA's test passages
    for r in results:
        assert r.hits == r.exact_hits, r.file  # no false positive at 1e-8
        assert [u["hits"] for u in r.units] == [u["exact_hits"] for u in r.units]
    assert wiki.overlap < 0.001 and lambada.overlap < 0.001
    assert own.overlap == 1.0 and own.ngrams > 5000
    d = own.to_dict(top=1)
    assert d["top"][0]["overlap"] == 1.0 and d["exact_overlap"] == 1.0 and d["filter_false_positives"] == 0


def test_a_filter_built_twice_is_byte_identical(ts_filter: Path, shakespeare: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.bloom"
    build_filter([shakespeare], again, workers=1, fp_samples=FP)
    assert again.read_bytes() == ts_filter.read_bytes()


def test_pieces_workers_and_cuts_change_nothing(tmp_path: Path, shakespeare: Path, monkeypatch) -> None:
    # one document cut into pieces of ~50 characters (some under 7 words), and the same text as JSON Lines
    # records: the filter holds exactly the 8-grams of each document, however it was cut or spread over workers
    text = shakespeare.read_text("utf-8")[:30_000]
    (tmp_path / "a.txt").write_text(text, "utf-8")
    whole = tmp_path / "whole.bloom"
    build_filter([tmp_path / "a.txt"], whole, workers=1, fp_samples=FP)
    monkeypatch.setattr(bloom, "_PIECE_CHARS", 50)
    cut = tmp_path / "cut.bloom"
    build_filter([tmp_path / "a.txt"], cut, workers=2, fp_samples=FP)
    assert cut.read_bytes() == whole.read_bytes()
    assert load_filter(cut).header["ngrams"] == len(ngrams(normalize(text)))


# A format-1 filter file of DICKENS (fp rate 1e-4, 1,000 samples) as `gpt2 overlap build` wrote it, kept as bytes
DICKENS = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.\n"
)
OLD_FILTER = base64.b64decode(
    "Z3B0MiA4LWdyYW0gYmxvb20KRwIAAAAAAAB7ImFwcHJveF9kaXN0aW5jdF9uZ3JhbXMiOjE4LCJieXRlc19wZXJfbmdyYW0iOjIuODgyMzUyOTQx"
    "MTc2NDcwNiwiY29ycHVzIjpbeyJieXRlcyI6MTEwLCJwYXRoIjoiL3RtcC9vbGQvZGlja2Vucy50eHQifV0sImRvY3VtZW50cyI6MSwiZXhwZWN0"
    "ZWRfZmFsc2VfcG9zaXRpdmVfcmF0ZSI6MC4wMDAxMzIxMDg2NjU3OTk3OTkwMywiZmFsc2VfcG9zaXRpdmVfcmF0ZSI6MC4wMDAxLCJmb3JtYXQi"
    "OjEsImhhc2giOiJncHQyLThncmFtLXYxOiBrZXllZCBCTEFLRTJiLTY0IHBlciB3b3JkLCBzcGxpdG1peDY0IGNoYWluIG92ZXIgOCB3b3JkcyIs"
    "Im1lYXN1cmVkX2ZhbHNlX3Bvc2l0aXZlcyI6eyJoaXRzIjowLCJyYXRlIjowLjAsInNhbXBsZXMiOjEwMDAsInNlZWQiOjIwMTkwMjE0LCJ1cHBl"
    "cl85NSI6MC4wMDN9LCJuIjo4LCJuZ3JhbXMiOjE3LCJub3JtYWxpemF0aW9uIjoibG93ZXItY2FzZWQ7IGV2ZXJ5IGNoYXJhY3RlciBidXQgbGV0"
    "dGVycyBhbmQgZGlnaXRzIGEgd29yZCBib3VuZGFyeSAoUmFkZm9yZCBldCBhbC4gMjAxOSwgU2VjdGlvbiA0KSIsInNpemVfaW5fYml0cyI6MzI4"
    "LCJ0ZXh0X2ZpZWxkIjoidGV4dCJ9DQAAAAAAAADBEaEh6ibCTuXSLbi+tOJv4FfWSBsps9IscXX8/xtK+DrlXahUI2jii6Npcy+6IVPloj2qLtnR"
    "1ulnWMS5I5tll4T6bENJB8Q4"
)


def test_a_filter_written_before_loads_and_is_built_again_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "old.bloom").write_bytes(OLD_FILTER)
    old = load_filter(tmp_path / "old.bloom")
    words = normalize(DICKENS)
    assert old.header["ngrams"] == len(words) - 7 and old.contains(words).all()
    assert not old.contains(normalize("the worst of times it was the best of all")).any()
    (tmp_path / "dickens.txt").write_text(DICKENS, "utf-8")
    build_filter([tmp_path / "dickens.txt"], tmp_path / "new.bloom", fp_rate=1e-4, workers=1, fp_samples=1000)
    new = load_filter(tmp_path / "new.bloom")
    assert new.header["corpus"] != old.header["corpus"]  # the only difference: where the corpus was
    assert bloom._encode({**new.header, "corpus": old.header["corpus"]}, new.bloom.save_bytes()) == OLD_FILTER


def test_the_false_positive_rate_is_measured(tmp_path: Path, shakespeare: Path) -> None:
    loose = tmp_path / "loose.bloom"
    build_filter([shakespeare], loose, fp_rate=0.05, workers=1, fp_samples=FP)
    fp = load_filter(loose).header["measured_false_positives"]
    assert fp["samples"] == FP and 0.02 < fp["rate"] < 0.1  # the measurement sees a loose filter's misses
    m = measure_false_positives(load_filter(loose).bloom, 1000)
    assert m["samples"] == 1000 and m == measure_false_positives(load_filter(loose).bloom, 1000)


def test_damaged_filters_are_refused(ts_filter: Path, tmp_path: Path) -> None:
    data = ts_filter.read_bytes()
    bad = tmp_path / "bad.bloom"
    for damaged, message in [
        (data[: len(data) // 2], "corrupted or truncated"),
        (data[:20], "truncated"),
        (data[:1000] + bytes([data[1000] ^ 1]) + data[1001:], "corrupted"),
        (data[:-1] + bytes([data[-1] ^ 1]), "corrupted"),
        (b"", "not an 8-gram filter"),
        (b"hello world", "not an 8-gram filter"),
    ]:
        bad.write_bytes(damaged)
        with pytest.raises(GPT2Error, match=message):
            load_filter(bad)
    with pytest.raises(GPT2Error, match="cannot read"):
        load_filter(tmp_path / "missing.bloom")
    # whole and checksummed, but hashed from other words: refused rather than silently missing 8-grams
    filt = load_filter(ts_filter)
    for key, value, message in [("normalization", "lower-cased only", "another normalisation"),
                                ("format", 99, "format 99")]:  # fmt: skip
        bad.write_bytes(bloom._encode({**filt.header, key: value}, filt.bloom.save_bytes()))
        with pytest.raises(GPT2Error, match=message):
            load_filter(bad)


def test_bad_corpora_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(GPT2Error, match="the corpus is empty"):
        build_filter([tmp_path / "empty.txt"], tmp_path / "f.bloom", workers=1)
    (tmp_path / "short.txt").write_text("only six words in this file", "utf-8")
    with pytest.raises(GPT2Error, match="no 8-grams"):
        build_filter([tmp_path / "short.txt"], tmp_path / "f.bloom", workers=1)
    (tmp_path / "bin.txt").write_bytes(b"some words\0 and a NUL byte, one two three four five six")
    with pytest.raises(GPT2Error, match="binary"):
        build_filter([tmp_path / "bin.txt"], tmp_path / "f.bloom", workers=1)
    with pytest.raises(GPT2Error, match="no such file"):
        build_filter([tmp_path / "nothing"], tmp_path / "f.bloom", workers=1)
    with pytest.raises(GPT2Error, match="false-positive"):
        build_filter([tmp_path / "short.txt"], tmp_path / "f.bloom", fp_rate=1.5)
    assert not (tmp_path / "f.bloom").exists()


def test_invalid_utf8_is_replaced_and_warned(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 one two three four five six seven eight nine".encode("latin-1"))
    with pytest.warns(UserWarning, match="invalid UTF-8"):
        r = build_filter([tmp_path / "latin1.txt"], tmp_path / "f.bloom", workers=1, fp_samples=0)
    assert r.header["ngrams"] == 3  # "caf", "\ufffd" is a boundary, then nine words: 10 words
    with pytest.warns(UserWarning, match="invalid UTF-8"):
        [res] = measure_overlap([tmp_path / "latin1.txt"], load_filter(tmp_path / "f.bloom"))
    assert res.overlap == 1.0


def test_units_of_the_papers_test_sets(shared_data: Path, tmp_path: Path) -> None:
    kind, units = units_of(shared_data / "ptb" / "ptb.test.txt")
    assert kind == "ptb" and len(units) == 3761  # sentences
    kind, units = units_of(shared_data / "wikitext-2" / "wiki.test.tokens")
    assert kind == "wikitext" and len(units) == 60 and units[0].name == "Robert <unk>"
    kind, units = units_of(shared_data / "lambada" / "lambada_openai.jsonl")  # context + continuation
    assert kind == "lambada" and len(units) == 5153 and units[0].text.endswith(" signs")
    kind, units = units_of(shared_data / "nq_open" / "NQ-open.dev.jsonl")  # the question and its answers
    assert kind == "nq" and len(units) == 3610 and "moon" in units[0].text and "1972" in units[0].text
    kind, units = units_of(shared_data / "wsc273" / "winograd_wsc.jsonl")  # no "text": every string of a record
    assert kind == "jsonl" and len(units) == 273 and units[0].name == "record 1" and "councilmen" in units[0].text
    kind, units = units_of(shared_data / "wmt14-en-fr" / "newstest2014-fren-src.en.sgm")
    assert kind == "wmt" and len(units) == 3003 and units[0].text == "Spectacular Wingsuit Jump Over Bogota"
    cbt = (
        "1 Once upon a time .\n2 There was a cat .\n21 The XXXXX sat .\tcat\t\tcat|dog\n\n1 A .\n21 B XXXXX\tc\t\tc|d\n"
    )
    (tmp_path / "cbtest_CN_valid_2000ex.txt").write_text(cbt, "utf-8")
    kind, units = units_of(tmp_path / "cbtest_CN_valid_2000ex.txt")
    assert kind == "cbt" and [u.text for u in units] == [
        "Once upon a time .\nThere was a cat .\nThe cat sat .",
        "A .\nB c",
    ]
    (tmp_path / "notes.md").write_text("one document", "utf-8")
    assert units_of(tmp_path / "notes.md") == ("text", [Unit("notes.md", "one document")])


def test_the_command_builds_tests_and_writes_json_and_a_plot(
    tmp_path: Path, shakespeare: Path, shared_data: Path, capsys
) -> None:
    lines = shakespeare.read_text("utf-8").splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines[:10_000]), "utf-8")
    (tmp_path / "held.txt").write_text("\n".join(lines[4000:4700]), "utf-8")
    filt = tmp_path / "f.bloom"
    main(["overlap", "build", "--corpus", str(tmp_path / "train.txt"), "--output", str(filt), "--quiet",
          "--fp-samples", "5000"])  # fmt: skip
    out = capsys.readouterr().out
    assert "8-grams" in out and "false positives: 0 of 5,000" in out
    ptb = shared_data / "ptb" / "ptb.test.txt"
    main(["overlap", "test", "--filter", str(filt), "--data", str(tmp_path / "held.txt"), str(ptb), "--exact",
          "--json", str(tmp_path / "o.json"), "--plot", str(tmp_path / "cdf.png")])  # fmt: skip
    out = capsys.readouterr().out
    assert "100.00% of" in out and "filter false positives: 0" in out
    report = json.loads((tmp_path / "o.json").read_text("utf-8"))
    files = report["files"]
    held, ptb_r = files[str(tmp_path / "held.txt")], files[str(ptb)]
    assert held["overlap"] == 1.0 and held["ngrams"] > 3000
    assert ptb_r["overlap"] < 0.01 and ptb_r["ngrams"] > 40_000 and len(ptb_r["per_document"]) == 3761
    assert report["filter_header"]["measured_false_positives"]["hits"] == 0
    assert (tmp_path / "cdf.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["overlap", "test", "--filter", str(tmp_path / "held.txt"), "--data", str(ptb), "--no-plot"])
    assert "not an 8-gram filter" in capsys.readouterr().err


def test_exact_alone_needs_a_corpus(tmp_path: Path, shakespeare: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(GPT2Error, match="nothing to test against"):
            measure_overlap([shakespeare])
