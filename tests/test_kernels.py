"""The CPU decoding kernel (gpt2.kernels): same products as torch, used only where it applies, and decoding
with it gives the same tokens as without it."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2 import GPT, GPTConfig, kernels

SHAPES = [(768, 2304), (3072, 768), (37, 5), (16, 1), (5, 3), (48, 9)]  # tails: n_in % 16 and % 32, n_out % 4


@pytest.mark.parametrize("rows", range(1, kernels.MAX_ROWS + 1))
@pytest.mark.parametrize("n_in,n_out", SHAPES)
def test_gemv_equals_torch_linear(gemv, rows, n_in, n_out) -> None:
    torch.manual_seed(rows)
    x, w, b = torch.randn(1, rows, n_in), torch.randn(n_out, n_in), torch.randn(n_out)
    # outputs are sums of n_in terms of size ~1, so float32 rounding (summed in another order) is ~1e-4 of them
    torch.testing.assert_close(gemv(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=5e-4)
    torch.testing.assert_close(gemv(x, w, None), F.linear(x, w), rtol=1e-4, atol=5e-4)


@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize("n_in,n_out", SHAPES)
def test_gemv_bfloat16_is_the_float32_product_rounded_once(gemv, rows, n_in, n_out) -> None:
    torch.manual_seed(rows)
    x, w, b = (t.bfloat16() for t in (torch.randn(rows, n_in), torch.randn(n_out, n_in), torch.randn(n_out)))
    y = gemv(x, w, b)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, n_out)
    exact = F.linear(x.double(), w.double(), b.double())
    # one rounding to bfloat16 (8 significant bits) of a float32 sum: within 2^-8 relative, plus float32 noise
    torch.testing.assert_close(y.double(), exact, rtol=2**-8, atol=1e-3)


def test_gemv_rejects_what_it_cannot_do(gemv) -> None:
    w = torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="contiguous"):
        gemv(torch.randn(1, 8), w.t(), None)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        gemv(torch.randn(9, 16), w, None)
    with pytest.raises(RuntimeError, match="in-features"):
        gemv(torch.randn(1, 15), w, None)


def test_linear_keeps_torch_for_gradients_and_other_shapes(gemv, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(kernels, "_gemv", lambda *a: calls.append(a) or gemv(*a))
    w = torch.randn(6, 32, requires_grad=True)
    x = torch.randn(1, 32)
    y = kernels.linear(x, w)  # grad wanted: torch's matmul, which autograd can differentiate
    y.sum().backward()
    assert w.grad is not None and not calls
    with torch.no_grad():
        kernels.linear(torch.randn(kernels.MAX_ROWS + 1, 32), w)  # a real matmul
        bf16_rows = kernels.FAST_ROWS[torch.bfloat16] + 1  # where oneDNN's bfloat16 matmul is faster
        kernels.linear(torch.randn(bf16_rows, 32).bfloat16(), w.bfloat16())
        kernels.linear(x.half(), w.half())
        kernels.linear(x, w.detach().t().contiguous().t())  # a transposed view
        assert not calls
        torch.testing.assert_close(kernels.linear(x, w), F.linear(x, w))
        assert len(calls) == 1


def test_decoding_with_the_kernel_matches_torch(gemv) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=500, n_positions=64)).eval()
    prompts = torch.randint(0, 500, (3, 7))
    fast = model.generate(prompts, 20, temperature=0)  # 3 rows per step: the kernel
    with torch.no_grad():
        fast_logits = model(prompts[:1, :2])
    with kernels.disabled():  # as where it cannot be built
        assert torch.equal(model.generate(prompts, 20, temperature=0), fast)
        with torch.no_grad():
            torch.testing.assert_close(model(prompts[:1, :2]), fast_logits, rtol=1e-5, atol=1e-5)


def test_bfloat16_decoding_uses_the_kernel_where_it_says_it_is_faster(gemv, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(kernels, "_gemv", lambda *a: calls.append(a) or gemv(*a))
    model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=500, n_positions=64)).to(torch.bfloat16).eval()
    prompt = torch.randint(0, 500, (1, kernels.MAX_ROWS + 1))
    out = model.generate(prompt, 5, temperature=0)
    # the prompt's 9 rows go to oneDNN, except the head (last position only); then 4 steps of one row each:
    # 4 matrices per block and the head; none where oneDNN is faster at one row too (AVX2 without AVX-512)
    expected = 1 + 4 * (4 * model.config.n_layer + 1)
    assert len(calls) == (expected if kernels.FAST_ROWS[torch.bfloat16] >= 1 else 0)
    with kernels.disabled():
        plain = model.generate(prompt, 5, temperature=0)
    n = prompt.shape[1] + 1
    assert out.shape == plain.shape and torch.equal(out[:, :n], plain[:, :n])  # then bf16 roundings may differ


def test_bfloat16_rows_follow_what_the_kernel_says_it_does_best(gemv) -> None:
    rows = torch.ops.gpt2_kernels.bf16_fast_rows()
    assert kernels.FAST_ROWS[torch.bfloat16] == rows and rows in (0, 2, kernels.MAX_ROWS)
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    assert rows == (kernels.MAX_ROWS if "avx512_bf16" in flags else 2 if "avx512f" in flags else 0)


def test_turned_off_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("GPT2_CPU_KERNELS", "0")
    assert kernels._build() is None


def test_a_failed_build_warns_once_and_decoding_goes_on(monkeypatch) -> None:
    from torch.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension 'gpt2_gemv': c++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_gemv", None)
    with pytest.warns(RuntimeWarning, match="could not be built .*command not found.*torch's matmul"):
        assert kernels.gemv_kernel() is None
    model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=500, n_positions=64)).eval()
    assert model.generate(torch.zeros(1, 3, dtype=torch.long), 4, temperature=0).shape == (1, 7)  # no second warning


def test_a_stale_build_lock_is_cleared_and_a_live_one_kept(monkeypatch, tmp_path) -> None:
    """A build killed outright leaves torch's lock file, on which every later build would wait forever."""
    import os
    import time

    from torch.utils import cpp_extension

    seen = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.append(Path(kw["build_directory"])))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = kernels.build_name()
    lock = tmp_path / name / "lock"
    lock.parent.mkdir()
    lock.touch()
    with warnings.catch_warnings():  # the fake build registers no op; what matters here is the lock
        warnings.simplefilter("ignore")
        kernels._build()  # a lock as young as a build in progress stays
        assert seen == [lock.parent] and lock.exists()
        old = time.time() - kernels.STALE_LOCK_SECONDS - 1
        os.utime(lock, (old, old))
        kernels._build()
    assert not lock.exists()


