// Softmax cross-entropy and its gradient for one chunk of logits, in place, for gpt2/fused_loss.py on the CPU.
//
// torch's ops walk a (rows x 50,304) chunk about ten times (a float32 copy of bfloat16 logits, logsumexp's max,
// subtract, exp, sum and log, the in-place subtract and exp, the scatter, the padding, the copy back), and at
// training shapes that elementwise work cost about as much as the matmuls around it. Here each row is read from memory
// once: a pass for its max, a pass for exp(x - max) and their sum, a pass writing the gradient; after the first
// the row (100-200 KB) is in the core's L2 cache (an online max-and-sum in one pass would save a pass over cached
// data for a second exp per element). Arithmetic in float32, as torch's: the loss of a row is
// log(sum(exp(x - max))) + max - x[target]; its gradient softmax * row_scale - onehot(target) * row_scale, rounded
// once to the logits' dtype. Rows whose target is negative (ignored) get a loss of 0 and a zero gradient, and
// so do the padding columns past vocab_size. Built with csrc/gemv.cpp by gpt2/kernels.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "vectors.h"

namespace {
// Vectors in flight per step of a row: 32 floats on every CPU, as many partial sums of exp (the sum's rounding
// does not depend on the vector width) and enough independent chains to hide exp's latency.
constexpr int64_t U = 32 / L;

// One row: x (vocab_size real columns, then padding up to `padded`) becomes its gradient; returns its loss.
// e is float32 scratch for exp(x - max), x itself where x is float32.
template <typename T>
float row_xent(T* x, float* e, int64_t vocab, int64_t padded, int64_t target, float scale) {
  if (target < 0) {  // ignored: no loss, no gradient
    std::memset(static_cast<void*>(x), 0, padded * sizeof(T));
    return 0.f;
  }
  const int64_t body = vocab / L * L, tail = vocab - body;
  const float inf = std::numeric_limits<float>::infinity();
  vf m[U];
  for (auto& v : m) v = splat(-inf);
  int64_t j = 0;
  for (; j + U * L <= body; j += U * L)
    for (int64_t u = 0; u < U; ++u) {
      const vf a = load(x + j + u * L);
      m[u] = a > m[u] ? a : m[u];
    }
  for (; j < body; j += L) {
    const vf a = load(x + j);
    m[0] = a > m[0] ? a : m[0];
  }
  if (tail) {
    const vf a = load_part(x + body, tail, -inf);
    m[0] = a > m[0] ? a : m[0];
  }
  for (int64_t u = 1; u < U; ++u) m[0] = m[u] > m[0] ? m[u] : m[0];
  const float mx = hmax(m[0]);
  const float picked = static_cast<float>(x[target]);  // read before e may overwrite it
  const vf mv = splat(mx);
  vf s[U] = {};
  j = 0;
  for (; j + U * L <= body; j += U * L)
    for (int64_t u = 0; u < U; ++u) {
      const vf a = vexp(load(x + j + u * L) - mv);
      store(e + j + u * L, a);
      s[u] += a;
    }
  for (; j < body; j += L) {
    const vf a = vexp(load(x + j) - mv);
    store(e + j, a);
    s[0] += a;
  }
  if (tail) {  // the fill's exp(-inf) is 0
    const vf a = vexp(load_part(x + body, tail, -inf) - mv);
    store_part(e + body, a, tail);
    s[0] += a;
  }
  for (int64_t u = 1; u < U; ++u) s[0] += s[u];
  const float sum = hsum(s[0]);
  const float c = scale / sum, et = e[target];  // et: read before the float32 row overwrites it
  const vf cv = splat(c);
  for (j = 0; j < body; j += L) store(x + j, load(e + j) * cv);
  if (tail) store_part(x + body, load_part(e + body, tail, 0.f) * cv, tail);
  x[target] = static_cast<T>(et * c - scale);  // one rounding of the float32 value, as for the others
  if (padded > vocab) std::memset(static_cast<void*>(x + vocab), 0, (padded - vocab) * sizeof(T));
  return (std::log(sum) + mx) - picked;
}

at::Tensor softmax_xent_grad_(at::Tensor& logits, const at::Tensor& targets, const at::Tensor& row_scale,
                              int64_t vocab_size) {
  const char* op = "softmax_xent_grad_";
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, op, ": logits must be (rows, padded vocab), rows dense");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16, op,
              ": float32 or bfloat16 logits only");
  const int64_t rows = logits.size(0), padded = logits.size(1), ld = logits.stride(0);
  TORCH_CHECK(vocab_size >= 1 && vocab_size <= padded, op, ": vocab_size must be in [1, logits.size(1)]");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.numel() == rows, op, ": one int64 target per row");
  TORCH_CHECK(row_scale.scalar_type() == at::kFloat && row_scale.numel() == rows, op,
              ": one float32 row_scale per row");
  TORCH_CHECK(logits.device().is_cpu() && targets.device().is_cpu() && row_scale.device().is_cpu(), op,
              ": CPU tensors only");
  const auto t = targets.contiguous();
  const auto s = row_scale.contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  const float* sp = s.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(tp[r] < vocab_size, op, ": target ", tp[r], " out of range for a vocabulary of ", vocab_size);
  auto loss = at::empty({rows}, logits.options().dtype(at::kFloat));
  float* lp = loss.data_ptr<float>();
  auto run = [&](auto* base) {
    using T = std::remove_pointer_t<decltype(base)>;
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      std::unique_ptr<float[]> scratch;  // float32 logits are their own scratch
      if constexpr (!std::is_same_v<T, float>) scratch.reset(new float[vocab_size]);
      for (int64_t r = r0; r < r1; ++r) {
        T* x = base + r * ld;
        float* e = scratch ? scratch.get() : reinterpret_cast<float*>(x);
        lp[r] = row_xent(x, e, vocab_size, padded, tp[r], sp[r]);
      }
    });
  };
  if (logits.scalar_type() == at::kFloat)
    run(logits.data_ptr<float>());
  else
    run(logits.data_ptr<c10::BFloat16>());
  return loss;
}
}  // namespace

// gemv.cpp holds the library's TORCH_LIBRARY block; a fragment adds to it.
TORCH_LIBRARY_FRAGMENT(gpt2_kernels, m) {
  m.def("softmax_xent_grad_(Tensor(a!) logits, Tensor targets, Tensor row_scale, int vocab_size) -> Tensor");
}
TORCH_LIBRARY_IMPL(gpt2_kernels, CPU, m) { m.impl("softmax_xent_grad_", &softmax_xent_grad_); }
