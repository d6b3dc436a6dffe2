// Matrix-vector products for decoding on the CPU: y = x W^T + b for 1 to 8 rows of x, with float32 or
// bfloat16 weights (bfloat16 products accumulate in float32 and round once, as torch's do).
//
// Decoding one token reads every weight once, so its speed is memory bandwidth. torch's matmul for one row
// (MKL's float32 GEMV, oneDNN's bfloat16 one) reads GPT-2's matrices at about half the bandwidth a plain
// streaming loop reaches; this kernel is that streaming loop: each thread walks its share of weight rows front
// to back, several rows at a time, and uses each weight it loads for every input row. Built on first use by
// gpt2/kernels.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "vectors.h"

namespace {
// The float32 and bfloat16 kernels work in 16-float vectors on every CPU (two AVX2 registers each, where the
// compiler does well with loads and multiply-adds); their accumulator counts and the interleaving of x for
// bfloat16 weights were tuned to it. The int8 kernel works in the CPU's own width (vectors.h's vf).
constexpr int64_t L16 = 16;
typedef float v16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// How far ahead of its reads each weight row is prefetched. One core on its own streams memory far below the
// machine's bandwidth (measured on a 2-core Xeon VM: 6-9 GB/s a core from DRAM for int8 weights, the hardware
// prefetcher alone); asking for the lines ahead keeps more of them in flight: 12 -> 18 GB/s on two cores there
// at 4 KB. 8 KB measured better than 4 KB on two AMD EPYC VMs (interleaved runs over a decoded token's products
// of GPT-2 small): on Zen 3 (AVX2) 3-20% for float32, bfloat16 and int8, on Zen 4 (AVX-512) 11% for int8 and
// even (within 3%) for float32 and bfloat16, as was 16 KB.
constexpr int64_t PREFETCH_BYTES = 8192;

template <typename W>
inline void prefetch_ahead(const W* p) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + PREFETCH_BYTES);
}

inline float sum(v16 v) {  // by halves: a few vector adds instead of 16 scalar ones
  v8 a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  a += b;
  v4 c, d;
  std::memcpy(&c, &a, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof c, sizeof d);
  c += d;
  return (c[0] + c[2]) + (c[1] + c[3]);
}

