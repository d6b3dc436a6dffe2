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
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "bfloat16 is read as the top half of a float32");

inline v16 splat(float f) { return v16{} + f; }

// Loads and stores of 16 elements, float32 or bfloat16 (bfloat16 is float32's top half: widening is a shift).
inline v16 load(const c10::BFloat16* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  return bits<v16>(__builtin_convertvector(h, u32x16) << 16);
}
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline void store(c10::BFloat16* p, v16 v) {
  // round to nearest even, as c10::BFloat16 does; NaN becomes the quiet NaN 0x7fc0 (rounding could make it inf)
  const u32x16 b = bits<u32x16>(v);
  const u32x16 rounded = (b + (((b >> 16) & 1u) + 0x7fffu)) >> 16;
  const u32x16 out = (v != v) ? u32x16{} + 0x7fc0u : rounded;
  const u16x16 h = __builtin_convertvector(out, u16x16);
  std::memcpy(p, &h, sizeof h);
}

// The first n < 16 elements, the rest `fill`; and their store. Tails go through the same vector code as the
// body, so that every element of a row is computed alike.
template <typename T>
inline v16 load_part(const T* p, int64_t n, float fill) {
  T tmp[L];
  for (int64_t k = 0; k < L; ++k) tmp[k] = k < n ? p[k] : static_cast<T>(fill);
  return load(tmp);
}
template <typename T>
inline void store_part(T* p, v16 v, int64_t n) {
  T tmp[L];
  store(tmp, v);
  for (int64_t k = 0; k < n; ++k) p[k] = tmp[k];
}

inline float hmax(v16 v) {
  float m = v[0];
  for (int k = 1; k < L; ++k) m = v[k] > m ? v[k] : m;
  return m;
}
inline float hsum(v16 v) {
  float s = 0.f;
  for (int k = 0; k < L; ++k) s += v[k];
  return s;
}

// exp(x) for x <= 0 (x - max, here), after Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial (relative error about 2e-7, as exact as float32's own rounding allows up to an ulp or two), times 2^n.
// x is clamped at -104, below which exp rounds to 0 in float32; 2^n is applied as two factors 2^(n/2) so that
// results down to the subnormals come out right (and not as garbage exponent bits). NaN stays NaN.
inline v16 vexp(v16 x) {
  const v16 lo = splat(-104.f);
  x = (x < lo) ? lo : x;
  const v16 magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer, in the low mantissa bits
  const v16 t = x * 1.44269504088896341f + magic;
  const v16 n = t - magic;
  const i32x16 ni = bits<i32x16>(t) - bits<i32x16>(magic);
  v16 r = x - n * 0.693359375f;  // ln 2 in two parts: the first exact in float32, so n * it is exact
  r = r - n * -2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const i32x16 n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 0]: normal powers of two
  return p * bits<v16>((n1 + 127) << 23) * bits<v16>((n2 + 127) << 23);
}

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
  v16 m0 = splat(-inf), m1 = m0;
  int64_t j = 0;
  for (; j + 2 * L <= body; j += 2 * L) {
    const v16 a = load(x + j), b = load(x + j + L);
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
  }
  for (; j < body; j += L) {
    const v16 a = load(x + j);
    m0 = a > m0 ? a : m0;
  }
  if (tail) {
    const v16 a = load_part(x + body, tail, -inf);
    m0 = a > m0 ? a : m0;
  }
  const float mx = hmax(m0 > m1 ? m0 : m1);
  const float picked = static_cast<float>(x[target]);  // read before e may overwrite it
  const v16 mv = splat(mx);
  v16 s0{}, s1{};
  j = 0;
  for (; j + 2 * L <= body; j += 2 * L) {
    const v16 a = vexp(load(x + j) - mv), b = vexp(load(x + j + L) - mv);
    store(e + j, a);
    store(e + j + L, b);
    s0 += a;
    s1 += b;
  }
  for (; j < body; j += L) {
    const v16 a = vexp(load(x + j) - mv);
    store(e + j, a);
    s0 += a;
  }
  if (tail) {  // the fill's exp(-inf) is 0
    const v16 a = vexp(load_part(x + body, tail, -inf) - mv);
    store_part(e + body, a, tail);
    s0 += a;
  }
  const float sum = hsum(s0 + s1);
  const float c = scale / sum, et = e[target];  // et: read before the float32 row overwrites it
  const v16 cv = splat(c);
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