def test_the_first_build_says_so_on_stderr_and_a_cached_one_is_silent(monkeypatch, tmp_path, capsys) -> None:
    from torch.utils import cpp_extension

    def fake_build(**kw) -> None:  # what torch's builder leaves behind: the library, named after the build
        (Path(kw["build_directory"]) / f"{kw['name']}.so").touch()

    monkeypatch.setattr(cpp_extension, "load", fake_build)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with warnings.catch_warnings():  # the fake build registers no op
        warnings.simplefilter("ignore")
        kernels._build()
        first = capsys.readouterr().err
        kernels._build()
    assert first.count("\n") == 1 and "compiling the CPU kernels once for this machine" in first
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def gelu_inputs() -> torch.Tensor:
    """GELU's input range in GPT-2's MLP and beyond it: both tails (where 1 + tanh cancels), zeros, a size
    that leaves a vector tail."""
    torch.manual_seed(0)
    x = torch.randn(4099) * 4
    x[:8] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, -12.0, 12.0, -60.0, 80.0])
    return x


def _exact_gelu(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GELU (tanh form) at x in float64 and its derivative, by the sigmoid form (torch's 0.5 x (1 + tanh u)
    cancels to 0 in float64 too, below x = -6); with the error scales of float32 arithmetic: 1 + |z| for the
    value (exp's argument z), and for the derivative its two terms' sizes (they cancel near x = -0.75)."""
    x = x.double()
    z = math.sqrt(8 / math.pi) * (x + 0.044715 * x**3)
    s = torch.sigmoid(z)
    second = x * s * torch.sigmoid(-z) * math.sqrt(8 / math.pi) * (1 + 3 * 0.044715 * x**2)
    growth = 1 + z.abs()
    return x * s, s + second, growth, (s.abs() + second.abs()) * growth


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_tanh_is_torchs_gelu_and_gradient(gemv, gelu_inputs, dtype) -> None:
    x = gelu_inputs.to(dtype, copy=True).requires_grad_()
    g = torch.randn(x.shape, dtype=dtype)
    y = kernels.gelu_tanh(x)
    y.backward(g)
    assert y.dtype == x.grad.dtype == dtype
    exact, slope, growth, terms = _exact_gelu(x.detach())
    y, grad, g = y.detach().double(), x.grad.double(), g.double()
    # float32 arithmetic (a few ulps, growing with |z|), then for bfloat16 one rounding (8 significant bits);
    # an absolute 1e-30 where float32 has only subnormals and zeros
    rounding = 0.0 if dtype == torch.float32 else 2**-8
    assert ((y - exact).abs() <= (rounding + 2e-7 * growth) * exact.abs() + 1e-30).all()
    assert ((grad - g * slope).abs() <= g.abs() * (rounding * slope.abs() + 2e-7 * terms) + 1e-30).all()
    # torch computes 0.5 x (1 + tanh u), which cancels in the negative tail: there ours is the nearer of the two
    theirs = F.gelu(x.detach(), approximate="tanh").double()
    assert ((y - exact).abs() <= (theirs - exact).abs() + (rounding + 2e-7 * growth) * exact.abs() + 1e-30).all()
    assert ((theirs - exact).abs() > 0.5 * exact.abs()).any()  # the inputs reach where torch's form fails


def test_gelu_tanh_keeps_torch_where_the_kernel_does_not_apply(gemv, monkeypatch) -> None:
    calls = []
    op = torch.ops.gpt2_kernels.gelu_tanh
    monkeypatch.setattr(torch.ops.gpt2_kernels, "gelu_tanh", lambda x: calls.append(x) or op(x), raising=False)
    x = torch.randn(3, 40)
    with kernels.disabled():
        torch.testing.assert_close(kernels.gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=0, atol=0)
    h = kernels.gelu_tanh(x.half())  # no float16 kernel: torch's
    assert h.dtype == torch.float16 and not calls
    kernels.gelu_tanh(x.t())  # any layout: the op makes it contiguous
    assert len(calls) == 1


def test_gelu_tanh_backward_rejects_what_it_cannot_do(gemv) -> None:
    backward = torch.ops.gpt2_kernels.gelu_tanh_backward
    x = torch.randn(4, 16)
    with pytest.raises(RuntimeError, match="dtype and shape"):
        backward(x.bfloat16(), x)
    with pytest.raises(RuntimeError, match="dtype and shape"):
        backward(torch.randn(4, 15), x)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.gpt2_kernels.gelu_tanh(x.double())


def attention_backward(dtype: torch.dtype):
    """csrc/attention.cpp's op, where it takes this dtype here (float32: torch carries BLAS's sgemm; bfloat16:
    oneDNN has the bfloat16 micro-kernels, or the CPU AVX512-BF16's dot product)."""
    if kernels.gemv_kernel() is None:
        pytest.skip("the CPU kernels could not be built here")
    if not torch.ops.gpt2_kernels.causal_attention_supported(dtype):
        cpuinfo = Path("/proc/cpuinfo")
        if dtype == torch.bfloat16:
            flags = cpuinfo.read_text() if cpuinfo.exists() else ""
            # with AMX the micro-kernels are there: unsupported then means their packed layout is not the kernel's
            assert "amx_bf16" not in flags, "AMX, yet the kernel refuses: layout?"
            # with AVX512-BF16 the build (-march=native) has the dot-product kernel
            assert "avx512_bf16" not in flags, "AVX512-BF16, yet it refuses"
            pytest.skip("this CPU has neither AMX nor AVX512-BF16: bf16 uses torch's attention")
        assert not torch.backends.mkl.is_available(), "torch has MKL, yet the kernel finds no sgemm"
        pytest.skip("this build of torch carries no BLAS sgemm: float32 uses torch's attention")
    return torch.ops.gpt2_kernels.causal_attention_backward


def _sdpa(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """The model's plain path: torch's scaled_dot_product_attention on the split heads."""
    B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


DTYPES = [torch.float32, torch.bfloat16]
# the slack on top of torch's own error: bfloat16 gradients round to 2^-8, float32 ones to 2^-24. A float32 query's
# dP - D cancels two sums of 64 products (~16 here) to about 1e-6: with one query (O = V, so exactly 0), torch's sums
# cancelled exactly and ours (BLAS's sgemm against our own) left 1.6e-6 at most, 2.5e-7 on average, on a Zen 4
# whose MKL sums in another order than on an Intel CPU (torch's error elsewhere: 5e-6 to 2e-5, 4e-7 to 5e-7).
SLACK = {torch.float32: (4e-6, 5e-7), torch.bfloat16: (1e-3, 1e-6)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,seq,heads", [(2, 100, 2), (1, 64, 1), (3, 65, 3), (1, 1, 1), (1, 257, 2)])
def test_causal_attention_is_as_exact_as_torchs(dtype, batch, seq, heads) -> None:
    attention_backward(dtype)
    torch.manual_seed(seq)
    qkv = (torch.randn(batch, seq, 3 * heads * 64) * 2).to(dtype)  # peaked attention as well as flat
    grad = torch.randn(batch, seq, heads * 64).to(dtype)
    ours, theirs, exact = (qkv.clone().requires_grad_() for _ in range(3))
    assert kernels.causal_attention_applies(ours, heads)
    y = kernels.causal_attention(ours, heads)
    y.backward(grad)
    y_torch = _sdpa(theirs, heads)
    y_torch.backward(grad)
    y_exact = _sdpa(exact.double(), heads)
    y_exact.backward(grad.double())
    # float32 arithmetic, outputs and gradients rounded to the dtype: within torch's own error, elementwise and on
    # average, for the output (the forward) and for the gradient (the backward, from the forward's lse)
    max_slack, mean_slack = SLACK[dtype]
    for got, theirs_got, expected in ((y, y_torch, y_exact), (ours.grad, theirs.grad, exact.grad)):
        ours_err, torch_err = ((t.double() - expected).abs() for t in (got, theirs_got))
        assert ours_err.max() <= 1.25 * torch_err.max() + max_slack
        assert ours_err.mean() <= 1.1 * torch_err.mean() + mean_slack


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_attention_forward_lse_is_the_exact_log_sum_exp(dtype) -> None:
    attention_backward(dtype)
    torch.manual_seed(0)
    B, T, H = 2, 130, 3
    qkv = (torch.randn(B, T, 3 * H * 64) * 2).to(dtype)
    _, lse = torch.ops.gpt2_kernels.causal_attention_forward(qkv, 0.125)
    q, k, _ = (t.view(B, T, H, 64).transpose(1, 2).double() for t in qkv.split(H * 64, dim=2))
    scores = (q @ k.transpose(-1, -2) * 0.125).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    assert lse.dtype == torch.float32 and lse.shape == (B, H, T)
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_with_our_attention_backward_matches_torchs(dtype) -> None:
    attention_backward(dtype)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=128, vocab_size=300, n_positions=128))
    x = torch.randint(0, 300, (2, 96))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    grads = []
    for off in (False, True):
        model.zero_grad()
        with kernels.disabled() if off else contextlib.nullcontext(), amp:
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    tol = {"rtol": 0.05, "atol": 2e-3} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-6}
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], **tol, msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_attention_keeps_torch_where_it_does_not_apply(dtype) -> None:
    attention_backward(dtype)
    x = torch.randn(1, 8, 3 * 64, dtype=dtype)
    assert not kernels.causal_attention_applies(x, 1)  # no gradient wanted
    x.requires_grad_()
    assert kernels.causal_attention_applies(x, 1)
    assert not kernels.causal_attention_applies(x, 2)  # heads of 32
    assert not kernels.causal_attention_applies(x.detach().half().requires_grad_(), 1)
    with kernels.disabled():
        assert not kernels.causal_attention_applies(x, 1)


