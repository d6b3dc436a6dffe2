"""lm-evaluation-harness's own tasks, run on local files: its documents built from the shared data's records, and its
task configurations (its YAML, its preprocessing functions) with only the data set's location changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

HARNESS_VERSION = "0.4.13"  # the version the protocols name (race.py, hellaswag.py)


def race_doc(record: dict, questions: int | None = None) -> dict[str, str]:
    """The harness's RACE document (its data set EleutherAI/race: one row per article, `problems` a Python literal
    of the questions) for an official RACE record, keeping its first `questions` questions (the last one is the
    one the harness asks)."""
    rows = zip(record["questions"], record["options"], record["answers"], strict=True)
    problems = [{"answer": a, "options": o, "question": q} for q, o, a in rows][:questions]
    return {"article": record["article"], "problems": repr(problems), "example_id": record["id"]}


def task(yaml: str, docs: list[dict[str, Any]], folder: Path, split: str, **overrides: Any):
    """The harness's task configured by lm_eval/tasks/`yaml` (its YAML, functions and metrics, as `lm_eval --tasks`
    loads it), reading `docs` from a local JSON Lines file as its `split` instead of downloading its data set;
    `overrides` change other fields of its configuration (num_fewshot, fewshot_split, ...)."""
    lm_eval = pytest.importorskip("lm_eval")
    assert lm_eval.__version__ == HARNESS_VERSION, f"the protocols name lm-evaluation-harness {HARNESS_VERSION}"
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / yaml)
    path = folder / f"{config['task']}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    splits = ("training_split", "validation_split", "test_split")
    config.update(dict.fromkeys(splits), **{f"{split}_split": split})
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(path)}, "cache_dir": str(folder / "hf-datasets")},
    )
    config.update(overrides)
    return ConfigurableTask(config=config)
