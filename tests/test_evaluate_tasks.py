"""Every task: parsing of its official format (files written here, and the real copies in ../shared/data), an
end-to-end run on a tiny random model, the prompt constructions, and the errors users see."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import math
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from test_evaluate_race import ARTICLES as RACE_ARTICLES

from gpt2.errors import GPT2Error
from gpt2.evaluate import TASKS, evaluate, parse_tasks
from gpt2.evaluate.data import DataDir, DataFile
from gpt2.evaluate.metrics import corpus_bleu, rouge_f1
from gpt2.evaluate.scoring import Scorer
from gpt2.evaluate.tasks import (
    Context,
    base,
    cbt,
    cnn_dm,
    coqa,
    hellaswag,
    lambada,
    nq,
    perplexity,
    race,
    winograd,
    wmt,
    writingprompts,
)
from gpt2.model import GPT, GPTConfig

N_CTX = 128


@pytest.fixture(scope="module")
def tiny(gpt2_tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_positions=N_CTX, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny, gpt2_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny.save_pretrained(folder, tokenizer=gpt2_tokenizer)
    return folder


def context(model: GPT, tokenizer, data_dir: Path | None = None, **kw) -> Context:
    return Context(model, tokenizer, Scorer(model), DataDir(data_dir, offline=True), **kw)


# ---------------------------------------------------------------------- files in the official formats
CBT_EXAMPLE = "\n".join(
    [f"{i} `` Sentence {i} about the cat , '' said Mr. Toad ." for i in range(1, 21)]
    + ["21 The XXXXX sat on the mat .\tdog\t\tcat|dog|mouse|horse|cow|pig|hen|fox|owl|bee", ""]
)
STORY = "Once upon a time, in a barn near a farm house, there lived a little white kitten named Cotton."
COQA = {
    "version": "1.0",
    "data": [
        {
            "source": "mctest",
            "id": "3dr23u6we5exclen4th8uq9rb42tel",
            "filename": "mc160.test.41",
            "story": STORY,
            "questions": [
                {"input_text": "what color was cotton?", "turn_id": 1},
                {"input_text": "where?", "turn_id": 2},
            ],
            "answers": [
                {"span_start": 59, "span_end": 93, "span_text": "white", "input_text": "white", "turn_id": 1},
                {"span_start": 18, "span_end": 80, "span_text": "in a barn", "input_text": "in a barn", "turn_id": 2},
            ],
            "additional_answers": {
                k: [{"input_text": "white", "turn_id": 1}, {"input_text": "a barn", "turn_id": 2}] for k in "012"
            },
        }
    ],
}
HELLASWAG = {
    "ind": 24,
    "activity_label": "Roof shingle removal",
    "ctx_a": "A man is sitting on a roof.",
    "ctx_b": "he",
    "ctx": "A man is sitting on a roof. he",
    "endings": ["is using wrap.", "is ripping level tiles off.", "is holding a cube.", "starts pulling up roofing."],
    "source_id": "activitynet~v_-JhWjGDPHMY",
    "split": "val",
    "split_type": "indomain",
    "label": 3,
}
WSC_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<collection>
<schema><text><txt1>The trophy doesn't fit into the brown suitcase because</txt1><pron> it </pron>
<txt2> is too large.</txt2></text><quote><quote1></quote1><pron>it</pron><quote2>is too large</quote2></quote>
<answers><answer>the trophy </answer><answer>the suitcase</answer></answers>
<correctAnswer> A. </correctAnswer><source>Hector</source></schema>
<schema><text><txt1>Joe's uncle can still beat him at tennis, even though</txt1><pron> he </pron>
<txt2> is 30 years younger.</txt2></text><quote><quote1></quote1><pron>he</pron><quote2>is</quote2></quote>
<answers><answer>Joe </answer><answer>Joe's uncle</answer></answers>
<correctAnswer> A </correctAnswer><source>Ernest</source></schema>
</collection>
"""
SGM = '<srcset setid="newstest2014" srclang="any">\n<doc docid="1" genre="news" origlang="en">\n{}</doc>\n</srcset>\n'
EN = ["The cat sat on the mat.", "It is raining today.", "I like green tea. It is good.", "Where is the station?"]
FR = ["Le chat est sur le tapis.", "Il pleut aujourd'hui.", "J'aime le thé vert. Il est bon.", "Où est la gare ?"]
DE = [
    "Die Katze sitzt auf der Matte.",
    "Es regnet heute.",
    "Ich mag gr\u00fcnen Tee. Er ist gut.",
    "Wo ist der Bahnhof?",
]
DEV_EN = ["Dev sentence one.", "Dev sentence two.", "Dev sentence three."]
DEV_FR = ["Phrase de dev un.", "Phrase de dev deux.", "Phrase de dev trois."]
DEV_DE = ["Dev Satz eins.", "Dev Satz zwei.", "Dev Satz drei."]
WP_SOURCE = ["[ WP ] A dragon learns to read .", "[ EU ] The moon is n't real ."]
WP_TARGET = [
    "`` Hello , '' said the dragon . <newline> <newline> It did n't know how .",
    "The moon ( really ) was cheese !",
]
WIKI = (
    " \n = Alpha = \n \n Alpha is a 1 @,@ 000 @-@ year test . \n \n = = Use = = \n \n It is used . \n \n"
    " = Beta = \n \n Beta too . \n"
)
URLS = ["http://www.cnn.com/2015/story-one", "http://www.dailymail.co.uk/news/story-two"]