def test_causal_attention_rejects_what_it_cannot_do() -> None:
    backward = attention_backward(torch.float32)
    forward = torch.ops.gpt2_kernels.causal_attention_forward
    with pytest.raises(RuntimeError, match="qkv must be"):
        forward(torch.randn(1, 8, 3 * 32), 0.125)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        forward(torch.randn(1, 8, 3 * 64, dtype=torch.float64), 0.125)
    qkv, out, lse = torch.randn(1, 8, 3 * 64), torch.randn(1, 8, 64), torch.zeros(1, 1, 8)
    backward(out, qkv, out, lse, 0.125)  # the shapes it takes
    with pytest.raises(RuntimeError, match="of one dtype only"):
        backward(out.bfloat16(), qkv, out, lse, 0.125)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        backward(out.double(), qkv.double(), out.double(), lse, 0.125)
    with pytest.raises(RuntimeError, match="lse must be"):
        backward(out, qkv, out, torch.zeros(1, 8), 0.125)
    with pytest.raises(RuntimeError, match="qkv must be"):
        backward(out, torch.randn(1, 8, 3 * 32), out, lse, 0.125)
    with pytest.raises(RuntimeError, match="out and grad_out"):
        backward(out[:, :4], qkv, out, lse, 0.125)
    if not torch.ops.gpt2_kernels.causal_attention_supported(torch.bfloat16):
        with pytest.raises(RuntimeError, match="micro-kernels"):
            backward(out.bfloat16(), qkv.bfloat16(), out.bfloat16(), lse, 0.125)
        with pytest.raises(RuntimeError, match="micro-kernels"):
            forward(qkv.bfloat16(), 0.125)


