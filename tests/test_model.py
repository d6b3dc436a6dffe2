"""The model: presets, parameter counts, initialisation, shapes, loss, the KV cache, and parity with transformers."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from gpt2 import GPT, GPT2Error, GPTConfig
from gpt2.model import PRESETS

transformers = pytest.importorskip("transformers")

# Small enough to run in milliseconds, with every shape rule GPT-2 has (several heads, several layers).
TINY = dict(vocab_size=97, n_positions=32, n_layer=2, n_head=4, n_embd=32)


def hf_config(**kw) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        **kw, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=kw["vocab_size"] - 1,
        eos_token_id=kw["vocab_size"] - 1,
    )  # fmt: skip


def hf_tiny(seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(hf_config(**TINY)).eval()
    with torch.no_grad():  # HF zero-initialises biases and sets LayerNorms to 1/0: randomise them so they matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


# ------------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize(
    "name, n_layer, n_embd, n_head",
    [("gpt2", 12, 768, 12), ("gpt2-medium", 24, 1024, 16), ("gpt2-large", 36, 1280, 20), ("gpt2-xl", 48, 1600, 25)],
)
def test_paper_presets_match_transformers_parameter_count(name: str, n_layer: int, n_embd: int, n_head: int) -> None:
    config = GPTConfig.from_name(name)
    assert (config.n_layer, config.n_embd, config.n_head) == (n_layer, n_embd, n_head)
    assert (config.vocab_size, config.n_positions, config.head_dim) == (50257, 1024, 64)
    with torch.device("meta"):
        ours = GPT(config)
        theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head))
    assert ours.num_params() == theirs.num_parameters()


def test_gpt2_small_has_124439808_parameters() -> None:
    with torch.device("meta"):
        assert GPT(GPTConfig.from_name("gpt2")).num_params() == 124_439_808


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_keeps_gpt2_shape_rules(name: str) -> None:
    config = GPTConfig.from_name(name)
    assert config.head_dim == 64 and config.n_embd % config.n_head == 0
    assert config.vocab_size == 50257 and config.n_positions == 1024 and config.layer_norm_epsilon == 1e-5


def test_from_name_overrides_and_errors() -> None:
    config = GPTConfig.from_name("gpt2-tiny", n_positions=128, dropout=0.1)
    assert (config.n_layer, config.n_positions, config.dropout) == (4, 128, 0.1)
    with pytest.raises(GPT2Error, match="unknown model preset 'gpt3'"):
        GPTConfig.from_name("gpt3")
    with pytest.raises(GPT2Error, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(GPT2Error, match="n_layer must be a positive integer"):
        GPTConfig(n_layer=0)
    with pytest.raises(GPT2Error, match="unknown GPTConfig fields: n_ctx"):
        GPTConfig.from_dict({"n_ctx": 5})
    assert GPTConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------------------ initialisation
def test_initialisation_statistics() -> None:
    torch.manual_seed(0)
    n_layer = 8
    model = GPT(GPTConfig(vocab_size=2048, n_positions=256, n_layer=n_layer, n_head=4, n_embd=256))
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):  # the two residual projections of every block
            assert p.std().item() == pytest.approx(residual_std, rel=0.03), name
            assert abs(p.mean().item()) < 1e-4, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.03), name
            assert abs(p.mean().item()) < 1e-3, name
        elif ".ln_" in name and name.endswith("weight"):
            assert torch.all(p == 1), name
        else:
            assert name.endswith("bias") and torch.all(p == 0), name
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, and counted once
    tied_once = sum(p.numel() for n, p in model.state_dict().items() if n != "lm_head.weight")
    assert model.num_params() == tied_once


# ------------------------------------------------------------------------------------------------ forward and loss
def test_logits_shape_and_loss_equals_manual_cross_entropy() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = torch.randint(0, TINY["vocab_size"], (3, 11))
    logits = model(idx)
    assert logits.shape == (3, 11, TINY["vocab_size"]) and logits.dtype == torch.float32
    targets = torch.randint(0, TINY["vocab_size"], (3, 11))
    targets[0, :4] = -1  # padding: ignored
    logits2, loss = model(idx, targets)
    torch.testing.assert_close(logits2, logits)
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = targets != -1
    manual = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    assert loss.ndim == 0 and loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_sequence_longer_than_context_is_a_clear_error() -> None:
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(GPT2Error, match="longer than the context"):
        model(torch.zeros(1, TINY["n_positions"] + 1, dtype=torch.long))


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, dropout=0.5))
    idx = torch.randint(0, TINY["vocab_size"], (2, 8))
    assert not torch.equal(model.train()(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


# ------------------------------------------------------------------------------------------------ KV cache
def model_and_logits(rows: int, length: int) -> tuple[GPT, torch.Tensor, torch.Tensor]:
    """A tiny random model, random token ids (rows, length), and their logits from one full forward pass."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = torch.randint(0, TINY["vocab_size"], (rows, length))
    return model, idx, model(idx)


