"""`gpt2 plot`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2.errors import GPT2Error
from gpt2.plot import plot_runs, read_metrics


def write_run(folder: Path, n: int) -> Path:
    folder.mkdir()
    rows = [
        {"step": s, "tokens": 100 * s, "loss": 5.0 / s} | ({"val_loss": 5.5 / s} if s % 5 == 0 else {})
        for s in range(1, n)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9')  # cut short
    return folder


def test_plot_writes_png_for_several_runs(tmp_path: Path) -> None:
    a, b = write_run(tmp_path / "a", 20), write_run(tmp_path / "b", 30)
    assert len(read_metrics(a)) == 19  # the torn last line of a killed run is ignored
    out = plot_runs([str(a), str(b)], tmp_path / "loss.png", log_x=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_errors(tmp_path: Path) -> None:
    with pytest.raises(GPT2Error, match="no metrics.jsonl"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(GPT2Error, match="metrics.jsonl:2: not valid JSON"):
        read_metrics(tmp_path)
