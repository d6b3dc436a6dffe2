"""The model: presets, parameter counts, initialisation, shapes, loss, the KV cache, and parity with transformers."""

from __future__ import annotations

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
