"""Model folders in Hugging Face's layout: interchange with transformers both ways, and clear errors on bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2 import GPT, GPT2Error, GPTConfig
from gpt2.hub import download, sha256_file

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, n_positions=32, n_layer=2, n_head=4, n_embd=32)


def ours_tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY)).eval()
    with torch.no_grad():  # our init zeroes biases and sets LayerNorms to 1/0: randomise them so they matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A tiny model saved by transformers (safetensors)."""
    torch.manual_seed(1)
    config = transformers.GPT2Config(**TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


# ------------------------------------------------------------------------------------------------ interchange
def test_our_save_loads_in_transformers_with_the_same_logits(tmp_path: Path, gpt2_tokenizer) -> None:
    ours = ours_tiny()
    ours.save_pretrained(tmp_path, tokenizer=gpt2_tokenizer)
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 2 and config["eos_token_id"] == 50256
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-5, rtol=1e-5)
    # and back again: our loader reads our own folder to the same tensors
    again = GPT.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.lm_head.weight is again.transformer.wte.weight


def test_pytorch_model_bin_loads_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(2)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)).eval()
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")  # the older releases' format (a pickle)
    ours = GPT.from_pretrained(tmp_path)
    idx = torch.randint(0, TINY["vocab_size"], (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, atol=1e-5, rtol=1e-5)
    # Conv1D's (in, out) matrices become nn.Linear's (out, in) in memory too: the layout decoding's kernel reads
    assert all(p.is_contiguous() for p in ours.parameters())
    assert all(p.is_contiguous() for p in GPT.from_pretrained(tmp_path, dtype=torch.bfloat16).parameters())


class Exploit:
    """Unpickling this creates a file: the kind of side effect weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused(folder: Path, tmp_path: Path) -> None:
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"wte.weight": Exploit(marker)}, protocol=2))
    with pytest.raises(GPT2Error, match=r"pytorch_model\.bin: cannot be read as a PyTorch state dict"):
        GPT.from_pretrained(folder)
    assert not marker.exists()


def test_official_hub_layout_loads(folder: Path) -> None:
    """OpenAI's checkpoints on the hub lack the `transformer.` prefix and carry causal-mask buffers."""
    tensors = load_file(folder / "model.safetensors")
    legacy = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    for i in range(TINY["n_layer"]):
        legacy[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
        legacy[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(legacy, folder / "model.safetensors")
    model = GPT.from_pretrained(folder)
    torch.testing.assert_close(model.transformer.h[1].mlp.c_fc.weight, legacy["h.1.mlp.c_fc.weight"].t())


def test_dtype_and_device_options(folder: Path) -> None:
    model = GPT.from_pretrained(folder, dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and not model.training


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(GPT2Error, match=r"nope: no such model folder; pass a folder holding config\.json"):
        GPT.from_pretrained(tmp_path / "nope")


def test_a_file_instead_of_a_folder(folder: Path) -> None:
    with pytest.raises(GPT2Error, match="expected a model folder .* found a file"):
        GPT.from_pretrained(folder / "config.json")


def test_missing_config(folder: Path) -> None:
    (folder / "config.json").unlink()
    with pytest.raises(GPT2Error, match=r"config\.json: missing"):
        GPT.from_pretrained(folder)


def test_config_that_is_not_json(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")
    with pytest.raises(GPT2Error, match=r"config\.json: not valid JSON"):
        GPT.from_pretrained(folder)


def test_missing_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    with pytest.raises(GPT2Error, match=r"m: no model\.safetensors or pytorch_model\.bin"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors(folder: Path, damage: str) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x07" * 300, "empty": b""}[damage])
    with pytest.raises(GPT2Error, match=r"model\.safetensors: corrupt or truncated safetensors file"):
        GPT.from_pretrained(folder)


def test_config_wider_than_the_tensors(folder: Path) -> None:
    edit_config(folder, n_embd=64)
    with pytest.raises(GPT2Error, match=r"model\.safetensors: tensor .* has shape .* config\.json implies"):
        GPT.from_pretrained(folder)


def test_config_with_more_layers_than_the_tensors(folder: Path) -> None:
    edit_config(folder, n_layer=3)
    with pytest.raises(GPT2Error, match=r"model\.safetensors: missing tensors transformer\.h\.2\."):
        GPT.from_pretrained(folder)


def test_config_with_fewer_layers_than_the_tensors(folder: Path) -> None:
    edit_config(folder, n_layer=1)
    with pytest.raises(GPT2Error, match=r"model\.safetensors: unexpected tensor 'transformer\.h\.1\..*n_layer=1"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_type": "bert"}, "model_type is 'bert', not 'gpt2'"),
        ({"activation_function": "relu"}, "activation_function='relu' is not GPT-2's architecture"),
        ({"n_inner": 100}, "n_inner=100 is not GPT-2's 4 \\* n_embd"),
        ({"n_head": 5}, "n_embd \\(32\\) must be divisible by n_head \\(5\\)"),
    ],
)
def test_config_that_is_not_gpt2(folder: Path, changes: dict, message: str) -> None:
    edit_config(folder, **changes)
    with pytest.raises(GPT2Error, match=r"config\.json: " + message):
        GPT.from_pretrained(folder)


def test_offline_official_name_is_one_clear_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)  # so that no local folder named gpt2 is picked up
    with pytest.raises(GPT2Error) as info:
        GPT.from_pretrained("gpt2")
    message = str(info.value)
    assert "could not download 'gpt2' from the Hugging Face hub" in message
    assert "pass a local folder holding config.json and model.safetensors" in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------------ files
def test_download_verifies_the_checksum_and_caches(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights" * 1000)
    good = sha256_file(source)
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(GPT2Error, match="checksum mismatch .* not saved"):
        download(source.as_uri(), dest, sha256="0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert download(source.as_uri(), dest, sha256=good).read_bytes() == source.read_bytes()
    source.unlink()  # cached: no second fetch
    assert download(source.as_uri(), dest, sha256=good) == dest
    with pytest.raises(GPT2Error, match="could not download .*; fetch it by hand and put it at"):
        download(source.as_uri(), tmp_path / "other.bin")


# ------------------------------------------------------------------------------------------------ training runs
def test_training_checkpoints_restore_everything_and_keep_the_last_and_the_best(tmp_path: Path) -> None:
    from gpt2.checkpoint import TrainingProgress, checkpoint_dirs, load_training_checkpoint, save_training_checkpoint

    def run() -> tuple[GPT, torch.optim.Optimizer]:
        model = ours_tiny()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, optimizer = run()
    idx = torch.randint(0, TINY["vocab_size"], (2, 8))
    for step in range(1, 5):  # four steps, a checkpoint after each; step 2 has the best val loss
        model(idx, idx)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
        progress = TrainingProgress(
            step, step * 16, best_val=1.0 if step >= 2 else 2.0, best_step=2 if step >= 2 else 1
        )
        save_training_checkpoint(tmp_path, model, optimizer, progress, {"epoch": 0, "cursor": step}, keep_last=1)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000002", "step_0000004"]
    assert GPT.from_pretrained(tmp_path / "model").state_dict().keys() == model.state_dict().keys()
    expected_draw = torch.rand(3)  # the RNG state saved with step 4 is the one before this draw

    fresh, fresh_optimizer = run()
    torch.manual_seed(123)
    got, loader = load_training_checkpoint(tmp_path, fresh, fresh_optimizer)
    assert got == progress and loader == {"epoch": 0, "cursor": 4}
    assert torch.equal(torch.rand(3), expected_draw)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    state, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert all(torch.equal(state[k]["exp_avg"], restored[k]["exp_avg"]) for k in state)
    (checkpoint_dirs(tmp_path)[-1] / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GPT2Error, match="training_state.pt: cannot be read"):
        load_training_checkpoint(tmp_path, fresh, fresh_optimizer)
    with pytest.raises(GPT2Error, match="no checkpoint to resume from"):
        load_training_checkpoint(tmp_path / "elsewhere", fresh, fresh_optimizer)


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(small_disk) -> None:
    from gpt2.checkpoint import TrainingProgress, checkpoint_dirs, load_training_checkpoint, save_training_checkpoint

    model = ours_tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    weights = sum(p.numel() * 4 for p in model.parameters())  # float32 bytes, saved once per folder
    run = small_disk(f"{int(weights * 5.5) // 1024}k")  # room for one checkpoint (weights x 3) and model/, not two
    save_training_checkpoint(run, model, optimizer, TrainingProgress(step=1), {"epoch": 0, "cursor": 1})
    with pytest.raises(GPT2Error, match="the disk is full"):
        save_training_checkpoint(run, model, optimizer, TrainingProgress(step=2), {"epoch": 0, "cursor": 2})
    assert [p.name for p in checkpoint_dirs(run)] == ["step_0000001"]
    assert not list((run / "checkpoints").glob(".tmp*"))
    progress, _ = load_training_checkpoint(run, ours_tiny(), torch.optim.AdamW(ours_tiny().parameters()))
    assert progress.step == 1
