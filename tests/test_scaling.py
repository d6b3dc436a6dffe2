"""gpt2.analysis.scaling and `gpt2 scale`: the power-law fit, size parsing, and a two-size family trained on a tiny
prepared corpus (not retrained when run again)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from gpt2.analysis.scaling import (
    PAPER_SHAPES,
    ScaleConfig,
    fit_power_law,
    non_embedding_params,
    parse_sizes,
    run_family,
)
from gpt2.cli import main
from gpt2.errors import GPT2Error


def test_the_fit_recovers_a_known_exponent() -> None:
    ns = [1e4, 3e4, 1e5, 3e5, 1e6, 3e6]
    exact = fit_power_law(ns, [5.0 * n**-0.076 for n in ns])
    assert exact.alpha == pytest.approx(0.076, abs=1e-9) and exact.a == pytest.approx(5.0, rel=1e-9)
    assert exact.alpha_se == pytest.approx(0, abs=1e-9) and exact.r2 == pytest.approx(1.0)
    # with multiplicative noise of 1%, the true exponent lies within a few standard errors of the estimate
    rng = random.Random(0)
    noisy = fit_power_law(ns, [5.0 * n**-0.076 * math.exp(rng.gauss(0, 0.01)) for n in ns])
    assert 0 < noisy.alpha_se < 0.01 and abs(noisy.alpha - 0.076) < 3 * noisy.alpha_se
    # with an irreducible loss: L = 3 N^-0.3 + 1.5
    with_c = fit_power_law(ns, [3.0 * n**-0.3 + 1.5 for n in ns], constant=True)
    assert with_c.c == pytest.approx(1.5, abs=0.01) and with_c.alpha == pytest.approx(0.3, abs=0.01)
    assert "alpha = 0.300" in with_c.describe()
    two = fit_power_law([1e4, 1e5], [4.0, 3.0])
    assert two.alpha == pytest.approx(math.log10(4 / 3)) and two.alpha_se is None  # no error from two points


def test_bad_fits_are_clear_errors() -> None:
    with pytest.raises(GPT2Error, match="at least two"):
        fit_power_law([1e4], [3.0])
    with pytest.raises(GPT2Error, match="positive"):
        fit_power_law([1e4, 1e5], [3.0, float("nan")])
    with pytest.raises(GPT2Error, match="same number of parameters"):
        fit_power_law([1e4, 1e4], [3.0, 2.0])
    with pytest.raises(GPT2Error, match="four sizes"):
        fit_power_law([1e4, 1e5, 1e6], [3.0, 2.0, 1.5], constant=True)


def test_sizes() -> None:
    sizes = parse_sizes("4x256, gpt2-tiny,2x64,2x96")
    assert [s.name for s in sizes] == ["2x64", "2x96", "4x256", "gpt2-tiny"]  # by parameters
    assert [(s.n_layer, s.n_head, s.n_embd) for s in sizes[:3]] == [(2, 1, 64), (2, 3, 96), (4, 4, 256)]
    assert sizes[2].non_embedding_params == non_embedding_params(4, 256) == 4 * (12 * 256**2 + 13 * 256) + 512
    # the paper's smallest model: 85M parameters outside its 38M of embeddings
    assert non_embedding_params(*PAPER_SHAPES["117M"]) == 85_056_000
    for bad, message in [("3y5", "unknown size"), ("gpt3", "unknown size"), ("0x64", "layers must be"),
                         ("2x63", "even"), ("", "empty"), ("2x64,2x64", "twice")]:  # fmt: skip
        with pytest.raises(GPT2Error, match=message):
            parse_sizes(bad)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("scale")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text("utf-8")[:60_000]
    (root / "a.txt").write_text(text, "utf-8")
    main(["tokenizer", "train", "--input", str(root / "a.txt"), "--vocab-size", "300", "--output",
          str(root / "tok"), "--quiet", "--workers", "1"])  # fmt: skip
    main(["prepare", "--input", str(root / "a.txt"), "--tokenizer", str(root / "tok"), "--output",
          str(root / "data"), "--quiet", "--val-fraction", "0.2"])  # fmt: skip
    return root / "data"


def test_a_two_size_family_trains_once_and_writes_its_table(prepared: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "family"
    argv = ["scale", "--sizes", "1x32,1x16", "--data", str(prepared), "--tokens", "1024", "--out", str(out),
            "--seq-len", "32", "--batch-size", "8", "--evals", "2", "--eval-batches", "1", "--device", "cpu",
            "--quiet"]  # fmt: skip
    main(argv)
    summary = json.loads((out / "scaling.json").read_text("utf-8"))
    assert [r["size"] for r in summary["sizes"]] == ["1x16", "1x32"]
    for r in summary["sizes"]:
        assert r["steps"] == 4 and r["tokens"] == 1024 and math.isfinite(r["val_loss"])
        assert (out / r["size"] / "model").is_dir() and (out / r["size"] / "result.json").is_file()
    assert summary["fit"]["points"] == 2 and summary["fit"]["alpha_se"] is None
    table = (out / "scaling.md").read_text("utf-8")
    assert "| 1x16 |" in table and "alpha =" in table
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()

    # run again: nothing is trained (gpt2.train.train would fail the test), the table is written again
    import gpt2.train

    def no_training(*args, **kwargs):
        raise AssertionError("a finished size was trained again")

    monkeypatch.setattr(gpt2.train, "train", no_training)
    main([a for a in argv if a != "--quiet"])  # --quiet would leave the lines out
    err = capsys.readouterr().err
    assert err.count("not retrained") == 2
    assert json.loads((out / "scaling.json").read_text("utf-8"))["sizes"] == summary["sizes"]


def test_a_size_whose_run_stopped_resumes(prepared: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import gpt2.train
    from gpt2.analysis.scaling import train_size

    cfg = ScaleConfig(parse_sizes("1x16"), str(prepared), 1024, str(tmp_path), [], seq_len=32, batch_size=8,
                      evals=2, eval_batches=1, device="cpu")  # fmt: skip
    step = gpt2.train.Trainer.train_step

    def stop_after_two(self):
        if self.progress.step == 2:  # the checkpoint of step 2 is written: stop as a killed run would
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(gpt2.train.Trainer, "train_step", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_size(cfg, cfg.sizes[0], progress=False)
    monkeypatch.setattr(gpt2.train.Trainer, "train_step", step)
    assert not (tmp_path / "1x16" / "result.json").exists()
    result = train_size(cfg, cfg.sizes[0], progress=False)
    assert result["steps"] == 4
    assert "resuming from step 2" in capsys.readouterr().err
    # the same folder under another budget is refused rather than resumed with another schedule
    (tmp_path / "1x16" / "result.json").unlink()
    with pytest.raises(GPT2Error, match="other settings"):
        train_size(ScaleConfig(**{**cfg.__dict__, "tokens": 4096}), cfg.sizes[0], progress=False)


def test_bad_options_are_clear_errors(prepared: Path, tmp_path: Path, capsys) -> None:
    for argv, message in [
        (["--sizes", "2x65"], "even"),
        (["--sizes", "1x16", "--tokens", "0"], "--tokens"),
        (["--sizes", "1x16", "--tasks", "nope"], "unknown task"),
        (["--sizes", "1x16", "--data", str(tmp_path)], "not a prepared data folder"),
    ]:
        full = ["scale", "--data", str(prepared), "--tokens", "256", "--out", str(tmp_path / "o"), *argv]
        with pytest.raises(SystemExit):
            main(full)
        assert message in capsys.readouterr().err
    with pytest.raises(GPT2Error, match="--tokens"):
        run_family(ScaleConfig(parse_sizes("1x16"), str(prepared), 0, str(tmp_path), []))


def test_task_plots_and_table_sit_beside_the_paper(tmp_path: Path) -> None:
    from gpt2.analysis.scaling import _paper_points, markdown_table, plot_family

    results = [
        {"size": name, "n_layer": layers, "n_head": 1, "n_embd": width, "params": 0, "tokens": 1000,
         "non_embedding_params": non_embedding_params(layers, width), "val_loss": loss,
         "tasks": {"lambada": {"acc_stopword_filter": acc, "ppl": ppl, "n": 10}}}
        for name, layers, width, loss, acc, ppl in [("1x32", 1, 32, 5.0, 1.0, 900.0), ("2x64", 2, 64, 4.5, 2.0, 500.0)]
    ]  # fmt: skip
    law = fit_power_law([r["non_embedding_params"] for r in results], [r["val_loss"] for r in results])
    written = plot_family(results, law, tmp_path)
    assert [p.name for p in written] == ["scaling.png", "scaling_tasks.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    # Table 3's LAMBADA accuracy (with the stop-word filter) for the paper's four sizes
    assert [v for _, v in _paper_points("lambada", "acc_stopword_filter")] == [45.99, 55.48, 60.12, 63.24]
    assert _paper_points("hellaswag", "acc") == []
    table = markdown_table(results, law)
    assert "lambada acc_stopword_filter" in table and "| 2x64 |" in table