// y[m, r] = dot(w[r, :], x[m, :]) + bias[r] for M input rows and R weight rows: each weight element is read
// from memory once and used M times.
template <int M, int R>
inline void dot_block(const float* w, const float* /*xs: x itself*/, const float* x, int64_t in, float* y,
                      int64_t ldy, const float* bias, const float* /*scale*/) {
  v16 acc[M][R] = {};
  int64_t i = 0;
  for (; i + L16 <= in; i += L16) {
    v16 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = load16(x + m * in + i);
    for (int r = 0; r < R; ++r) {
      prefetch_ahead(w + r * in + i);
      v16 wv = load16(w + r * in + i);
      for (int m = 0; m < M; ++m) acc[m][r] += wv * xv[m];
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float s = sum(acc[m][r]);
      for (int64_t j = i; j < in; ++j) s += w[r * in + j] * x[m * in + j];
      y[m * ldy + r] = s + (bias ? bias[r] : 0.f);
    }
}

// The same for bfloat16 weights, 32 at a time without conversion instructions: bfloat16 is float32's top half,
// so of each 32-bit word of two weights, (word << 16) is the even one and (word & 0xffff0000) the odd one, as
// floats. xs holds x's rows rearranged to match (per 32: the 16 even elements, then the 16 odd ones).
template <int M, int R>
inline void dot_block(const c10::BFloat16* w, const float* xs, const float* x, int64_t in, float* y, int64_t ldy,
                      const float* bias, const float* /*scale*/) {
  v16 acc[M][R] = {};
  int64_t i = 0;
  for (; i + 2 * L16 <= in; i += 2 * L16) {
    v16 even[M], odd[M];
    for (int m = 0; m < M; ++m) {
      even[m] = load16(xs + m * in + i);
      odd[m] = load16(xs + m * in + i + L16);
    }
    for (int r = 0; r < R; ++r) {
      prefetch_ahead(w + r * in + i);
      u32x16 words;
      std::memcpy(&words, w + r * in + i, sizeof words);
      const v16 w_even = bits<v16>(words << 16), w_odd = bits<v16>(words & 0xffff0000u);
      for (int m = 0; m < M; ++m) acc[m][r] += w_even * even[m] + w_odd * odd[m];
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float s = sum(acc[m][r]);
      for (int64_t j = i; j < in; ++j) s += static_cast<float>(w[r * in + j]) * x[m * in + j];
      y[m * ldy + r] = s + (bias ? bias[r] : 0.f);
    }
}

// The same for int8 weights with one float32 scale per weight row (weight-only quantisation), accumulated in
// float32; the row's scale multiplies the finished dot product once, so a weight costs one byte of reading.
// L is the CPU's float vector width (one register per vector); `widen` turns L int8 weights into L floats.
inline float qsum(vf v) {
#if defined(__AVX512F__)
  return sum(v);  // by halves (vf is v16 here)
#else
  return hsum(v);
#endif
}

// GCC 12 compiles the plain int8 -> int32 -> float vector conversion into scalar code on x86 (with AVX2 and
// AVX-512 alike), which made the kernel compute-bound at a third of the memory's speed; there the widening is
// the one instruction made for it (vpmovsxbd), then one int-to-float conversion.
inline vf widen(const int8_t* p) {
  vf v;
#if defined(__AVX512F__)
  const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  std::memcpy(&v, &f, sizeof v);
#elif defined(__AVX2__)
  const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  std::memcpy(&v, &f, sizeof v);
#else
  typedef int8_t vb __attribute__((vector_size(L)));
  vb b;
  std::memcpy(&b, p, sizeof b);
  v = __builtin_convertvector(__builtin_convertvector(b, vi), vf);
#endif
  return v;
}

// Each (input row, weight row) pair keeps K accumulators, used in turn over a cache line's L-wide pieces: one
// chain of dependent FMAs (4 cycles each) per pair would cap a core at 2 * L weights per 4 cycles, which with
// AVX2's L = 8 is ~12 GB/s a core, the memory's speed; K chains lift that cap. One prefetch per cache line.
template <int M, int R>
inline void dot_block(const int8_t* w, const float* /*xs: x itself*/, const float* x, int64_t in, float* y,
                      int64_t ldy, const float* bias, const float* scale) {
  constexpr int64_t LINE = 64, U = LINE / L;  // L-wide pieces per cache line of weights
  constexpr int K = M * R >= 4 ? 1 : 4 / (M * R);
  vf acc[M][R][K] = {};
  int64_t i = 0;
  for (; i + LINE <= in; i += LINE) {
    for (int r = 0; r < R; ++r) prefetch_ahead(w + r * in + i);
    for (int64_t u = 0; u < U; ++u) {
      vf xv[M];
      for (int m = 0; m < M; ++m) xv[m] = load(x + m * in + i + u * L);
      for (int r = 0; r < R; ++r) {
        const vf wv = widen(w + r * in + i + u * L);
        for (int m = 0; m < M; ++m) acc[m][r][u % K] += wv * xv[m];
      }
    }
  }
  for (; i + L <= in; i += L)
    for (int r = 0; r < R; ++r) {
      const vf wv = widen(w + r * in + i);
      for (int m = 0; m < M; ++m) acc[m][r][0] += wv * load(x + m * in + i);
    }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      vf a = acc[m][r][0];
      for (int k = 1; k < K; ++k) a += acc[m][r][k];
      float s = qsum(a);
      for (int64_t j = i; j < in; ++j) s += static_cast<float>(w[r * in + j]) * x[m * in + j];
      y[m * ldy + r] = s * scale[r] + (bias ? bias[r] : 0.f);
    }
}

#if defined(__AVX512BF16__)
// bfloat16 weights and bfloat16 x where the CPU multiplies them itself: vdpbf16ps takes 32 pairs of bfloat16s,
// multiplies them exactly and adds each two neighbours' products into a float32 lane, so a weight costs no
// conversion at all (the generic loop above needs a shift or a mask per weight and is compute-bound).
template <int M, int R>
inline void dot_block(const c10::BFloat16* w, const c10::BFloat16* /*xs: x itself*/, const c10::BFloat16* x,
                      int64_t in, float* y, int64_t ldy, const float* bias, const float* /*scale*/) {
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 2 * L16 <= in; i += 2 * L16) {
    __m512bh xv[M];
    for (int m = 0; m < M; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * in + i);
    for (int r = 0; r < R; ++r) {
      prefetch_ahead(w + r * in + i);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * in + i);
      for (int m = 0; m < M; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv, xv[m]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float s = _mm512_reduce_add_ps(acc[m][r]);
      for (int64_t j = i; j < in; ++j) s += static_cast<float>(w[r * in + j]) * static_cast<float>(x[m * in + j]);
      y[m * ldy + r] = s + (bias ? bias[r] : 0.f);
    }
}
#endif

// Weight rows in flight per thread, by weight type and input rows: more rows read memory faster as long as the
// M * R accumulators and the inputs fit in the vector registers (32 with AVX-512, 16 with AVX2: a v16 takes two
// AVX2 registers, so AVX-512's counts spill there). Measured on GPT-2's matrices read from DRAM, 2 threads:
// with AVX-512 on the Xeon VM above, elsewhere on the AMD VM, where float32 M = 1 reads 17% faster with 4 rows
// than with 8, bfloat16 23% faster with 2 than with 8, and int8 20% faster with 1 than with 2 (one weight row
// is one sequential stream; the int8 loop's K accumulators hide the FMA latency instead).
template <typename W, int M>
constexpr int rows_in_flight() {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<W, float>) return M <= 3 ? 8 : M <= 6 ? 4 : 2;  // 8 rather than 4: +8% at M = 1
  else if constexpr (std::is_same_v<W, int8_t>) return M <= 2 ? 2 : 1;
  else return M <= 2 ? 8 : M <= 4 ? 2 : 1;  // bfloat16: 2M inputs for the generic loop
#else
  if constexpr (std::is_same_v<W, float>) return M <= 3 ? 4 : M <= 6 ? 2 : 1;
  else if constexpr (std::is_same_v<W, int8_t>) return 1;
  else return M <= 2 ? 2 : 1;
#endif
}

