"""The `gpt2` command: help, errors and `gpt2 generate`, run in-process on a tiny model with GPT-2's vocabulary."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from gpt2 import GPT, GPTConfig, generate
from gpt2.cli import COMMANDS, main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A tiny random model over GPT-2's real vocabulary, saved with its tokenizer: a valid model folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    GPT(GPTConfig(vocab_size=50257, n_positions=64, n_layer=2, n_head=2, n_embd=32)).save_pretrained(
        folder, tokenizer=gpt2_tokenizer
    )
    return folder


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ gpt2
def test_help_lists_every_command_on_one_line(capsys) -> None:
    code, out, _ = run(capsys, ["--help"])
    assert code == 0
    for name, (_, summary) in COMMANDS.items():
        [line] = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert summary in line
    assert run(capsys, [])[1] == out


def test_unknown_command_is_one_error_line(capsys) -> None:
    code, out, err = run(capsys, ["fly"])
    assert code != 0 and out == ""
    assert err.startswith("error: unknown command 'fly'") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ gpt2 generate
def test_generate_help(capsys) -> None:
    code, out, _ = run(capsys, ["generate", "--help"])
    assert code == 0
    for option in ["--model", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed"]:
        assert option in out
    for option in ["--num-samples", "--stream", "--stop", "--device", "--dtype", "--lookahead"]:
        assert option in out


def test_temperature_zero_is_greedy_and_prints_prompt_plus_completion(capsys, model_dir: Path, gpt2_tokenizer) -> None:
    code, out, err = run(capsys, ["generate", "--model", str(model_dir), "--prompt", "Hello", "--temperature", "0",
                                  "--max-new-tokens", "12"])  # fmt: skip
    assert code == 0, err
    model = GPT.from_pretrained(model_dir)
    [expected] = generate(model, gpt2_tokenizer, "Hello", 12, temperature=0)
    assert out == "Hello" + expected + "\n" and expected


def test_seed_repeats_and_samples_are_separated(capsys, model_dir: Path) -> None:
    argv = ["generate", "--model", str(model_dir), "--prompt", "Once", "--seed", "5", "--num-samples", "3",
            "--max-new-tokens", "10"]  # fmt: skip
    code, out, _ = run(capsys, argv)
    assert code == 0 and out == run(capsys, argv)[1]
    lines = out.splitlines()
    assert [lines[i] for i in (0, 2, 4)] == [f"{'=' * 30} SAMPLE {i} of 3 {'=' * 30}" for i in (1, 2, 3)]
    samples = [lines[i] for i in (1, 3, 5)]  # a tiny random model's text: no newline in 10 tokens here
    assert all(s.startswith("Once") for s in samples) and len(set(samples)) == 3
    assert out != run(capsys, [*argv[:-4], "6", *argv[-4:]])[1]  # another seed, other text


def test_stream_prints_the_same_text(capsys, model_dir: Path) -> None:
    argv = ["generate", "--model", str(model_dir), "--prompt", "The", "--seed", "1", "--max-new-tokens", "15",
            "--top-p", "0.9"]  # fmt: skip
    plain = run(capsys, argv)
    streamed = run(capsys, [*argv, "--stream"])
    assert plain[0] == streamed[0] == 0 and plain[1] == streamed[1]


def test_lookahead_prints_the_same_greedy_text(capsys, model_dir: Path) -> None:
    argv = ["generate", "--model", str(model_dir), "--prompt", "one two one two one", "--temperature", "0",
            "--max-new-tokens", "25", "--num-samples", "2"]  # fmt: skip
    plain = run(capsys, argv)
    for extra in (["--lookahead", "4"], ["--lookahead", "4", "--stream"]):
        assert run(capsys, [*argv, *extra]) == plain
    code, _, err = run(capsys, [*argv, "--lookahead", "-1"])
    assert code != 0 and "--lookahead must be >= 0" in err


def test_prompt_from_stdin(capsys, monkeypatch, model_dir: Path) -> None:
    argv = ["generate", "--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "5"]
    expected = run(capsys, [*argv, "--prompt", "From a pipe"])[1]
    for extra in ([], ["--prompt", "-"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("From a pipe\n"))
        assert run(capsys, [*argv, *extra])[1] == expected


def test_stop_and_dtype_options(capsys, model_dir: Path) -> None:
    argv = ["generate", "--model", str(model_dir), "--prompt", "A", "--temperature", "0", "--max-new-tokens", "20"]
    completion = run(capsys, argv)[1].removeprefix("A").removesuffix("\n")
    stop = completion[len(completion) // 2 : len(completion) // 2 + 2]
    assert run(capsys, [*argv, "--stop", stop])[1] == "A" + completion[: completion.index(stop)] + "\n"
    code, out, err = run(capsys, [*argv, "--dtype", "bfloat16", "--device", "cpu"])
    assert code == 0 and out.startswith("A"), err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/none", "--prompt", "x"], "error: {tmp}/none: no such model folder"),
        (["--model", "{model}", "--prompt", "x", "--top-p", "2"], "error: top_p must be in (0, 1], got 2.0"),
        (["--model", "{model}", "--prompt", "x", "--temperature", "-1"], "error: temperature must be >= 0"),
        (["--model", "{model}", "--prompt", "x", "--num-samples", "0"], "error: --num-samples must be >= 1, got 0"),
        (
            ["--model", "{model}", "--prompt", "x", "--device", "toaster"],
            "error: device 'toaster' is not a device name",
        ),
        (["--model", "{bare}", "--prompt", "x"], "error: {bare}: holds neither encoder.json + vocab.bpe nor"),
    ],
)
def test_errors_are_one_clear_line(capsys, tmp_path: Path, model_dir: Path, args: list[str], message: str) -> None:
    bare = tmp_path / "bare"  # a model folder saved without its tokenizer
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    places = dict(tmp=str(tmp_path), model=str(model_dir), bare=str(bare))
    code, out, err = run(capsys, ["generate", *(a.format(**places) for a in args)])
    assert code == 1 and out == ""
    assert err.startswith(message.format(**places)) and err.count("\n") == 1


def test_tokenizer_larger_than_the_model_is_refused(capsys, tmp_path: Path, model_dir: Path) -> None:
    torch.manual_seed(0)
    GPT(GPTConfig(vocab_size=1000, n_positions=64, n_layer=1, n_head=2, n_embd=32)).save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    code, _, err = run(capsys, ["generate", "--model", str(tmp_path), "--prompt", "x"])
    assert code == 1 and "the tokenizer has 50257 tokens but the model only 1000" in err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_of_every_command_says_what_it_is(name: str) -> None:
    import argparse
    import importlib

    parsers = [importlib.import_module(f"gpt2.commands.{COMMANDS[name][0]}").parser()]
    for p in parsers:  # and the subcommands' own parsers (gpt2 tokenizer train|encode|decode)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
            elif not isinstance(action, argparse._HelpAction):
                words = (action.help or "").replace("(default", "").split()
                assert len(words) >= 3, f"gpt2 {name}: {action.option_strings or action.dest} has no sentence of help"


@pytest.mark.parametrize(
    "argv", [["--help"], ["generate", "--help"], ["generate", "--prompt", "x", "--max-new-tokens", "3"]]
)
def test_a_reader_that_goes_away_ends_quietly(model_dir: Path, argv: list[str]) -> None:
    """`gpt2 ... | head`, or a reader gone before the first line: no BrokenPipeError traceback, exit 0."""
    import os
    import subprocess
    import sys

    if argv[-1] == "3":
        argv = [*argv, "--model", str(model_dir)]
    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write fails with EPIPE
    try:
        env = {**os.environ, "GPT2_CPU_KERNELS": "0"}  # no kernel build: what matters here is the output
        cmd = [sys.executable, "-m", "gpt2", *argv]
        proc = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, timeout=300, env=env)
    finally:
        os.close(write)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
