"""What a model or a training run leaves on disk, read and written on state dicts (no model class is imported
here, so `GPT.from_pretrained` reaches this module without an import circle).

Model folders use Hugging Face's GPT-2 layout, config.json + model.safetensors (+ tokenizer files), so that our
checkpoints and theirs are interchangeable. Two differences from our module tree are handled here and nowhere
else: OpenAI's Conv1D stores the four projection matrices as (in, out), the transpose of nn.Linear; and hub files
may lack the `transformer.` prefix, the tied lm_head, or carry the attention-mask buffers (`attn.bias`,
`attn.masked_bias`) of older releases.

Training checkpoints are run_dir/checkpoints/step_NNNNNNN/: a model folder plus training_state.pt (optimizer,
every rank's RNG state, data position, step counters), renamed into place only whole; the last k and the best are
kept. `save_training_checkpoint` / `load_training_checkpoint` hold the one difference between sharded (FSDP) and
replicated (one process, DDP) runs: how full state dicts are gathered and scattered.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2.errors import GPT2Error
from gpt2.hub import HUB_MODELS, snapshot
from gpt2.io import atomic_write, disk_full

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
TIED = "lm_head.weight"  # the output layer is the token embedding; stored once, as transformer.wte.weight
# Hugging Face GPT-2 options whose other values change the math; we only implement GPT-2's own.
FIXED_HF_OPTIONS = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}
TRAINING_STATE = "training_state.pt"


# ------------------------------------------------------------------------------------------------ model folders
def resolve(path_or_name: str | os.PathLike) -> Path:
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


def config_from_hf(hf: dict[str, Any], source: Path) -> dict[str, Any]:
    """GPTConfig's fields from a Hugging Face config.json, refusing options that are not GPT-2's architecture."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise GPT2Error(f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    for key, allowed in FIXED_HF_OPTIONS.items():
        if key in hf and hf[key] not in allowed:
            raise GPT2Error(f"{source}: {key}={hf[key]!r} is not GPT-2's architecture (expected {allowed[0]!r})")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise GPT2Error(f"{source}: n_inner={hf['n_inner']} is not GPT-2's 4 * n_embd")
    return dict(
        vocab_size=hf.get("vocab_size", 50257),
        n_positions=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=float(hf.get("resid_pdrop", 0.0)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def config_to_hf(config: dict[str, Any], eos_token_id: int | None = None) -> dict[str, Any]:
    """A Hugging Face config.json for GPTConfig's fields."""
    eos = config["vocab_size"] - 1 if eos_token_id is None else eos_token_id  # GPT-2 puts <|endoftext|> last
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config["vocab_size"],
        "n_positions": config["n_positions"],
        "n_ctx": config["n_positions"],
        "n_embd": config["n_embd"],
        "n_layer": config["n_layer"],
        "n_head": config["n_head"],
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config["dropout"],
        "embd_pdrop": config["dropout"],
        "attn_pdrop": config["dropout"],
        "layer_norm_epsilon": config["layer_norm_epsilon"],
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def read_config(folder: Path) -> dict[str, Any]:
    """GPTConfig's fields from folder/config.json."""
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


def read_quantization(folder: Path) -> Any:
    """config.json's `quantization` entry (gpt2.quantize's format, checked there), or None for a float folder."""
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # read_config has refused such a file already, with the reason
    return hf.get("quantization") if isinstance(hf, dict) else None


def read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of model.safetensors (or of pytorch_model.bin, read without unpickling code) and the file."""
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


def hf_to_ours(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Size],
    n_layer: int,
    source: Path,
    int8: frozenset[str] | set[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Rename and transpose Hugging Face tensors into our state dict, checking them against `expected` (our
    state dict's shapes, without the tied lm_head unless it is expected, as in a quantised folder's own int8
    output layer). The tensors named in `int8` must be int8 and no others may be, so that a quantised file
    never loads as a float one, nor the reverse."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or (name == TIED and TIED not in expected):
            continue  # causal-mask buffers of old releases; the head is tied to wte
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        if not int8 and (tensor.dtype == torch.int8 or name.endswith(".weight_scale")):
            raise GPT2Error(
                f"{source}: tensor {name!r} belongs to an int8-quantised model, but config.json has no quantization "
                "entry; the config does not match the weights"
            )
        if key not in expected:
            raise GPT2Error(
                f"{source}: unexpected tensor {name!r}; config.json says n_layer={n_layer}, so the config does not "
                f"match the weights (or this is not a GPT-2 checkpoint)"
            )
        if key.endswith(CONV1D_WEIGHTS) and tensor.dim() == 2:
            tensor = tensor.t().contiguous()  # nn.Linear's (out, in), row by row as decoding reads it
        if tensor.shape != expected[key]:
            raise GPT2Error(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json implies "
                f"{tuple(expected[key])}; the config does not match the weights"
            )
        if (tensor.dtype == torch.int8) != (key in int8):
            want = "int8, as config.json's quantization entry says" if key in int8 else "floating point"
            raise GPT2Error(
                f"{source}: tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')} but should be {want}; "
                "the config does not match the weights"
            )
        state[key] = tensor
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise GPT2Error(f"{source}: missing tensors {shown}")
    return state


def write_model_folder(
    folder: str | os.PathLike,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    tokenizer: Any = None,
    quantization: dict[str, Any] | None = None,
) -> None:
    """Write our state dict and GPTConfig's fields as config.json + model.safetensors (Hugging Face layout) and,
    when given, the tokenizer's files; each file atomically. With `quantization` (gpt2.quantize's entry for
    config.json) the output layer is the model's own int8 matrix, stored as lm_head.weight, not the tied one."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    dtype = None
    for key, tensor in state.items():
        if key == TIED and quantization is None:
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        tensor = tensor.detach().to("cpu")
        dtype = dtype or tensor.dtype
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        tensors[key] = tensor.contiguous()
    hf = config_to_hf(config, eos_token_id=getattr(tokenizer, "eot_id", None))
    hf["torch_dtype"] = str(dtype or torch.float32).removeprefix("torch.")
    if quantization is not None:
        hf["quantization"] = quantization
    atomic_write(folder / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    atomic_write(folder / "config.json", json.dumps(hf, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------ training runs
@dataclass
class TrainingProgress:
    """Where a run stands, besides weights, optimizer and data position."""

    step: int = 0
    tokens_seen: int = 0
    best_val: float = float("inf")
    best_step: int | None = None


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The run's complete training checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if (p / TRAINING_STATE).is_file()) if root.is_dir() else []


def _distributed() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_training_checkpoint(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: TrainingProgress,
    loader_state: dict[str, int],
    *,
    sharded: bool = False,
    tokenizer: Any = None,
    keep_last: int = 2,
) -> None:
    """Write run_dir/checkpoints/step_N (model folder + training state), renamed into place whole, then update
    run_dir/model/ and drop checkpoints other than the last `keep_last` and the best.

    Under torch.distributed every rank calls this (gathering states is collective) and rank 0 writes.
    `model` is the unwrapped module (FSDP shards it in place); `sharded`: its parameters are FSDP shards.
    """
    import torch.distributed as dist

    rank, world_size = _distributed()
    device = next(model.parameters()).device
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    else:
        model_state, optim_state = model.state_dict(), optimizer.state_dict()
    rows = _stored_rows(model, {k: v.shape for k, v in model_state.items()})
    optim_state = _fit_optimizer_state(optim_state, model, optimizer, rows, cut=True)
    rngs: list[Any] = [_rng_state(device)]
    if world_size > 1:
        rngs = [None] * world_size
        dist.all_gather_object(rngs, _rng_state(device))
    if rank != 0:
        return
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    final = root / f"step_{progress.step:07d}"
    tmp = root / f".tmp_step_{progress.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    config = model.config.to_dict()
    try:
        write_model_folder(tmp, model_state, config, tokenizer)
    except GPT2Error:  # a full disk: drop the half-written folder, keep the checkpoints that are whole
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    state = {
        "step": progress.step,
        "tokens_seen": progress.tokens_seen,
        "best_val": progress.best_val,
        "best_step": progress.best_step,
        "optimizer": optim_state,
        "rng": rngs,
        "loader": loader_state,
        "world_size": world_size,
    }
    tmp_state = tmp / TRAINING_STATE
    try:
        torch.save(state, tmp_state)
        with open(tmp_state, "rb") as f:
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch's writer reports a full disk as a RuntimeError of its own
        shutil.rmtree(tmp, ignore_errors=True)
        needed = sum(t.numel() * t.element_size() for t in _tensors(optim_state))
        if getattr(e, "errno", None) != errno.ENOSPC and shutil.disk_usage(root).free >= needed:
            raise
        raise disk_full(tmp_state, needed) from None
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_model_folder(run_dir / "model", model_state, config, tokenizer)
    keep = {p.name for p in checkpoint_dirs(run_dir)[-keep_last:]} if keep_last > 0 else set()
    keep.add(final.name)
    if progress.best_step is not None:
        keep.add(f"step_{progress.best_step:07d}")
    for p in checkpoint_dirs(run_dir):
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _stored_rows(model: torch.nn.Module, shapes: dict[str, Any]) -> dict[str, int]:
    """Parameters that the state dict stores with fewer rows than the module holds (the vocabulary matrix's
    padding, see gpt2.model.PAD_VOCAB_TO): name -> stored rows."""
    return {
        name: shapes[name][0]
        for name, p in model.named_parameters()
        if name in shapes and len(shapes[name]) and shapes[name][0] < p.shape[0]
    }


def _fit_optimizer_state(
    optim_state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: dict[str, int],
    *,
    cut: bool,
) -> dict[str, Any]:
    """optim_state with the per-parameter tensors of padded parameters cut to their stored rows (cut=True, for
    saving) or padded back with zeros (for loading): checkpoints never hold padding, and the padding's moments
    are zeros in training too, so a resumed run continues exactly. Keys are parameter indices (one process) or
    names (FSDP's full state dicts); the live optimizer state is left alone."""
    if not rows:
        return optim_state
    by_id = {id(p): (name, p) for name, p in model.named_parameters()}
    ordered = [by_id[id(p)] for group in optimizer.param_groups for p in group["params"] if id(p) in by_id]
    named = {**dict(enumerate(ordered)), **{name: (name, p) for name, p in ordered}}
    state = {}
    for key, per_param in optim_state["state"].items():
        name, p = named.get(key, (None, None))
        if name not in rows:
            state[key] = per_param
            continue
        n, full = rows[name], p.shape[0]
        fitted = {}
        for k, v in per_param.items():
            if cut and isinstance(v, torch.Tensor) and v.dim() and v.shape == p.shape:
                v = v[:n].clone()  # a view would save the whole padded storage
            elif not cut and isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n and v.shape[1:] == p.shape[1:]:
                v = torch.cat([v, v.new_zeros(full - n, *v.shape[1:])])
            fitted[k] = v
        state[key] = fitted
    return {**optim_state, "state": state}


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors inside nested dicts and lists (an optimizer's state)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    return []


def load_training_checkpoint(
    run_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, sharded: bool = False
) -> tuple[TrainingProgress, dict[str, int]]:
    """Restore the latest checkpoint of run_dir into `model` and `optimizer` and this rank's RNG state; returns
    the progress and the data loader's state. Collective under torch.distributed, like saving."""
    found = checkpoint_dirs(run_dir)
    if not found:
        raise GPT2Error(f"{run_dir}: no checkpoint to resume from (checkpoints/step_*/{TRAINING_STATE})")
    latest = found[-1]
    try:
        state = torch.load(latest / TRAINING_STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GPT2Error(f"{latest / TRAINING_STATE}: cannot be read ({type(e).__name__}: {e})") from None
    rank, world_size = _distributed()
    if state["world_size"] != world_size and rank == 0:
        import warnings

        warnings.warn(
            f"{latest} was written by {state['world_size']} processes and this run has {world_size}: "
            "it continues, but not exactly as the original would have",
            stacklevel=3,
        )
    config = read_config(latest)
    tensors, source = read_tensors(latest)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED}
    weights = hf_to_ours(tensors, expected, config["n_layer"], source)
    weights[TIED] = weights["transformer.wte.weight"]
    state["optimizer"] = _fit_optimizer_state(
        state["optimizer"], model, optimizer, _stored_rows(model, expected), cut=False
    )
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    else:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"][rank % len(state["rng"])], next(model.parameters()).device)
    progress = TrainingProgress(state["step"], state["tokens_seen"], state["best_val"], state["best_step"])
    return progress, state["loader"]