// y = x W^T + b over every weight row, split among torch's threads; xs is x as the row loop wants it
// (rearranged for the generic bfloat16 loop, x itself otherwise); scale is int8's per-row scales.
template <int M, typename W, typename X>
void gemv_rows(const W* w, const X* xs, const X* x, const float* b, float* y, int64_t in, int64_t out,
               const float* scale = nullptr) {
  constexpr int R = rows_in_flight<W, M>();
  at::parallel_for(0, (out + R - 1) / R, 16, [&](int64_t g0, int64_t g1) {
    for (int64_t o = g0 * R; o < std::min(g1 * R, out);) {
      const float* s = scale ? scale + o : nullptr;
      if (o + R <= out) {
        dot_block<M, R>(w + o * in, xs, x, in, y + o, out, b ? b + o : nullptr, s);
        o += R;
      } else {
        dot_block<M, 1>(w + o * in, xs, x, in, y + o, out, b ? b + o : nullptr, s);
        o += 1;
      }
    }
  });
}

// f(std::integral_constant<int, M>{}) for M = rows (1 to 8): the row count as a template argument, so that each
// loop keeps its accumulators in registers.
template <typename F>
void with_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// What both ops share: x's 1 to 8 rows as float32, the bias as float32 (or none) and the float32 output. x, bias
// and y are a few KB: float32 copies cost nothing next to reading the weights.
struct Operands {
  at::Tensor x, bias, y;
  int64_t rows;
  const float* b() const { return bias.defined() ? bias.data_ptr<float>() : nullptr; }
};

Operands operands(const char* op, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  int64_t max_rows) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), op, ": weight must be a contiguous (out, in) matrix");
  const int64_t out = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x.size(-1) == in, op, ": x's last dimension must equal weight's in-features");
  const int64_t rows = x.numel() / in;
  TORCH_CHECK(rows >= 1 && rows <= max_rows, op, ": 1 to ", max_rows, " rows");
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  at::Tensor b = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  return {x.to(at::kFloat).contiguous(), b, at::empty(sizes, x.options().dtype(at::kFloat)), rows};
}