# ------------------------------------------------------------------------------------ the row-split matmul
def _split_everywhere(monkeypatch) -> None:
    """Take the row split for every bfloat16 product, whatever this machine's CPU and thread count (the op itself
    is torch's matmul on each thread's rows, so it runs anywhere; the rule only says where it is faster)."""
    monkeypatch.setattr(kernels, "split_rows_applies", lambda rows, columns: True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 1001, 1024])
def test_split_rows_matmul_is_torchs_matmul_of_each_part(gemv, dtype, rows) -> None:
    torch.manual_seed(rows)
    split = torch.ops.gpt2_kernels.split_rows_matmul
    a, w, bias = torch.randn(rows, 96, dtype=dtype), torch.randn(80, 96, dtype=dtype), torch.randn(80, dtype=dtype)
    for b, c in ((w.t(), None), (w.t(), bias), (w.t().contiguous(), bias)):  # a weight's transpose view, contiguous
        y = split(a, b, c)
        assert y.dtype == dtype and y.shape == (rows, 80) and y.is_contiguous()
        exact = a.double() @ b.double() + (0 if c is None else c.double())
        # each part is torch's own product of its rows: within its rounding of the exact one (one bfloat16 rounding)
        tol = {"rtol": 2**-8, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-4}
        torch.testing.assert_close(y.double(), exact, **tol)
        torch.testing.assert_close(y, a @ b if c is None else torch.addmm(c, a, b), **tol)