def test_incremental_decoding_equals_full_forward() -> None:
    model, idx, full = model_and_logits(2, 20)
    with torch.inference_mode():
        cache = model.new_cache(2)
        got = [model.forward_cached(idx[:, :5], cache)]  # a prompt at once, then one token per step
        got += [model.forward_cached(idx[:, t : t + 1], cache) for t in range(5, 12)]
        got.append(model.forward_cached(idx[:, 12:20], cache))  # a chunk after cached positions (masked)
    assert cache.length == 20
    torch.testing.assert_close(torch.stack(got[:-1], dim=1), full[:, 4:12], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[-1], full[:, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(GPT2Error, match="KV cache holds 32 positions; 33 were asked for"):
        model.forward_cached(idx[:, :13], cache)


def test_cache_rollback_reset_and_copied_rows_decode_as_the_full_forward() -> None:
    model, idx, full = model_and_logits(3, 12)
    with torch.inference_mode():
        cache = model.new_cache(1)
        assert cache.room == 32 and cache.causal_mask(4, idx.device) is None  # nothing cached: plain causal
        model.forward_cached(idx[:1, :6], cache)
        mask = cache.causal_mask(3, idx.device)  # 3 new positions after 6: each sees the past and itself
        assert mask.shape == (3, 9) and mask[0].tolist() == [True] * 7 + [False] * 2 and bool(mask[2].all())
        assert cache.causal_mask(1, idx.device) is None
        model.forward_cached(torch.tensor([[5, 6, 7]]), cache)  # drafts that were not accepted ...
        cache.rollback(3)  # ... are forgotten, and the true tokens overwrite them
        assert cache.length == 6 and cache.room == 26
        torch.testing.assert_close(model.forward_cached(idx[:1, 6:8], cache), full[:1, 7], atol=1e-5, rtol=1e-5)
        with pytest.raises(GPT2Error, match="cannot roll back 9 of the 8"):
            cache.rollback(9)
        cache.reset()
        torch.testing.assert_close(model.forward_cached(idx[:1, :4], cache), full[:1, 3], atol=1e-5, rtol=1e-5)
        # a prefix cached once for two rows, then each continued from copies of the other's row
        prefix = model.new_cache(2)
        model.forward_cached(idx[:2, :5], prefix)
        rows = model.new_cache(3)
        rows.copy_rows(prefix, torch.tensor([1, 0, 1]))
        assert rows.length == 5
        got = model.forward_cached(idx[[1, 0, 1], 5:9], rows)
        torch.testing.assert_close(got, full[[1, 0, 1], 8], atol=1e-5, rtol=1e-5)
        with pytest.raises(GPT2Error, match="cannot copy 2 rows"):
            rows.copy_rows(prefix, torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------ parity
def test_logits_and_loss_match_transformers_tiny(tmp_path) -> None:
    theirs = hf_tiny()
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    idx = torch.randint(0, TINY["vocab_size"], (3, TINY["n_positions"]))
    with torch.no_grad():
        out = theirs(idx, labels=idx)
        logits, loss = ours(idx[:, :-1], idx[:, 1:])  # transformers shifts the labels itself
        full = ours(idx)
    torch.testing.assert_close(full, out.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)


def test_logits_match_transformers_full_gpt2_size(tmp_path) -> None:
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    assert ours.num_params() == 124_439_808
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        expected = theirs(idx).logits
    del theirs
    torch.testing.assert_close(ours(idx), expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ fused loss, padding
def grads_of(model: GPT, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk_rows", [1, 7, 13, 1000])
def test_fused_loss_equals_plain_loss_and_every_gradient(chunk_rows: int, monkeypatch) -> None:
    from gpt2 import fused_loss

    # float64: the two paths differ only by rounding, so they agree to float64's (1e-12), not float32's
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).double().train()
    assert model.transformer.wte.weight.shape[0] == 128  # 97 padded to a multiple of 64
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", 4 * 128 * chunk_rows)
    assert fused_loss.default_chunk_rows(128) == chunk_rows
    idx = torch.randint(0, 97, (3, 11))
    targets = torch.randint(0, 97, (3, 11))
    targets[0, :4] = -1  # ignored, and so is a whole row
    targets[2] = -1
    logits = model(idx)  # float64 logits; model(idx, targets) would take the loss of them in float32
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
    expected = grads_of(model, plain * 3)
    none, fused = model(idx, targets, return_logits=False)
    got = grads_of(model, fused * 3)  # a loss scaled after the fact (gradient accumulation divides it)
    assert none is None and logits.shape == (3, 11, 97)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=0)
    assert got.keys() == expected.keys() and len(got) == 4 + 12 * 2
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-13, msg=name)
    assert torch.all(got["transformer.wte.weight"][97:] == 0)  # padding: no gradient, so it stays zero


def test_fused_loss_unscaled_and_scaled_gradients_and_a_second_backward() -> None:
    from gpt2.fused_loss import linear_cross_entropy

    x, w, t = _loss_inputs(50, 150)
    plain = torch.nn.functional.cross_entropy(x @ w[:150].t(), t, ignore_index=-1)
    expected = torch.autograd.grad(plain, (x, w))
    for scale in (1.0, 0.25):  # 1: the saved gradients go out as they are; else they are scaled in place
        got = torch.autograd.grad(linear_cross_entropy(x, w, t, 150) * scale, (x, w))
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e * scale, rtol=1e-5, atol=1e-7)
    loss = linear_cross_entropy(x, w, t, 150) * 0.5
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # not scaled twice, silently
        loss.backward()


def test_fused_loss_compiles_as_one_graph() -> None:
    # torch.compile (compile = "auto") must trace the loss and its backward whole: a graph break (reading a tensor's
    # value, say) had made our compiled gpt2-mini step 0.99x nanoGPT's compiled one
    from gpt2.fused_loss import linear_cross_entropy

    x, w, t = _loss_inputs(50, 150)
    compiled = torch.compile(lambda x, w, t: linear_cross_entropy(x, w, t, 150), backend="eager", fullgraph=True)
    loss = compiled(x, w, t)
    loss.backward()
    expected = torch.nn.functional.cross_entropy(x @ w[:150].t(), t, ignore_index=-1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_sparse_embedding_gradient_is_the_dense_one(monkeypatch) -> None:
    # the lookup's sparse gradient (CPU training) adds into the output layer's dense one: the tied matrix's
    # gradient must be dense (fused AdamW takes no sparse gradient) and equal the dense lookup's, also accumulated
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).double().train()
    idx, targets = torch.randint(0, 97, (2, 3, 11)), torch.randint(0, 97, (2, 3, 11))

    def accumulated() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        for micro in range(2):
            model(idx[micro], targets[micro], return_logits=False)[1].backward()
        grad = model.transformer.wte.weight.grad
        assert grad.layout == torch.strided
        return grad.clone()

    assert model.transformer.wte(idx[0], sparse_grad=True).grad_fn._saved_sparse  # the lookup under test
    got = accumulated()
    dense = lambda self, idx, sparse_grad=False: torch.nn.Embedding.forward(self, idx)  # noqa: E731
    monkeypatch.setattr(type(model.transformer.wte), "forward", dense)
    expected = accumulated()
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


def test_embedding_gradient_is_dense_without_the_tied_output_layer() -> None:
    # a backbone's use (hidden states into a head of one's own) or an untied output layer: no dense gradient joins
    # the lookup's, so it must be dense itself, or fused AdamW would refuse the parameter's
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).train()
    idx = torch.randint(0, 97, (2, 11))
    model.hidden_states(idx).pow(2).mean().backward()
    assert model.transformer.wte.weight.grad.layout == torch.strided
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    opt.step()
    model.zero_grad(set_to_none=True)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied
    model(idx, idx, return_logits=False)[1].backward()
    assert model.transformer.wte.weight.grad.layout == torch.strided