// x's rows in the order a widening loop reads them: per block of lanes * k elements, the `lanes` elements at
// offsets j, k + j, 2k + j, ... for j = 0 .. k-1 in turn (the tail past the last whole block stays as it is).
at::Tensor interleaved(const at::Tensor& xf, int64_t rows, int64_t lanes, int64_t k) {
  const int64_t in = xf.size(-1), head = in / (lanes * k) * (lanes * k);
  auto xs = xf.reshape({rows, in}).clone();
  auto blocks = xs.narrow(1, 0, head).reshape({rows, head / (lanes * k), lanes, k});  // (..., lane, j)
  xs.narrow(1, 0, head).copy_(blocks.transpose(2, 3).reshape({rows, head}));
  return xs;
}

at::Tensor gemv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "gemv: float32 or bfloat16 weights only");
  TORCH_CHECK(x.scalar_type() == dtype, "gemv: x and weight must have the same dtype");
  const auto o = operands("gemv", x, weight, bias, 8);
  const int64_t out = weight.size(0), in = weight.size(1);
  const float* xp = o.x.data_ptr<float>();
  float* yp = o.y.data_ptr<float>();
  if (dtype == at::kFloat) {
    const float* w = weight.data_ptr<float>();
    with_rows(o.rows, [&](auto m) { gemv_rows<decltype(m)::value>(w, xp, xp, o.b(), yp, in, out); });
  } else {
    const c10::BFloat16* w = weight.data_ptr<c10::BFloat16>();
#if defined(__AVX512BF16__)
    const auto xb = x.reshape({o.rows, in}).contiguous();  // bfloat16 as it came: the CPU's dot product takes it
    const c10::BFloat16* xbp = xb.data_ptr<c10::BFloat16>();
    with_rows(o.rows, [&](auto m) { gemv_rows<decltype(m)::value>(w, xbp, xbp, o.b(), yp, in, out); });
#else
    const auto xs = interleaved(o.x, o.rows, L16, 2);  // per 32: the 16 even elements, then the 16 odd ones
    const float* xsp = xs.data_ptr<float>();
    with_rows(o.rows, [&](auto m) { gemv_rows<decltype(m)::value>(w, xsp, xp, o.b(), yp, in, out); });
#endif
  }
  return o.y.to(dtype);
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, "gemv_int8: int8 weights only");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "gemv_int8: float32 or bfloat16 x");
  const auto o = operands("gemv_int8", x, weight, bias, 64);
  TORCH_CHECK(scale.numel() == weight.size(0), "gemv_int8: one scale per weight row");
  const int64_t out = weight.size(0), in = weight.size(1);
  const auto sf = scale.to(at::kFloat).contiguous();
  const int8_t* w = weight.data_ptr<int8_t>();
  const float *xp = o.x.data_ptr<float>(), *sp = sf.data_ptr<float>();
  float* yp = o.y.data_ptr<float>();
  // Past 8 rows (a short prompt, a few sequences at once), 8 at a time: each pass reads the weights again, and
  // still beats dequantising them for torch's matmul up to about 64 rows (measured on GPT-2's matrices).
  for (int64_t r0 = 0; r0 < o.rows; r0 += 8) {
    const float* xr = xp + r0 * in;
    with_rows(std::min<int64_t>(8, o.rows - r0),
              [&](auto m) { gemv_rows<decltype(m)::value>(w, xr, xr, o.b(), yp + r0 * out, in, out, sp); });
  }
  return o.y.to(x.scalar_type());
}
// Input rows up to which gemv beats torch's bfloat16 matmul (oneDNN, which has the CPU's dot-product
// instructions and wins once a few rows share each weight, unless this kernel has them too).
int64_t bf16_fast_rows() {
#if defined(__AVX512BF16__)
  return 8;  // measured on GPT-2's matrices: 1.2-1.9x torch's at 1 to 6 rows, 0.9-1.3x at 8
#elif defined(__AVX512F__)
  return 2;
#else
  return 0;  // AVX2 (AMD EPYC VM): the shifting loop read GPT-2's matrices at 0.85-0.97x oneDNN's speed at 1 row
#endif
}
}  // namespace

TORCH_LIBRARY(gpt2_kernels, m) {
  m.def("bf16_fast_rows() -> int");
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor weight, Tensor scale, Tensor? bias) -> Tensor");
}
// No tensor arguments, so no dispatch key: registered for every backend.
TORCH_LIBRARY_IMPL(gpt2_kernels, CatchAll, m) { m.impl("bf16_fast_rows", &bf16_fast_rows); }
TORCH_LIBRARY_IMPL(gpt2_kernels, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("gemv_int8", &gemv_int8);
}