def story_file(article: str, highlights: list[str]) -> bytes:
    return (article + "\n\n" + "".join(f"@highlight\n\n{h}\n\n" for h in highlights)).encode()


def write_tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A data folder with every task's official file names and formats, a few examples each."""
    d = tmp_path_factory.mktemp("data")

    def write(rel: str, data: str | bytes) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data.encode() if isinstance(data, str) else data)

    write("lambada/lambada_test.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in ["a b c signs", "x y word."]))
    write("cbt/cbtest_CN_valid_2000ex.txt", CBT_EXAMPLE * 2)
    write("cbt/cbtest_NE_valid_2000ex.txt", CBT_EXAMPLE.replace("\tdog\t", "\tcat\t"))
    write("wikitext-2-raw/wiki.test.raw", WIKI)
    write("wikitext-103-raw/wiki.test.raw", WIKI)
    write("ptb/ptb.test.txt", " no it was n't black monday \n the dow fell N points \n")
    write("1bw/news.en.heldout-00000-of-00050", "The company said it 's fine .\nShares rose 5 % .\n")
    write("enwik8/enwik8", ("<page>caf\u00e9 " * 40).encode())
    write("text8/text8", " anarchism originated as a term of abuse" * 10)
    write("wsc273/WSCollection.xml", WSC_XML.encode("iso-8859-1"))
    write("hellaswag/hellaswag_val.jsonl", json.dumps(HELLASWAG) + "\n")
    write("coqa/coqa-dev-v1.0.json", json.dumps(COQA))
    train = {
        "data": [{"story": "Ann had a dog.", "questions": [{"input_text": "Who?"}], "answers": [{"input_text": "Ann"}]}]
    }
    write("coqa/coqa-train-v1.0.json", json.dumps(train))
    for src, tgt, s_lines, t_lines in (("en", "fr", EN, FR), ("fr", "en", FR, EN)):
        seg = "".join(f'<seg id="{i}">{x}</seg>\n' for i, x in enumerate(s_lines, 1))
        ref = "".join(f'<seg id="{i}">{x}</seg>\n' for i, x in enumerate(t_lines, 1))
        write(f"wmt14-en-fr/newstest2014-fren-src.{src}.sgm", SGM.format(seg))
        write(f"wmt14-en-fr/newstest2014-fren-ref.{tgt}.sgm", SGM.format(ref))
    for lang, lines in (("en", DEV_EN), ("fr", DEV_FR), ("de", DEV_DE)):  # newstest2013, the validation set
        for side in ("src", "ref"):
            seg = "".join(f'<seg id="{i}">{x}</seg>\n' for i, x in enumerate(lines, 1))
            for pair in ("fr", "de"):
                if lang in ("en", pair):
                    write(f"wmt14-en-{pair}/newstest2013-{side}.{lang}.sgm", SGM.format(seg))
    for src, tgt, s_lines, t_lines in (("en", "de", EN, DE), ("de", "en", DE, EN)):
        seg = "".join(f'<seg id="{i}">{x}</seg>\n' for i, x in enumerate(s_lines, 1))
        ref = "".join(f'<seg id="{i}">{x}</seg>\n' for i, x in enumerate(t_lines, 1))
        write(f"wmt14-en-de/newstest2014-deen-src.{src}.sgm", SGM.format(seg))
        write(f"wmt14-en-de/newstest2014-deen-ref.{tgt}.sgm", SGM.format(ref))
    # RACE in both layouts: the official per-article files (high) and the JSON Lines conversion (middle)
    for a in RACE_ARTICLES:
        write(f"race/RACE/test/high/{a['id'].removeprefix('high')}", json.dumps(a))
    write("race/test_middle.jsonl", "".join(json.dumps(a) + "\n" for a in RACE_ARTICLES))
    write("writingprompts/test.wp_source", "".join(p + "\n" for p in WP_SOURCE))
    write("writingprompts/test.wp_target", "".join(t + "\n" for t in WP_TARGET))
    qa = [{"question": "who wrote hamlet", "answer": ["Shakespeare", "William Shakespeare"]}]
    write("nq_open/NQ-open.dev.jsonl", "".join(json.dumps(q) + "\n" for q in qa * 2))
    write(
        "nq_open/NQ-open.efficientqa.dev.1.1.jsonl", json.dumps({"question": "capital of france", "answer": ["Paris"]})
    )
    write("cnn_dm/all_test.txt", "\n".join(URLS) + "\n")
    keys = [hashlib.sha1(u.encode()).hexdigest() for u in URLS]
    write_tgz(d / "cnn_dm/cnn_stories.tgz", {f"cnn/stories/{keys[0]}.story": story_file("CNN text.", ["One"])})
    write_tgz(
        d / "cnn_dm/dailymail_stories.tgz",
        {f"dailymail/stories/{keys[1]}.story": story_file("Daily Mail text.\n\nMore.", ["Two", "Three"])},
    )
    return d


def test_official_formats_parse(official, monkeypatch):
    (ex,) = cbt.read_cbt(official / "cbt/cbtest_NE_valid_2000ex.txt")
    assert len(ex.sentences) == 20 and ex.answer == "cat" and len(ex.candidates) == 10
    (story,) = coqa.read_coqa(official / "coqa/coqa-dev-v1.0.json")
    assert story.answers[1] == ["in a barn", "a barn", "a barn", "a barn"]
    assert coqa.conversation(story, 1) == "Q: what color was cotton?\nA: white\n"
    assert hellaswag.read_official(official / "hellaswag/hellaswag_val.jsonl")[0] == (
        "Roof shingle removal: A man is sitting on a roof. He",
        HELLASWAG["endings"],
        3,
    )
    assert wmt.read_sgm(official / "wmt14-en-fr/newstest2014-fren-src.en.sgm") == EN
    assert wmt.read_sgm(official / "wmt14-en-de/newstest2014-deen-ref.de.sgm") == DE
    folder = race.read_folder(official / "race/RACE/test/high")
    assert folder == race.read_jsonl(official / "race/test_middle.jsonl") and folder[0].questions[0].answer == 1
    pairs = writingprompts.read_pairs(
        official / "writingprompts/test.wp_source", official / "writingprompts/test.wp_target"
    )
    assert pairs == list(zip(WP_SOURCE, WP_TARGET, strict=True))
    assert perplexity.wikitext_articles(WIKI) == [  # the blank line before the first title goes with it
        " \n = Alpha = \n \n Alpha is a 1 @,@ 000 @-@ year test . \n \n = = Use = = \n \n It is used . \n \n",
        " = Beta = \n \n Beta too . \n",
    ]
    schemas = winograd.read_wsc(official / "wsc273/WSCollection.xml")
    assert schemas[0].options == ("the trophy", "the suitcase") and [s.label for s in schemas] == [0, 0]
    articles = cnn_dm.read_official(
        official / "cnn_dm/all_test.txt",
        [official / "cnn_dm/cnn_stories.tgz", official / "cnn_dm/dailymail_stories.tgz"],
        None,
    )
    assert articles == [("CNN text.", "One"), ("Daily Mail text. More.", "Two\nThree")]
    monkeypatch.setattr(perplexity, "TEST_SIZE", 9)
    assert perplexity.tail_split("ab\u00e9cdefghij".encode(), "byte") == b"\xa9cdefghij"  # starts inside the é
    assert perplexity.tail_split("ab\u00e9cdefghij".encode(), "char") == "\u00e9cdefghij"


def test_real_shared_files_parse(shared_data):
    texts = lambada.read_lambada(shared_data / "lambada/lambada_test.jsonl")
    assert len(texts) == 5153 and lambada.split_last_word(texts[0])[1] == " signs"
    raw = (shared_data / "wikitext-2-raw/wiki.test.raw").read_text(encoding="utf-8")
    articles = perplexity.wikitext_articles(raw)
    assert articles[0].startswith(" \n = Robert Boulter = ") and "".join(articles) == raw and len(articles) == 60
    assert len(perplexity._ptb(shared_data / "ptb/ptb.test.txt", None)[0].splitlines()) == 3761
    wsc = winograd.read_wsc(shared_data / "wsc273/WSCollection.xml")
    assert len(wsc) == 285 and wsc[272].before.startswith("Carol believed that Rebecca regretted that")
    hs = hellaswag.read_llama_cpp(shared_data / "hellaswag/hellaswag_val_full.txt.bz2")
    assert len(hs) == 10042 and hs[0][0] == "Roof shingle removal: A man is sitting on a roof. he" and hs[0][2] == 3
    assert len(nq.read_nq(shared_data / "nq_open/NQ-open.dev.jsonl")) == 3610
    for name in ("src.en", "ref.fr", "src.fr", "ref.en"):
        assert len(wmt.read_sgm(shared_data / f"wmt14-en-fr/newstest2014-fren-{name}.sgm")) == 3003
    cnn = cnn_dm.read_summeval(shared_data / "cnn_dm/summeval_cnndm_test100.jsonl", None)
    assert len(cnn) == 100 and "team's 0-0 draw" in cnn[0][0]
    for name in ("src.en", "ref.de", "src.de", "ref.en"):
        assert len(wmt.read_sgm(shared_data / f"wmt14-en-de/newstest2014-deen-{name}.sgm")) == 3003
        assert len(wmt.read_sgm(shared_data / f"wmt14-en-de/newstest2013-{name}.sgm")) == 3000
    for level, articles, questions in (("high", 1045, 3498), ("middle", 362, 1436)):  # Lai et al. 2017, Table 1
        read = race.read_jsonl(shared_data / f"race/test_{level}.jsonl")
        assert len(read) == articles and sum(len(a.questions) for a in read) == questions


# ---------------------------------------------------------------------- prompt and protocol details
def test_lambada_split_and_stop_word_tokens(gpt2_tokenizer):
    assert lambada.split_last_word("he said , `` go home . ''") == ("he said , `` go home .", " ''")
    with pytest.raises(GPT2Error, match="no last word"):
        lambada.split_last_word("word")
    mask = lambada.stop_word_mask(gpt2_tokenizer)
    ids = {w: gpt2_tokenizer.encode(w) for w in (" the", " He", " theater", " Paris", "the")}
    assert mask[ids[" the"]].all() and mask[ids[" He"]].all()
    assert not mask[ids[" theater"]].any() and not mask[ids[" Paris"]].any() and not mask[ids["the"]].any()


def test_cbt_candidates_fill_the_blank():
    ex = cbt.CBTExample(["Hi , Tom .", "`` Yes , '' he said ."], "The XXXXX sat on Tom 's mat .", "cat", ["cat", "dog"])
    prefix, conts = cbt.cbt_group(ex)
    assert prefix == 'Hi, Tom. "Yes," he said. The'
    assert conts == [" cat sat on Tom's mat.", " dog sat on Tom's mat."]
    ex = cbt.CBTExample(["Hi ."], "XXXXX went home .", "Tom", ["Tom", "Ann"])
    assert cbt.cbt_group(ex) == ("Hi.", [" Tom went home.", " Ann went home."])


def test_winograd_substitution():
    s = winograd.Schema(
        "The trophy doesn't fit into the suitcase because", "it", "is too large.", ("The trophy", "x"), 0
    )
    assert winograd.substitute(s, "The trophy") == "the trophy"
    assert winograd.continuation(s) == " is too large."
    s = winograd.Schema("John hired Bill to take care of", "him", ".", ("John", "Bill"), 0)
    assert winograd.continuation(s) == "."
    s = winograd.Schema("The man lifted the boy onto", "his", "shoulders.", ("the man", "the boy"), 0)
    assert winograd.substitute(s, "the man") == "the man's"
    s = winograd.Schema("Bob paid for Charlie's college. ", "He", "is very generous.", ("Bob", "Charlie"), 0)
    assert winograd.substitute(s, "the man") == "The man"


def test_shots_are_deterministic_and_exclude_the_example():
    pool = list(range(50))
    a = base.sample_shots(pool, 5, seed=1, key="t0", exclude=3)
    assert a == base.sample_shots(pool, 5, seed=1, key="t0", exclude=3) and 3 not in a and len(set(a)) == 5
    assert a != base.sample_shots(pool, 5, seed=2, key="t0", exclude=3)
    assert base.sample_shots(pool, 0, seed=1, key="t0") == []


def test_clip_keeps_the_requested_end(tiny, gpt2_tokenizer):
    ctx = context(tiny, gpt2_tokenizer)
    text = " ".join(f"w{i}" for i in range(100))
    start, cut = base.clip(ctx, text, 10, "start")
    end, _ = base.clip(ctx, text, 10, "end")
    assert cut and text.startswith(start) and text.endswith(end) and len(ctx.encode(start)) == 10
    assert base.clip(ctx, "short", 10, "end") == ("short", False)
    with pytest.raises(GPT2Error, match="too short"):
        base.clip(ctx, text, 0, "end")


def test_batched_generation_equals_one_prompt_at_a_time(tiny, gpt2_tokenizer):
    from gpt2.generate import generate

    prompts = ["Q: who wrote hamlet\nA:", "The cat", "One two three four five six seven eight nine ten ="]
    ctx = context(tiny, gpt2_tokenizer, batch_size=3)
    batched = base.generate_all(ctx, prompts, 8, stop=())
    alone = [generate(tiny, gpt2_tokenizer, p, 8, temperature=0.0, top_k=None, stop=())[0] for p in prompts]
    assert batched == alone


# ---------------------------------------------------------------------- every task, end to end
EXPECTED_N = {
    "lambada": 2,
    "cbt-cn": 2,
    "cbt-ne": 1,
    "wikitext2": 2,
    "wikitext103": 2,
    "ptb": 2,
    "1bw": 2,
    "enwik8": 2,  # windows of the 128-token context
    "text8": 1,
    "winograd": 2,
    "hellaswag": 1,
    "coqa": 2,
    "cnn_dm": 2,
    "wmt14-en-fr": 4,
    "wmt14-fr-en": 4,
    "nq": 2,
    "race-high": 3,  # questions
    "race-middle": 3,
    "wmt14-en-de": 4,
    "wmt14-de-en": 4,
    "writingprompts": 2,
}


def test_every_task_runs_on_official_format_files(official, tiny, gpt2_tokenizer):
    assert set(EXPECTED_N) == set(TASKS)
    results = evaluate(tiny, gpt2_tokenizer, "all", data_dir=official, offline=True, batch_size=3, model_name="tiny")
    assert results["model"] == "tiny"
    for name, r in results["tasks"].items():
        assert r["n"] == EXPECTED_N[name], name
        assert set(r) == {*TASKS[name].metrics, "n"}, name
        assert all(isinstance(v, float) and math.isfinite(v) for k, v in r.items() if k != "n"), (name, r)
        assert results["protocol"]["tasks"][name]["examples_per_s"] > 0
    t = results["tasks"]
    assert t["wikitext2"] == t["wikitext103"]  # the same file under both names scores the same
    assert t["ptb"]["word_ppl"] > 1 and 0 < t["enwik8"]["bpb"] < 20 and 0 < t["text8"]["bpc"] < 20
    classify = ("cbt-cn", "winograd", "hellaswag", "nq", "coqa", "race-high", "race-middle")
    assert all(0 <= t[k][m] <= 100 for k in classify for m in TASKS[k].metrics)
    assert t["race-high"] == t["race-middle"]  # the same articles in the two layouts score the same
    assert t["writingprompts"]["word_ppl"] > 1
    protocol = results["protocol"]["tasks"]
    assert protocol["hellaswag"]["data"]["format"] == "official hellaswag_val.jsonl"
    assert protocol["cnn_dm"]["data"]["format"] == "official .story files"
    assert protocol["wikitext2"]["windows"] == 2 and protocol["text8"]["n_counts"] == "windows"
    assert protocol["race-high"]["data"]["format"] == "official per-article JSON files"
    assert protocol["wmt14-en-de"]["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_tasks_on_the_real_shared_data(shared_data, tiny, gpt2_tokenizer):
    names = ["lambada", "wikitext2", "ptb", "winograd", "hellaswag", "nq", "wmt14-fr-en", "cnn_dm", "race-middle"]
    results = evaluate(tiny, gpt2_tokenizer, names, data_dir=shared_data, offline=True, limit=2, batch_size=4)
    protocol = results["protocol"]["tasks"]
    for name in names:
        assert results["tasks"][name]["n"] == 2, name
        data = protocol[name]["data"]
        assert data.get("known_copy", True) is not False, name  # the shared copies are the official bytes
    assert protocol["hellaswag"]["data"]["format"].startswith("llama.cpp")
    assert protocol["cnn_dm"]["data"]["format"].startswith("SummEval")
    assert protocol["wikitext2"]["windows"] > 2  # articles longer than the 128-token window were windowed
    assert protocol["winograd"]["data"]["known_copy"] is True


def test_lm_limit_counts_windows_for_streams(tmp_path, tiny, gpt2_tokenizer, monkeypatch):
    monkeypatch.setattr(perplexity, "TEST_SIZE", 4000)
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8" / "text8").write_text(" anarchism originated as a term of abuse" * 200)
    for limit, tokens in ((1, N_CTX), (3, N_CTX + 2 * 32)):
        r = evaluate(tiny, gpt2_tokenizer, "text8", data_dir=tmp_path, offline=True, limit=limit, stride=32)
        assert r["tasks"]["text8"]["n"] == limit and r["protocol"]["tasks"]["text8"]["tokens"] == tokens


# ---------------------------------------------------------------------- errors and data files
def test_unknown_task_lists_the_known_ones():
    with pytest.raises(GPT2Error, match="unknown task 'lambda'; known: lambada, cbt-cn"):
        parse_tasks("lambda")
    assert parse_tasks("ptb, lambada,ptb") == ["ptb", "lambada"]


def test_missing_data_file_names_it_and_where_to_get_it(tmp_path, tiny, gpt2_tokenizer):
    with pytest.raises(GPT2Error) as e:
        evaluate(tiny, gpt2_tokenizer, "lambada", data_dir=tmp_path, offline=True)
    msg = str(e.value)
    assert str(tmp_path / "lambada" / "lambada_test.jsonl") in msg
    assert "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl" in msg


def test_bad_files_and_options_are_clear_errors(tmp_path, official, tiny, gpt2_tokenizer):
    bad = tmp_path / "cbt" / "cbtest_CN_valid_2000ex.txt"
    bad.parent.mkdir()
    bad.write_text("1 one\n21 no blank here\tx\t\ta|b\n")
    with pytest.raises(GPT2Error, match=r"cbtest_CN_valid_2000ex.txt:2: expected"):
        evaluate(tiny, gpt2_tokenizer, "cbt-cn", data_dir=tmp_path, offline=True)
    with pytest.raises(GPT2Error, match="--stride"):
        evaluate(tiny, gpt2_tokenizer, "ptb", data_dir=official, stride=N_CTX + 1)
    with pytest.raises(GPT2Error, match="--limit"):
        evaluate(tiny, gpt2_tokenizer, "ptb", data_dir=official, limit=0)


def test_download_checks_the_sha256_and_extracts_one_member(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inner/wiki.test.raw", "hello")
        z.writestr("../evil", "no")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    good = DataFile("w", "wiki.test.raw", archive.as_uri(), digest, member="inner/wiki.test.raw")
    path = DataDir(tmp_path / "data").path(good)
    assert path == tmp_path / "cache" / "data" / "w" / "wiki.test.raw" and path.read_text() == "hello"
    assert not (tmp_path / "cache" / "evil").exists()
    bad = DataFile("v", "x.raw", archive.as_uri(), "0" * 64, member="inner/wiki.test.raw")
    with pytest.raises(GPT2Error, match="checksum mismatch"):
        DataDir(tmp_path / "data").path(bad)
    assert not (tmp_path / "cache" / "data" / "v" / "x.raw").exists()


def test_cli_writes_json_for_several_models_and_prints_the_table(model_dir, official, tmp_path, capsys):
    from gpt2.cli import main

    out = tmp_path / "results.json"
    args = ["eval", "--model", str(model_dir), "--model", str(model_dir), "--tasks", "lambada,ptb"]
    main([*args, "--data-dir", str(official), "--offline", "--output", str(out), "--limit", "1"])
    runs = json.loads(out.read_text())
    assert [set(r) for r in runs] == [{"model", "tasks", "protocol", "skipped"}] * 2
    assert runs[0]["tasks"] == runs[1]["tasks"] and runs[0]["tasks"]["lambada"]["n"] == 1
    table = capsys.readouterr().out
    assert "| paper GPT-2 117M | 35.13 |" in table and table.count(str(model_dir)) == 2
    assert (tmp_path / "results.md").read_text() == table  # the table, written beside the JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]  # no temp files left


def test_cli_all_runs_what_is_present_and_reports_the_rest(model_dir, official, tmp_path, capsys):
    from gpt2.cli import main

    data = tmp_path / "data"
    for rel in ("lambada/lambada_test.jsonl", "ptb/ptb.test.txt"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes((official / rel).read_bytes())
    out = tmp_path / "results.json"
    main(["eval", "--model", str(model_dir), "--tasks", "all", "--data-dir", str(data), "--offline"]
         + ["--output", str(out), "--limit", "1"])  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"lambada", "ptb"}
    assert set(result["skipped"]) == set(TASKS) - {"lambada", "ptb"}
    captured = capsys.readouterr()
    for name, reason in result["skipped"].items():
        assert "\n" not in reason and "is missing; get it from" in reason, name
        assert f"{name}: skipped: {reason}\n" in captured.err
    assert (
        "wmt14-en-fr/newstest2014-fren-src.en.sgm is missing; get it from https://statmt.org/wmt14/test-full.tgz"
        in (result["skipped"]["wmt14-en-fr"])
    )
    table = (tmp_path / "results.md").read_text()
    assert table == captured.out and "- cbt-cn: " in table and "| lambada ppl" in table


def test_cli_all_fails_with_one_line_when_nothing_ran(model_dir, tmp_path, capsys):
    from gpt2.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(model_dir), "--tasks", "all", "--data-dir", str(tmp_path), "--offline"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("error: ") == 1
    assert f"error: no task ran: the data of all {len(TASKS)} tasks is missing (lambada, cbt-cn," in err


def test_cli_errors_exit_1_with_one_line(model_dir, tmp_path, capsys):
    from gpt2.cli import main

    for argv, message in (
        (["--tasks", "lambda"], "error: unknown task 'lambda'; known:"),
        (["--tasks", "lambada", "--output", str(tmp_path)], "is a folder"),
        (["--tasks", "lambada", "--data-dir", str(tmp_path), "--offline"], "lambada_test.jsonl is missing"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--model", str(model_dir), *argv])
        assert e.value.code == 1 and message in capsys.readouterr().err


def test_hellaswag_reads_the_compressed_llama_cpp_format(tmp_path):
    lines = ["Act: ctx text", "2", "end a", "end b", "end c", "end d"] * 2
    (tmp_path / "h.txt.bz2").write_bytes(bz2.compress("\n".join(lines).encode()))
    ex = hellaswag.read_llama_cpp(tmp_path / "h.txt.bz2")
    assert ex == [("Act: ctx text", ["end a", "end b", "end c", "end d"], 2)] * 2
    (tmp_path / "bad.txt").write_text("\n".join(lines[:5]))
    with pytest.raises(GPT2Error, match="multiple of 6"):
        hellaswag.read_llama_cpp(tmp_path / "bad.txt")


def test_generation_tasks_prompts_and_scoring(official, tiny, gpt2_tokenizer, monkeypatch, tmp_path):
    """The documented prompts reach the generator, and its outputs are scored as documented."""
    seen: dict[str, list[str]] = {}

    def fake_generate(task: str, outputs):  # noqa: ANN001
        def run(ctx, prompts, max_new_tokens, **kw):  # noqa: ANN001, ANN003
            seen[task] = list(prompts)
            return [outputs(p) for p in prompts]

        return run

    monkeypatch.setattr(nq, "generate_all", fake_generate("nq", lambda p: " William Shakespeare."))
    monkeypatch.setattr(
        coqa, "generate_all", fake_generate("coqa", lambda p: " white" if "color" in p[-30:] else " barn")
    )
    monkeypatch.setattr(
        wmt, "generate_all", fake_generate("wmt", lambda p: " " + FR[EN.index(p.rsplit("\n", 1)[-1][:-2])])
    )
    monkeypatch.setattr(cnn_dm, "generate_all", fake_generate("cnn", lambda p: " One. Two! Three? Four."))
    r = evaluate(tiny, gpt2_tokenizer, "nq,coqa,wmt14-en-fr,cnn_dm", data_dir=official, offline=True, shots=1)
    t = r["tasks"]
    assert seen["nq"][0] == "Q: capital of france\nA: Paris\n\nQ: who wrote hamlet\nA:" and t["nq"]["em"] == 100.0
    assert seen["coqa"][0] == f"Ann had a dog.\n\nQ: Who?\nA: Ann\n\n{STORY}\n\nQ: what color was cotton?\nA:"
    assert seen["coqa"][1].endswith(f"{STORY}\n\nQ: what color was cotton?\nA: white\nQ: where?\nA:")
    # "barn" against ["in a barn", "a barn" x 3]: every leave-one-out maximum is "a barn" -> EM 1, F1 1
    assert t["coqa"]["em"] == 100.0 and t["coqa"]["f1"] == 100.0
    first, *_, last = seen["wmt"][0].split("\n")
    assert last == f"{EN[0]} =" and first in {f"{e} = {f}" for e, f in zip(DEV_EN, DEV_FR, strict=True)}
    assert r["protocol"]["tasks"]["wmt14-en-fr"]["shots_from"]["set"] == "newstest2013 (validation)"
    assert t["wmt14-en-fr"]["bleu"] == pytest.approx(
        corpus_bleu([s.split(". ")[0] + "." if ". " in s else s for s in FR], FR)
    )
    assert seen["cnn"][0] == "CNN text.\nTL;DR:"
    # the summary's sentences one per line, as the reference's highlights are: rougeLsum is Table 4's R-L
    expected = rouge_f1(["One.\nTwo!\nThree?"] * 2, ["One", "Two\nThree"])
    for m in ("rouge1", "rouge2", "rougeLsum"):
        assert t["cnn_dm"][m] == pytest.approx(expected[m]), m
    assert t["cnn_dm"]["rougeL_unsplit"] == pytest.approx(expected["rougeL"])
    assert t["cnn_dm"]["rouge_avg"] == pytest.approx(
        (expected["rouge1"] + expected["rouge2"] + expected["rougeLsum"]) / 3
    )


def test_wmt_examples_come_from_newstest2013_never_from_the_test_set(shared_data, gpt2_tokenizer, monkeypatch):
    torch.manual_seed(0)
    wide = GPT(GPTConfig(n_positions=1024, n_layer=1, n_head=1, n_embd=8)).eval()  # room for 5 unclipped examples
    prompts: list[str] = []

    def fake(ctx, batch, max_new_tokens, **kw):  # noqa: ANN001, ANN003
        prompts.extend(batch)
        return [" x"] * len(batch)

    monkeypatch.setattr(wmt, "generate_all", fake)
    for src, tgt in (("en", "fr"), ("fr", "en"), ("en", "de"), ("de", "en")):
        prompts.clear()
        name = f"wmt14-{src}-{tgt}"
        r = evaluate(wide, gpt2_tokenizer, name, data_dir=shared_data, offline=True, limit=40)
        other = "fr" if "fr" in (src, tgt) else "de"
        folder = shared_data / f"wmt14-en-{other}"
        test_src = set(wmt.read_sgm(folder / f"newstest2014-{other}en-src.{src}.sgm"))
        test_ref = set(wmt.read_sgm(folder / f"newstest2014-{other}en-ref.{tgt}.sgm"))
        dev = set(
            zip(
                wmt.read_sgm(folder / f"newstest2013-src.{src}.sgm"),
                wmt.read_sgm(folder / f"newstest2013-ref.{tgt}.sgm"),
                strict=True,
            )
        )
        assert r["protocol"]["tasks"][name]["truncated_prompts"] == 0 and len(prompts) == 40
        shots = [tuple(line.split(" = ", 1)) for p in prompts for line in p.split("\n")[:-1]]
        assert len(shots) == 40 * 5
        assert all(pair in dev for pair in shots)  # each example is a newstest2013 pair ...
        assert not any(s in test_src or t in test_ref for s, t in shots)  # ... and shares nothing with the test set
        assert r["protocol"]["tasks"][name]["shots_from"]["source"]["known_copy"] is True


@pytest.mark.parametrize(("src", "tgt", "sources", "refs"), [("en", "de", EN, DE), ("de", "en", DE, EN)])
def test_wmt_en_de_is_the_en_fr_protocol(official, tiny, gpt2_tokenizer, monkeypatch, src, tgt, sources, refs):
    """ "english sentence = german sentence" (and the reverse) from newstest2013 pairs, the test sentence and " =",
    the first generated sentence scored by sacreBLEU, its signature in the results."""
    seen: list[str] = []

    def fake(ctx, prompts, max_new_tokens, **kw):  # noqa: ANN001, ANN003
        seen.extend(prompts)
        assert kw.get("temperature", 0.0) == 0.0 and kw.get("top_k") is None  # greedy
        return [" " + refs[sources.index(p.rsplit("\n", 1)[-1][:-2])] for p in prompts]

    monkeypatch.setattr(wmt, "generate_all", fake)
    name = f"wmt14-{src}-{tgt}"
    r = evaluate(tiny, gpt2_tokenizer, name, data_dir=official, offline=True, shots=2)
    dev = dict(zip(DEV_EN, DEV_DE, strict=True))
    dev = dev if src == "en" else {d: e for e, d in dev.items()}
    *shots, last = seen[0].split("\n")
    assert last == f"{sources[0]} =" and len(shots) == 2
    assert all(line in {f"{s} = {t}" for s, t in dev.items()} for line in shots)
    # the generator returned each reference whole; only its first sentence is kept
    hyps = [s.split(". ")[0] + "." if ". " in s else s for s in refs]
    assert r["tasks"][name]["bleu"] == pytest.approx(corpus_bleu(hyps, refs))
    protocol = r["protocol"]["tasks"][name]
    assert protocol["sacrebleu_signature"] == "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" + (
        __import__("sacrebleu").__version__
    )
    assert protocol["data"]["source"]["file"].endswith(f"wmt14-en-de/newstest2014-deen-src.{src}.sgm")
    assert "this project's choice" in protocol["protocol_source"]


def test_wmt_without_the_validation_set_says_which_file_and_where(
    official, tmp_path, tiny, gpt2_tokenizer, monkeypatch
):
    monkeypatch.setattr(wmt, "generate_all", lambda ctx, prompts, *a, **kw: [" x"] * len(prompts))
    (tmp_path / "wmt14-en-fr").mkdir()
    for name in ("newstest2014-fren-src.en.sgm", "newstest2014-fren-ref.fr.sgm"):  # the test set only
        (tmp_path / "wmt14-en-fr" / name).write_bytes((official / "wmt14-en-fr" / name).read_bytes())
    with pytest.raises(GPT2Error) as e:
        evaluate(tiny, gpt2_tokenizer, "wmt14-en-fr", data_dir=tmp_path, offline=True)
    message = str(e.value)
    assert "\n" not in message and "never the test set" in message
    assert f"{tmp_path}/wmt14-en-fr/newstest2013-src.en.sgm is missing" in message
    assert "https://statmt.org/wmt13/test.tgz (member test/newstest2013-src.en.sgm)" in message
    # zero-shot needs no examples, so no validation set
    r = evaluate(tiny, gpt2_tokenizer, "wmt14-en-fr", data_dir=tmp_path, offline=True, shots=0)
    assert r["tasks"]["wmt14-en-fr"]["n"] == 4 and r["protocol"]["tasks"]["wmt14-en-fr"]["shots_from"] is None


def test_table_names_winograd_scoring_and_rouge_l_against_the_paper() -> None:
    from gpt2.evaluate.report import markdown_table

    run = {
        "model": "m",
        "tasks": {
            "winograd": {"acc_partial": 60.0, "acc_full": 55.0},
            "cnn_dm": {"rougeLsum": 25.0, "rouge_avg": 20.0},
        },
        "protocol": {},
        "skipped": {"ptb": "ptb.test.txt is missing; get it from X"},
    }
    table = markdown_table([run])
    header, _, ours, *rows = table.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "winograd acc (partial scoring)" in columns and "cnn_dm R-L" in columns
    paper = next(r for r in rows if r.startswith("| paper GPT-2 1542M"))
    cells = dict(zip(columns, [c.strip() for c in paper.strip("|").split("|")], strict=True))
    assert cells["cnn_dm R-L"] == "26.58" and cells["winograd acc (partial scoring)"] == "70.70"
    assert "- ptb: ptb.test.txt is missing; get it from X" in table
    assert "Protocols:\n- winograd: the paper, section 3.4\n- cnn_dm: the paper, section 3.6\n" in table


def test_every_task_says_where_its_protocol_comes_from() -> None:
    from gpt2.evaluate.report import PROTOCOL_SOURCE

    assert set(PROTOCOL_SOURCE) == set(TASKS)
    assert PROTOCOL_SOURCE["race-high"].startswith("GPT-3") and "this project's" in PROTOCOL_SOURCE["wmt14-en-de"]


def test_table_cells_stay_short_for_untrained_perplexities() -> None:
    from gpt2.evaluate.report import fmt

    assert fmt("ppl", 35.1349) == "35.13" and fmt("ppl", 11382860.25) == "1.14e+07"
    assert fmt("bpb", 1.16) == "1.160" and fmt("acc", None) == "–" and fmt("acc", float("nan")) == "–"