def test_split_rows_matmul_rejects_what_it_cannot_do(gemv) -> None:
    split = torch.ops.gpt2_kernels.split_rows_matmul
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with pytest.raises(RuntimeError, match=r"a \(M, K\) and b \(K, N\)"):
        split(a, b.t(), None)
    with pytest.raises(RuntimeError, match="one dtype"):
        split(a, b.bfloat16(), None)
    with pytest.raises(RuntimeError, match="bias must be"):
        split(a, b, torch.zeros(4))


def test_split_rows_rule_is_the_measured_shapes_threads_and_cpu(gemv, monkeypatch) -> None:
    monkeypatch.setattr(kernels, "SPLIT_THREADS", torch.get_num_threads())
    supported = torch.ops.gpt2_kernels.split_rows_supported()
    assert kernels.split_rows_applies(1024, 768) == supported  # 124M at 1 x 1024 tokens
    assert kernels.split_rows_applies(768, 513) == kernels.split_rows_applies(1200, 768) == supported
    for rows, columns in ((1024, 3072), (1024, 384), (2048, 768), (767, 768), (1201, 768), (1024, 1024)):
        assert not kernels.split_rows_applies(rows, columns)
    monkeypatch.setattr(kernels, "SPLIT_THREADS", torch.get_num_threads() + 1)
    assert not kernels.split_rows_applies(1024, 768)  # measured on SPLIT_THREADS threads only