def _loss_inputs(rows: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded hidden states (rows, 48), an output weight of 192 padded rows and targets below vocab, every
    seventh ignored: the fused loss's test case."""
    torch.manual_seed(0)
    x = torch.randn(rows, 48, requires_grad=True)
    w = (torch.randn(192, 48) * 0.3).requires_grad_()
    t = torch.randint(0, vocab, (rows,))
    t[::7] = -1
    return x, w, t


def test_fused_loss_float32_and_autocast_match_the_plain_path() -> None:
    from gpt2.fused_loss import linear_cross_entropy

    x, w, t = _loss_inputs(300, 150)
    plains = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            plain = torch.nn.functional.cross_entropy(
                torch.nn.functional.linear(x, w[:150]).float(), t, ignore_index=-1
            )
        plains.append(plain.detach())
        gx, gw = torch.autograd.grad(plain, (x, w))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fused = linear_cross_entropy(x, w, t, vocab_size=150, chunk_rows=37)
        fx, fw = torch.autograd.grad(fused, (x, w))
        # bf16 logits and gradients are rounded the same way on both paths; only summation order differs
        tol = dict(rtol=2e-2, atol=1e-4) if autocast else dict(rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(fused, plain, **tol)
        torch.testing.assert_close(fx, gx, **tol)
        torch.testing.assert_close(fw, gw, **tol)
        assert fx.dtype == torch.float32 and fw.dtype == torch.float32
    with torch.no_grad():  # evaluation: the same loss, no gradient work
        torch.testing.assert_close(linear_cross_entropy(x, w, t, vocab_size=150), plains[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(linear_cross_entropy(x, w, t, vocab_size=150), plains[1], rtol=2e-2, atol=1e-4)


@pytest.fixture()
def softmax_xent(gemv):
    """csrc/cross_entropy.cpp's op (one library with gemv: built here, or the test skips where it cannot be)."""
    from gpt2 import kernels

    return kernels.softmax_xent_kernel()


def xent_chunk(rows: int, vocab: int, padded: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float32 logits (rows, padded), targets, row_scale) with every case the kernel must get right: ignored rows,
    a row whose target is its max, huge and very negative rows, spread rows reaching exp's underflow, and
    padding columns holding values that would dominate the softmax if they took part."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, padded, generator=g) * 3
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[1::4] = -1  # ignored
    logits[0, targets[0]] = logits[0, :vocab].max() + 5  # the target is the max
    if rows > 2:
        logits[2] = logits[2] * 1000 + 1e4  # large: exp(x) itself would overflow
    if rows > 3:
        logits[3] = logits[3] - 3e4  # very negative: exp(x) itself would underflow to 0
    if rows > 5:
        logits[5, :vocab] = torch.linspace(-150, 0, vocab)  # exp(x - max) from 1 down past the subnormals
        targets[5] = 0
    logits[:, vocab:] = 1e30
    valid = targets >= 0
    row_scale = valid.float() / valid.sum().clamp(min=1)
    return logits, targets, row_scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, vocab, padded", [(1, 5, 16), (7, 161, 192), (33, 160, 160), (6, 1000, 1024)])
def test_softmax_xent_kernel_matches_the_torch_path(softmax_xent, dtype, rows, vocab, padded) -> None:
    from gpt2.fused_loss import _chunk_loss_grad_

    logits, targets, row_scale = xent_chunk(rows, vocab, padded)
    logits = logits.to(dtype)  # what the output matmul made in this dtype
    valid = targets >= 0
    expected = logits.float().clone()  # (.float() of float32 logits would be the logits themselves)
    expected_sum = _chunk_loss_grad_(expected, targets, valid, row_scale, vocab)  # what fused_loss did before
    got = logits.clone()
    loss = softmax_xent(got, targets, row_scale, vocab)
    assert loss.dtype == torch.float32 and loss.shape == (rows,) and got.dtype == dtype
    assert torch.isfinite(loss).all() and torch.isfinite(got.float()).all()
    # the loss per row against float64 from the same logits; 0 where ignored
    x64 = logits.double()[:, :vocab]
    ref = torch.logsumexp(x64, 1) - x64.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    ref = torch.where(valid, ref, 0.0)
    scale = x64.abs().amax(1).clamp(min=1)  # float32 rounds lse and the picked logit relative to their size
    assert ((loss.double() - ref).abs() <= 4e-7 * scale + 1e-6).all(), (loss.double() - ref).abs().max()
    torch.testing.assert_close(loss.sum(), expected_sum, rtol=1e-5, atol=1e-5)
    assert torch.all(loss[~valid] == 0) and torch.all(got[~valid] == 0)
    assert torch.all(got[:, vocab:] == 0)  # padding: no gradient, however large its logits were
    # the gradient against float64 from the same logits
    ref_grad = torch.softmax(x64, 1) * row_scale.double()[:, None]
    ref_grad[torch.arange(rows), targets.clamp(min=0)] -= row_scale.double()
    if dtype == torch.float32:
        # relative to each value, except at the target, where softmax - 1 cancels: there relative to row_scale
        err = (got[:, :vocab].double() - ref_grad).abs()
        bound = 2e-6 * ref_grad.abs() + 1e-30
        bound[torch.arange(rows), targets.clamp(min=0)] += 3e-7 * row_scale.double()
        assert (err <= bound).all(), (err / bound).max()
        # and the torch path's own float32 result: equal up to its rounding of lse - log(row_scale) (the same
        # cancellation at the target)
        normal = (logits.abs().amax(1) < 100) & valid
        err = (got - expected).abs()
        bound = 2e-5 * expected.abs() + 1e-30
        bound[torch.arange(rows), targets.clamp(min=0)] += 4e-6 * row_scale
        assert (err[normal] <= bound[normal]).all(), (err / bound)[normal].max()
    else:
        # rounded once to bfloat16 from float32, as the torch path does: at most a last-ulp difference where the
        # float32 values straddle a rounding boundary
        ulps = (got.view(torch.int16).int() - expected.to(dtype).view(torch.int16).int()).abs()
        assert ulps.max() <= 1 and (ulps == 0).float().mean() > 0.98
        ulps = (got[:, :vocab].view(torch.int16).int() - ref_grad.to(dtype).view(torch.int16).int()).abs()
        assert ulps.max() <= 1


def test_softmax_xent_kernel_propagates_nan_and_checks_its_targets(softmax_xent) -> None:
    logits, targets, row_scale = xent_chunk(4, 40, 48)
    targets[0] = 3
    logits[0, 10] = float("nan")  # a NaN logit in a counted row is a NaN loss and gradient, as in torch
    loss = softmax_xent(logits, targets, row_scale, 40)
    assert loss[0].isnan() and logits[0, :40].isnan().all() and torch.isfinite(loss[2:]).all()
    with pytest.raises(RuntimeError, match="out of range"):
        softmax_xent(torch.zeros(2, 48), torch.tensor([3, 40]), torch.full((2,), 0.5), 40)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        softmax_xent(torch.zeros(2, 48, dtype=torch.float64), torch.tensor([3, 4]), torch.full((2,), 0.5), 40)


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_through_the_kernel_equals_torch_ops(softmax_xent, autocast, monkeypatch) -> None:
    from gpt2 import fused_loss, kernels

    calls = []
    monkeypatch.setattr(kernels, "softmax_xent_kernel", lambda: lambda *a: calls.append(1) or softmax_xent(*a))
    x, w, t = _loss_inputs(301, 161)
    results = []
    for off in (False, True):
        if off:
            monkeypatch.undo()  # the real accessor, which `disabled()` turns off
        with kernels.disabled() if off else contextlib.nullcontext():
            assert (kernels.softmax_xent_kernel() is None) == off
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = fused_loss.linear_cross_entropy(x, w, t, vocab_size=161, chunk_rows=37)
            results.append((loss.detach(), *torch.autograd.grad(loss * 2, (x, w))))
    assert len(calls) == 9  # 301 rows in chunks of 37: the kernel served every chunk
    (loss, gx, gw), (loss_torch, gx_torch, gw_torch) = results
    # float32: equal up to float32 rounding; bfloat16: the same bf16 logits, gradients rounded the same way
    # up to a last-ulp difference, then summed by the same matmuls
    tol = dict(rtol=2e-2, atol=1e-4) if autocast else dict(rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(loss, loss_torch, rtol=1e-6, atol=0)
    for got, expected in ((gx, gx_torch), (gw, gw_torch)):
        torch.testing.assert_close(got, expected, **tol)
        assert (got - expected).norm() <= (2e-3 if autocast else 1e-6) * expected.norm()
    assert torch.all(gw[161:] == 0)


def test_fused_loss_chunks_of_the_kernel_path_are_larger_and_even(softmax_xent, monkeypatch) -> None:
    from gpt2 import fused_loss, kernels

    sizes = []

    def spy(g: torch.Tensor, *rest) -> torch.Tensor:
        sizes.append(len(g))
        return softmax_xent(g, *rest)

    monkeypatch.setattr(kernels, "softmax_xent_kernel", lambda: spy)
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", 4 * 192 * 10)  # 10 rows: evaluation and torch's ops
    monkeypatch.setattr(fused_loss, "KERNEL_CHUNK_BYTES", 4 * 192 * 40)  # 40 rows where the kernel does the work
    x, w, t = _loss_inputs(301, 161)
    fused_loss.linear_cross_entropy(x, w, t, vocab_size=161).backward()
    assert sizes == [38] * 7 + [35]  # 301 rows in 8 chunks of at most 40, evenly: no chunk of 21
    assert x.grad is not None and w.grad is not None


def test_vocabulary_padding_is_invisible(tmp_path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    assert model.lm_head.weight.shape == (128, 32) and torch.all(model.lm_head.weight[97:] == 0)
    state = model.state_dict()
    assert state["transformer.wte.weight"].shape == state["lm_head.weight"].shape == (97, 32)
    assert model.num_params() == sum(v.numel() for k, v in state.items() if k != "lm_head.weight")
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        logits = model(idx)
        assert logits.shape == (2, 9, 97)
        cache = model.new_cache(2)
        assert model.forward_cached(idx, cache).shape == (2, 97)
        assert model.lm_head(model.hidden_states(idx)).shape == (2, 9, 97)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert load_file(tmp_path / "model.safetensors")["transformer.wte.weight"].shape == (97, 32)
    again = GPT.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.transformer.wte.weight and again.lm_head.weight.shape == (128, 32)
    assert torch.all(again.lm_head.weight[97:] == 0)
    other = GPT(GPTConfig(**TINY))
    other.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again(idx), logits) and torch.equal(other.eval()(idx), logits)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, logits, atol=1e-5, rtol=0)
