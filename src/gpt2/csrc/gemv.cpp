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

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {
// 16 floats as one vector value (GCC/Clang vector extension): AVX-512 registers where the CPU has them, pairs
// of AVX2 or quads of NEON registers elsewhere; the source stays free of per-ISA intrinsics.
typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
constexpr int64_t L = 16;

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
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

inline v16 as_float(u32x16 bits) {
  v16 v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// y[m, r] = dot(w[r, :], x[m, :]) + bias[r] for M input rows and R weight rows: each weight element is read
// from memory once and used M times.
template <int M, int R>
inline void dot_block(const float* w, const float* /*xs: x itself*/, const float* x, int64_t in, float* y,
                      int64_t ldy, const float* bias) {
  v16 acc[M][R] = {};
  int64_t i = 0;
  for (; i + L <= in; i += L) {
    v16 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = load(x + m * in + i);
    for (int r = 0; r < R; ++r) {
      v16 wv = load(w + r * in + i);
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
                      const float* bias) {
  v16 acc[M][R] = {};
  int64_t i = 0;
  for (; i + 2 * L <= in; i += 2 * L) {
    v16 even[M], odd[M];
    for (int m = 0; m < M; ++m) {
      even[m] = load(xs + m * in + i);
      odd[m] = load(xs + m * in + i + L);
    }
    for (int r = 0; r < R; ++r) {
      u32x16 words;
      std::memcpy(&words, w + r * in + i, sizeof words);
      const v16 w_even = as_float(words << 16), w_odd = as_float(words & 0xffff0000u);
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
// Compilers turn a plain int8-to-float vector conversion into scalar code (GCC 12 does, for AVX2), so the
// weights widen by shifts instead: each 32-bit word holds four int8 weights, and (word << (24 - 8j)) >> 24,
// arithmetic, is the j-th of them sign-extended. One load of QW words thus gives four vectors of QW weights,
// those at 4k + j for lanes k, and xs holds x's rows rearranged to match (per 4 * QW elements: the QW at
// offsets 4k, then the QW at 4k + 1, ...). QW is the CPU's float vector width: one register per vector.
#if defined(__AVX512F__)
constexpr int64_t QW = 16;
#elif defined(__AVX__)
constexpr int64_t QW = 8;
#else
constexpr int64_t QW = 4;
#endif
typedef float qf __attribute__((vector_size(4 * QW)));
typedef int32_t qi __attribute__((vector_size(4 * QW)));
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the int8 kernel reads four weights per 32-bit word");

inline qf qload(const float* p) {
  qf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float qsum(qf v) {
  float s = 0.f;
  for (int64_t k = 0; k < QW; ++k) s += v[k];
  return s;
}

template <int M, int R>
inline void dot_block_i8(const int8_t* w, const float* xs, const float* x, int64_t in, float* y, int64_t ldy,
                         const float* scale, const float* bias) {
  qf acc[M][R] = {};
  int64_t i = 0;
  for (; i + 4 * QW <= in; i += 4 * QW) {
    qf xv[M][4];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) xv[m][j] = qload(xs + m * in + i + j * QW);
    for (int r = 0; r < R; ++r) {
      qi words;
      std::memcpy(&words, w + r * in + i, sizeof words);
      const qf w0 = __builtin_convertvector((words << 24) >> 24, qf);
      const qf w1 = __builtin_convertvector((words << 16) >> 24, qf);
      const qf w2 = __builtin_convertvector((words << 8) >> 24, qf);
      const qf w3 = __builtin_convertvector(words >> 24, qf);
      for (int m = 0; m < M; ++m) acc[m][r] += (w0 * xv[m][0] + w1 * xv[m][1]) + (w2 * xv[m][2] + w3 * xv[m][3]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float s = qsum(acc[m][r]);
      for (int64_t j = i; j < in; ++j) s += static_cast<float>(w[r * in + j]) * x[m * in + j];
      y[m * ldy + r] = s * scale[r] + (bias ? bias[r] : 0.f);
    }
}

template <int M>
void gemv_rows_i8(const int8_t* w, const float* xs, const float* x, const float* scale, const float* b, float* y,
                  int64_t in, int64_t out) {
  // One weight row at a time, unlike the float loops: measured on an AVX2 CPU (16 vector registers, for which
  // the widened weights and 4 vectors of x per input row compete), 1 row beat 2, 4 and 8 for 1 to 4 input rows,
  // by 1.3-2x for one input row.
  at::parallel_for(0, out, 16, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      dot_block_i8<M, 1>(w + o * in, xs, x, in, y + o, out, scale + o, b ? b + o : nullptr);
  });
}

template <int M, typename W>
void gemv_rows(const W* w, const float* xs, const float* x, const float* b, float* y, int64_t in, int64_t out) {
  // R weight rows at a time: more rows in flight read memory faster (8 rather than 4: +8% for one input row,
  // measured on GPT-2's matrices; 12 is slower again), as long as the M * R accumulators and the inputs (M, or
  // 2M for bfloat16) fit in the 32 vector registers.
  constexpr bool bf16 = std::is_same_v<W, c10::BFloat16>;
  constexpr int R = bf16 ? (M <= 2 ? 8 : M <= 4 ? 2 : 1) : (M <= 3 ? 8 : M <= 6 ? 4 : 2);
  at::parallel_for(0, (out + R - 1) / R, 16, [&](int64_t g0, int64_t g1) {
    for (int64_t o = g0 * R; o < std::min(g1 * R, out);) {
      if (o + R <= out) {
        dot_block<M, R>(w + o * in, xs, x, in, y + o, out, b ? b + o : nullptr);
        o += R;
      } else {
        dot_block<M, 1>(w + o * in, xs, x, in, y + o, out, b ? b + o : nullptr);
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

Operands operands(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), op, ": weight must be a contiguous (out, in) matrix");
  const int64_t out = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x.size(-1) == in, op, ": x's last dimension must equal weight's in-features");
  const int64_t rows = x.numel() / in;
  TORCH_CHECK(rows >= 1 && rows <= 8, op, ": 1 to 8 rows");
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
  const auto o = operands("gemv", x, weight, bias);
  const int64_t out = weight.size(0), in = weight.size(1);
  const float* xp = o.x.data_ptr<float>();
  float* yp = o.y.data_ptr<float>();
  if (dtype == at::kFloat) {
    const float* w = weight.data_ptr<float>();
    with_rows(o.rows, [&](auto m) { gemv_rows<decltype(m)::value>(w, xp, xp, o.b(), yp, in, out); });
  } else {
    const auto xs = interleaved(o.x, o.rows, L, 2);  // per 32: the 16 even elements, then the 16 odd ones
    const float* xsp = xs.data_ptr<float>();
    const c10::BFloat16* w = weight.data_ptr<c10::BFloat16>();
    with_rows(o.rows, [&](auto m) { gemv_rows<decltype(m)::value>(w, xsp, xp, o.b(), yp, in, out); });
  }
  return o.y.to(dtype);
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, "gemv_int8: int8 weights only");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "gemv_int8: float32 or bfloat16 x");
  const auto o = operands("gemv_int8", x, weight, bias);
  TORCH_CHECK(scale.numel() == weight.size(0), "gemv_int8: one scale per weight row");
  const int64_t out = weight.size(0), in = weight.size(1);
  const auto sf = scale.to(at::kFloat).contiguous();
  const auto xs = interleaved(o.x, o.rows, QW, 4);  // per 4 * QW: the QW at offsets 4k, then at 4k + 1, ...
  const int8_t* w = weight.data_ptr<int8_t>();
  const float *xp = o.x.data_ptr<float>(), *xsp = xs.data_ptr<float>(), *sp = sf.data_ptr<float>();
  float* yp = o.y.data_ptr<float>();
  with_rows(o.rows, [&](auto m) { gemv_rows_i8<decltype(m)::value>(w, xsp, xp, sp, o.b(), yp, in, out); });
  return o.y.to(x.scalar_type());
}
}  // namespace

TORCH_LIBRARY(gpt2_kernels, m) {
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor weight, Tensor scale, Tensor? bias) -> Tensor");
}
TORCH_LIBRARY_IMPL(gpt2_kernels, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("gemv_int8", &gemv_int8);
}
