"""Model folders in Hugging Face's GPT-2 layout: config.json + model.safetensors (+ tokenizer files).

The layout is Hugging Face's so that our checkpoints and theirs are interchangeable. Two differences from our
module tree are handled here and nowhere else: OpenAI's Conv1D stores the four projection matrices as
(in, out), the transpose of nn.Linear; and hub files may lack the `transformer.` prefix, the tied lm_head, or
carry the attention-mask buffers (`attn.bias`, `attn.masked_bias`) of older releases.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import GPT2Error
from gpt2.hub import HUB_MODELS, snapshot
from gpt2.model import GPT, GPTConfig

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
# Hugging Face GPT-2 options whose other values change the math; we only implement GPT-2's own.
FIXED_HF_OPTIONS = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and a rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give them the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve(path_or_name: str | Path) -> Path:
    """A local model folder for a path, or for an official model name (downloaded and cached)."""
    path = Path(path_or_name)
    if path.is_dir():
        return path
    if str(path_or_name) in HUB_MODELS and not path.exists():
        return snapshot(str(path_or_name), HUB_FILES)
    if path.exists():
        raise GPT2Error(f"{path}: expected a model folder (config.json + model.safetensors), found a file")
    raise GPT2Error(
        f"{path}: no such model folder; pass a folder holding config.json + model.safetensors, "
        f"or one of the official names {', '.join(HUB_MODELS)}"
    )


def config_from_hf(hf: dict[str, Any], source: Path) -> GPTConfig:
    if hf.get("model_type", "gpt2") != "gpt2":
        raise GPT2Error(f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    for key, allowed in FIXED_HF_OPTIONS.items():
        if key in hf and hf[key] not in allowed:
            raise GPT2Error(f"{source}: {key}={hf[key]!r} is not GPT-2's architecture (expected {allowed[0]!r})")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise GPT2Error(f"{source}: n_inner={hf['n_inner']} is not GPT-2's 4 * n_embd")
    try:
        return GPTConfig(
            vocab_size=hf.get("vocab_size", 50257),
            n_positions=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            dropout=float(hf.get("resid_pdrop", 0.0)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        )
    except GPT2Error as e:
        raise GPT2Error(f"{source}: {e}") from None


def config_to_hf(config: GPTConfig, eos_token_id: int | None = None) -> dict[str, Any]:
    eos = config.vocab_size - 1 if eos_token_id is None else eos_token_id  # GPT-2 puts <|endoftext|> last
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def read_config(folder: Path) -> GPTConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise GPT2Error(f"{config_file}: missing; a model folder holds config.json + model.safetensors")
    try:
        hf = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GPT2Error(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise GPT2Error(f"{config_file}: expected a JSON object")
    return config_from_hf(hf, config_file)


def read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st, binf = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(st), st
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise GPT2Error(f"{st}: corrupt or truncated safetensors file ({e})") from None
    if binf.is_file():
        try:
            state = torch.load(binf, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        except Exception as e:
            raise GPT2Error(f"{binf}: cannot be read as a PyTorch state dict ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise GPT2Error(f"{binf}: expected a state dict of tensors")
        return state, binf
    raise GPT2Error(f"{folder}: no model.safetensors or pytorch_model.bin")


def hf_to_ours(tensors: dict[str, torch.Tensor], model: GPT, source: Path) -> dict[str, torch.Tensor]:
    """Rename and transpose Hugging Face tensors into our state dict, checking names and shapes."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers of old releases; the head is tied to wte
        key = name if name.startswith("transformer.") else f"transformer.{name}"
        if key not in expected:
            c = model.config
            raise GPT2Error(
                f"{source}: unexpected tensor {name!r}; config.json says n_layer={c.n_layer}, so the config does not "
                f"match the weights (or this is not a GPT-2 checkpoint)"
            )
        if key.endswith(CONV1D_WEIGHTS) and tensor.dim() == 2:
            tensor = tensor.t().contiguous()  # nn.Linear's (out, in), row by row as decoding reads it
        if tensor.shape != expected[key]:
            raise GPT2Error(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json implies "
                f"{tuple(expected[key])}; the config does not match the weights"
            )
        state[key] = tensor
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise GPT2Error(f"{source}: missing tensors {shown}")
    return state


def load_model(
    path_or_name: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> GPT:
    folder = resolve(path_or_name)
    config = read_config(folder)
    tensors, source = read_tensors(folder)
    with torch.device("meta"):  # no time spent on random init of weights that are overwritten next
        model = GPT(config)
    state = hf_to_ours(tensors, model, source)
    model.load_state_dict(state, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced wte; re-tie
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return model.eval()


def save_model(model: GPT, path: str | Path, tokenizer: Any = None) -> None:
    """Write config.json + model.safetensors (Hugging Face layout) and, when given, the tokenizer's files."""
    from safetensors.torch import save

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        tensor = tensor.detach().to("cpu")
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        tensors[key] = tensor.contiguous()
    eos = getattr(tokenizer, "eot_id", None)
    config = config_to_hf(model.config, eos_token_id=eos)
    config["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    atomic_write(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