@pytest.mark.parametrize("shape", [(1024, 96), (2, 37, 96)])
def test_training_linear_is_autocasts_linear_and_its_gradients(gemv, monkeypatch, shape) -> None:
    _split_everywhere(monkeypatch)
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 80)
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape[:-1], 80) * 0.1  # the output's gradient (cast to bfloat16 by autograd, as in training)
    results = []
    for ours in (True, False):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kernels.training_linear_applies(x, layer.weight)
            y = kernels.linear(x, layer.weight, layer.bias) if ours else F.linear(x, layer.weight, layer.bias)
        assert (type(y.grad_fn).__name__ == "_TrainingLinearBackward") == ours
        y.backward(g)
        results.append((y, x.grad, layer.weight.grad, layer.bias.grad))
    for mine, autocasts in zip(results[0], results[1], strict=True):
        assert mine.dtype == autocasts.dtype and mine.shape == autocasts.shape
        assert mine.is_contiguous()  # a parameter's gradient kept as it comes, with no copy into another layout
        # the same bfloat16 products (the weight's gradient: the same matmul); summed in another order at most
        torch.testing.assert_close(mine.float(), autocasts.float(), rtol=2**-7, atol=1e-5)


def test_training_linear_skips_gradients_nobody_wants(gemv, monkeypatch) -> None:
    _split_everywhere(monkeypatch)
    layer = torch.nn.Linear(64, 64)
    layer.weight.requires_grad_(False)
    x = torch.randn(16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.linear(x, layer.weight, layer.bias)
    y.float().sum().backward()
    assert layer.weight.grad is None and x.grad is not None and layer.bias.grad is not None


def test_training_linear_keeps_torch_where_the_split_does_not_apply(gemv) -> None:
    w = torch.randn(768, 768, requires_grad=True)
    x = torch.randn(1024, 768, requires_grad=True)
    assert not kernels.training_linear_applies(x, w)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.training_linear_applies(x.detach(), w.detach())  # no gradient wanted
        assert not kernels.training_linear_applies(x[:100], w)  # 100 rows
        with kernels.disabled():
            assert not kernels.training_linear_applies(x, w)
        with torch.no_grad():
            assert not kernels.training_linear_applies(x, w)


def test_training_with_the_row_split_matches_torchs(gemv, monkeypatch) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=128, vocab_size=300, n_positions=128))
    x = torch.randint(0, 300, (2, 96))
    grads, losses = [], []
    for split in (True, False):
        with monkeypatch.context() as m:
            if split:
                _split_everywhere(m)
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x[:, :-1], x[:, 1:])[1]
            loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=0.05, atol=2e-3, msg=name)
