"""int8 weight-only quantisation (gpt2.quantize): the kernel's products equal torch's on the dequantised weights,
int8 decoding gives the tokens of a plain-PyTorch dequantised model, quantised folders round-trip exactly and
broken ones are refused, and `--dtype int8` works through the commands."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2 import GPT, GPTConfig, kernels
from gpt2.errors import GPT2Error
from gpt2.quantize import FORMAT, Int8Linear, is_quantized, quantize_int8, quantize_rows


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    # vocab 500: the embedding is padded to 512 rows, of which the output layer must take the first 500
    return GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=500, n_positions=64)).eval()


def dequantized_reference(model: GPT) -> GPT:
    """A float model computing exactly what the int8 one stands for: each int8 layer replaced by an nn.Linear
    holding weight * scale, run by torch alone (no gpt2 kernel)."""
    ref = copy.deepcopy(model)
    for parent in list(ref.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, Int8Linear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight.data = child.dequantized_weight(torch.float32)
                if child.bias is not None:
                    plain.bias.data = child.bias.detach().clone()
                setattr(parent, attr, plain)
    return ref


SHAPES = [(768, 2304), (3072, 768), (37, 5), (16, 1), (5, 3), (48, 9), (64, 7), (100, 33)]  # tails of 32 and 64


# every row count of one pass (1-8), then several passes of 8 and a remainder (a short prompt), up to the limit
@pytest.mark.parametrize("rows", [*range(1, kernels.MAX_ROWS + 1), 9, 21, kernels.INT8_KERNEL_ROWS])
@pytest.mark.parametrize("n_in,n_out", SHAPES)
def test_int8_kernel_equals_torch_on_dequantised_weights(gemv_int8, rows, n_in, n_out) -> None:
    torch.manual_seed(rows * 1000 + n_in)
    q, scale = quantize_rows(torch.randn(n_out, n_in))
    x, b = torch.randn(1, rows, n_in), torch.randn(n_out)
    w = kernels.dequantize(q, scale, torch.float32)
    # |outputs| ~ sqrt(n_in): float32 sums in another order differ by ~1e-6 of that
    torch.testing.assert_close(gemv_int8(x, q, scale, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gemv_int8(x, q, scale, None), F.linear(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_int8_kernel_takes_bfloat16_activations(gemv_int8, rows) -> None:
    torch.manual_seed(rows)
    q, scale = quantize_rows(torch.randn(40, 100))
    x, b = torch.randn(rows, 100).bfloat16(), torch.randn(40).bfloat16()
    y = gemv_int8(x, q, scale, b)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, 40)
    exact = F.linear(x.double(), kernels.dequantize(q, scale, torch.float64), b.double())
    torch.testing.assert_close(y.double(), exact, rtol=2**-8, atol=1e-3)  # one rounding to bfloat16


def test_int8_kernel_rejects_what_it_cannot_do(gemv_int8) -> None:
    q, scale = quantize_rows(torch.randn(8, 16))
    with pytest.raises(RuntimeError, match="int8 weights only"):
        gemv_int8(torch.randn(1, 16), q.float(), scale, None)
    with pytest.raises(RuntimeError, match=f"1 to {kernels.INT8_KERNEL_ROWS} rows"):
        gemv_int8(torch.randn(kernels.INT8_KERNEL_ROWS + 1, 16), q, scale, None)
    with pytest.raises(RuntimeError, match="one scale per weight row"):
        gemv_int8(torch.randn(1, 16), q, scale[:7], None)
    with pytest.raises(RuntimeError, match="contiguous"):
        gemv_int8(torch.randn(1, 8), q.t(), scale, None)


def test_quantize_rows_is_symmetric_per_row_and_within_half_a_step() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 50) * torch.tensor([1e-3, 1.0, 30.0, 0.5, 2.0, 1.0])[:, None]
    w[5] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    torch.testing.assert_close(scale[:5], w[:5].abs().amax(1) / 127)
    assert torch.equal(q[5], torch.zeros(50, dtype=torch.int8))
    error = (kernels.dequantize(q, scale, torch.float32) - w).abs()
    assert bool((error <= scale[:, None] / 2 * (1 + 1e-6)).all())
    q2, _ = quantize_rows(-w)
    assert torch.equal(q2, -q)


def test_linear_int8_without_the_kernel_and_for_many_rows_is_the_dequantised_matmul(gemv_int8, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(kernels, "gemv_int8_kernel", lambda: lambda *a: calls.append(a) or gemv_int8(*a))
    torch.manual_seed(0)
    q, scale = quantize_rows(torch.randn(24, 40))
    b = torch.randn(24)
    w = kernels.dequantize(q, scale, torch.float32)
    with torch.no_grad():
        many = torch.randn(2, kernels.INT8_KERNEL_ROWS // 2 + 1, 40)  # past the kernel's rows: a real matmul
        torch.testing.assert_close(kernels.linear_int8(many, q, scale, b), F.linear(many, w, b))
        assert not calls
        one = torch.randn(1, 40)
        with kernels.disabled():  # as where the kernel cannot be built
            assert torch.equal(kernels.linear_int8(one, q, scale, b), F.linear(one, w, b))
        assert not calls
        kernels.linear_int8(one, q, scale, b)
        assert len(calls) == 1


def test_quantize_int8_replaces_the_matrices_and_unties_the_output_layer() -> None:
    model = tiny()
    wte = model.transformer.wte.weight.detach().clone()
    quantize_int8(model)
    assert is_quantized(model)
    int8 = {n for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert len(int8) == 4 * model.config.n_layer + 1 and "lm_head" in int8
    assert model.lm_head.weight.shape == (500, 256)  # the vocabulary's rows, not the embedding's padding
    assert torch.equal(model.transformer.wte.weight, wte)  # lookups keep the float embedding
    assert model.new_cache(1, 8).k.dtype == torch.float32
    with pytest.raises(GPT2Error, match="already quantised"):
        quantize_int8(model)


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_int8_decoding_equals_a_plain_pytorch_dequantised_model(gemv_int8, batch) -> None:
    model = quantize_int8(tiny(1))
    reference = dequantized_reference(model)
    prompts = torch.randint(0, 500, (batch, 7), generator=torch.Generator().manual_seed(batch))
    fast = model.generate(prompts, 30, temperature=0)
    with kernels.disabled():
        plain = reference.generate(prompts, 30, temperature=0)
    assert torch.equal(fast, plain)
    assert torch.equal(model.generate(prompts, 30, temperature=0), fast)  # deterministic
    if batch == 1:
        assert torch.equal(model.generate(prompts, 30, temperature=0, lookahead=3), fast)  # the few-rows kernel
    with torch.no_grad(), kernels.disabled():
        torch.testing.assert_close(model(prompts), reference(prompts), rtol=1e-5, atol=1e-5)


def test_int8_is_close_to_float32(gemv_int8) -> None:
    model = tiny(2)
    prompts = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(prompts).log_softmax(-1)
        approx = quantize_int8(model)(prompts).log_softmax(-1)
    # per-row int8 steps are 1/254 of a row's range: log-probabilities move by a few hundredths at most
    assert float((exact - approx).abs().max()) < 0.05


def test_from_pretrained_int8_and_a_quantised_folder_round_trip_exactly(gemv_int8, tmp_path) -> None:
    tiny(3).save_pretrained(tmp_path / "float")
    model = GPT.from_pretrained(tmp_path / "float", dtype="int8")
    expected = quantize_int8(GPT.from_pretrained(tmp_path / "float"))
    assert model.state_dict().keys() == expected.state_dict().keys()
    for k, v in model.state_dict().items():
        assert v.dtype == expected.state_dict()[k].dtype and torch.equal(v, expected.state_dict()[k]), k
    model.save_pretrained(tmp_path / "int8")
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["quantization"] == FORMAT
    for dtype in (None, "int8"):
        again = GPT.from_pretrained(tmp_path / "int8", dtype=dtype)
        assert is_quantized(again)
        assert again.state_dict().keys() == model.state_dict().keys()
        for k, v in again.state_dict().items():
            assert v.dtype == model.state_dict()[k].dtype and torch.equal(v, model.state_dict()[k]), k
    prompt = torch.randint(0, 500, (1, 5))
    assert torch.equal(again.generate(prompt, 10, temperature=0), model.generate(prompt, 10, temperature=0))
    # the matrices take a quarter of their float32 bytes (the float embedding stays)
    sizes = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("float", "int8")}
    assert sizes["int8"] < sizes["float"]


def _edit_folder(src: Path, dst: Path, config=None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if config is not None:
        hf = json.loads((dst / "config.json").read_text())
        config(hf)
        (dst / "config.json").write_text(json.dumps(hf))
    if tensors is not None:
        t = load_file(dst / "model.safetensors")
        tensors(t)
        save_file(t, dst / "model.safetensors")
    return dst


def test_broken_or_mismatched_quantised_folders_are_refused(tmp_path) -> None:
    tiny(4).save_pretrained(tmp_path / "float")
    GPT.from_pretrained(tmp_path / "float", dtype="int8").save_pretrained(tmp_path / "int8")
    good = tmp_path / "int8"
    name = "h.0.mlp.c_fc.weight"
    key = f"transformer.{name}"
    cases = [
        (dict(config=lambda c: c["quantization"].update(version=2)), "quantization entry .* is not one this version"),
        (dict(config=lambda c: c.pop("quantization")), "int8-quantised model, but config.json has no quantization"),
        (dict(tensors=lambda t: t.update({key: t[key].float()})), f"{name}' is float32 but should be int8"),
        (dict(tensors=lambda t: t.pop(f"{key}_scale")), "missing tensors .*c_fc.weight_scale"),
        (dict(tensors=lambda t: t[f"{key}_scale"].mul_(-1)), "not finite and positive; the file is corrupt"),
        (dict(tensors=lambda t: t.update(extra=t["lm_head.weight"].clone())), "unexpected tensor 'extra'"),
    ]
    for i, (edit, message) in enumerate(cases):
        with pytest.raises(GPT2Error, match=message):
            GPT.from_pretrained(_edit_folder(good, tmp_path / f"case{i}", **edit))
    with pytest.raises(GPT2Error, match="holds int8 weights; load it with dtype='int8'"):
        GPT.from_pretrained(good, dtype=torch.float32)
    with pytest.raises(GPT2Error, match="dtype must be a torch dtype or 'int8'"):
        GPT.from_pretrained(tmp_path / "float", dtype="int4")


def test_generate_and_eval_take_dtype_int8(gemv_int8, tmp_path, capsys, gpt2_tokenizer, shared_data) -> None:
    from gpt2.cli import main

    torch.manual_seed(0)
    folder = tmp_path / "model"
    GPT(GPTConfig(vocab_size=50257, n_positions=64, n_layer=2, n_head=2, n_embd=32)).save_pretrained(
        folder, tokenizer=gpt2_tokenizer
    )
    argv = ["generate", "--model", str(folder), "--prompt", "A", "--temperature", "0", "--max-new-tokens", "12"]
    main([*argv, "--dtype", "int8"])
    int8_text = capsys.readouterr().out
    model = dequantized_reference(GPT.from_pretrained(folder, dtype="int8"))
    ids = gpt2_tokenizer.encode("A")
    with kernels.disabled():
        plain = model.generate(torch.tensor([ids]), 12, temperature=0)[0].tolist()
    assert int8_text == gpt2_tokenizer.decode(plain) + "\n"
    main(["eval", "--model", str(folder), "--tasks", "lambada", "--data-dir", str(shared_data), "--offline"]
         + ["--limit", "2", "--dtype", "int8", "--output", str(tmp_path / "r.json")])  # fmt: skip
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["protocol"]["dtype"] == "int8" and result["tasks"]["lambada"]["n"] == 2


def test_the_server_s_continuous_batching_decodes_int8_rows_as_alone(
    gemv_int8, gpt2_tokenizer, decode_through_engine
) -> None:
    """Rows of an int8 model that join and leave the server's batch mid-flight each get their greedy text."""
    from gpt2.generate import generate

    torch.manual_seed(5)
    model = quantize_int8(GPT(GPTConfig(vocab_size=50257, n_positions=48, n_layer=2, n_head=2, n_embd=32)).eval())
    prompts = [f"Row {i} says" + " well" * i for i in range(6)]
    lengths = [6 + i for i in range(len(prompts))]
    texts = decode_through_engine(model, gpt2_tokenizer, prompts, lengths, max_batch=3)
    assert texts == [
        generate(model, gpt2_tokenizer, p, n, temperature=0)[0] for p, n in zip(prompts, lengths, strict=True)
    ]
