// Causal self-attention for training on the CPU, head dimension 64, forward and backward: q, k and v read in place
// from the fused q/k/v projection's output, and the gradients of the queries, keys and values written straight into
// its gradient. bfloat16 where oneDNN has its bfloat16 micro-kernels (AMX) or the CPU AVX512-BF16's dot product
// (Zen 4, Cooper Lake), float32 where torch carries BLAS's sgemm (x86).
//
// Backward: torch's CPU flash-attention backward took 18-20 ms per GPT-2 124M layer at 1 x 1024 tokens on a 2-core
// AMX Xeon in bfloat16, a sixth of the training step; this one 8.8 ms. Each head runs on one core, a block of 64
// keys at a time against every query at or after it (the causal mask's other half is never computed):
//   S = Q K_j^T, dP = dO V_j^T                      (queries x 64, float32)
//   P = exp(S * scale - lse), dS = P (dP - D) scale   (D = rowsum(dO * O); one pass)
//   dV_j = P^T dO, dK_j = dS^T Q                     (64 x 64, summed over the queries: one long product each)
//   dQ += dS K_j
// lse is the forward's log-sum-exp of the scaled scores, so P is recomputed exactly as the forward made it.
// Forward: a chunk of 128 queries at a time, S against every key up to the chunk's last query, each row's exact
// softmax, O = P V in one product (see "forward" below).
// bfloat16: the products are oneDNN's batch-reduce GEMM micro-kernels through torch (at::native::cpublas::brgemm,
// the building block of torch's own CPU flash-attention forward), on AMX tiles; their B operands are written in
// its pair-interleaved (VNNI) layout as they are made. Without AMX, with AVX512-BF16, the same products on a
// micro-kernel of our own (dot_gemm) that reads the same layout: forward and backward 23.5 against torch's 47.1 ms
// per 124M layer at 1 x 1024 tokens on a 2-core Zen 4, forward alone 9.0 against 18.0. The queries go through in
// chunks of 128, so that their float32 scores stay in the core's cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "vectors.h"

namespace {
using bf16 = c10::BFloat16;
namespace blas = at::native::cpublas;
constexpr int64_t D = 64;   // head dimension (every GPT-2 size has 64)
constexpr int64_t KB = 64;  // keys per block: the widest B operand the micro-kernel's packing takes

// Whether oneDNN's micro-kernels run here: AMX (torch's brgemm packs bfloat16 B operands only for them).
bool have_amx() {
  static const bool amx = blas::could_pack(at::kBFloat16);
  return amx;
}

#if defined(__AVX512BF16__)
// Without AMX, on CPUs with AVX512-BF16 (Zen 4, Cooper Lake), the same products on the CPU's bfloat16 dot product
// (vdpbf16ps: 16 float32 sums each of two products a[k] b[k] + a[k + 1] b[k + 1]), from the same packed B: its
// row pairs interleaved are the instruction's operand as they lie. R rows of C (64 float32 columns each, 4R
// accumulators) at a time.
template <int R>
inline void dot_rows(int64_t k, const bf16* a, int64_t lda, const bf16* b, float* c, int64_t ldc, bool add) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = add ? _mm512_loadu_ps(c + r * ldc + 16 * j) : _mm512_setzero_ps();
  for (int64_t p = 0; p < k; p += 2) {  // a row pair of B: 64 columns x 2, 128 values
    __m512bh bv[4];
    for (int j = 0; j < 4; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + p * 64 + 32 * j);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + p, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(c + r * ldc + 16 * j, acc[r][j]);
}

constexpr int DOT_ROWS = 6;  // 24 accumulators, 4 B vectors and A's pair: 29 of the 32 registers

void dot_gemm(int64_t m, int64_t k, const bf16* a, int64_t lda, const bf16* b, float* c, int64_t ldc, bool add) {
  int64_t i = 0;
  for (; i + DOT_ROWS <= m; i += DOT_ROWS) dot_rows<DOT_ROWS>(k, a + i * lda, lda, b, c + i * ldc, ldc, add);
  const auto rest = [&](auto rows) { dot_rows<decltype(rows)::value>(k, a + i * lda, lda, b, c + i * ldc, ldc, add); };
  switch (m - i) {
    case 5: rest(std::integral_constant<int, 5>()); break;
    case 4: rest(std::integral_constant<int, 4>()); break;
    case 3: rest(std::integral_constant<int, 3>()); break;
    case 2: rest(std::integral_constant<int, 2>()); break;
    case 1: rest(std::integral_constant<int, 1>()); break;
    default: break;
  }
}
#endif

// C (m x n, float32, row stride ldc, default n) = or += A (m x k, bfloat16, row stride lda) times packed B. n is 64
// and k even throughout (blocks of 64 keys, heads of 64).
void gemm(int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda, const bf16* b_packed, float* c, bool add,
          int64_t ldc = 0) {
#if defined(__AVX512BF16__)
  if (!have_amx()) {
    TORCH_INTERNAL_ASSERT(n == 64 && k % 2 == 0, "dot_gemm takes 64 columns and an even inner dimension");
    return dot_gemm(m, k, a, lda, b_packed, c, ldc ? ldc : n, add);
  }
#endif
  blas::brgemm(m, n, k, lda, n, ldc ? ldc : n, add, a, b_packed, c, true);
}

typedef uint16_t vh2 __attribute__((vector_size(4 * L)));  // two vh side by side

// Two rows of L bfloat16 values (bits) interleaved element by element: the layout the micro-kernel's B operand
// wants (VNNI: row pairs side by side, [k / 2][n][k % 2]), written as the rows are made, with no packing pass.
template <std::size_t... I>
inline void store_pair(uint16_t* out, vh a, vh b, std::index_sequence<I...>) {
  const vh2 ab = __builtin_shufflevector(a, b, (I % 2 ? L + I / 2 : I / 2)...);
  std::memcpy(out, &ab, sizeof ab);
}
inline void store_pair(uint16_t* out, vh a, vh b) { store_pair(out, a, b, std::make_index_sequence<2 * L>()); }
inline vh load_bits(const bf16* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  return h;
}

// B = X_j (64 key rows x D) in VNNI layout: the key rows in pairs, interleaved
void pack_rows(const bf16* x, uint16_t* out) {
  for (int64_t n = 0; n < KB; n += 2)
    for (int64_t d = 0; d < D; d += L)
      store_pair(out + n * D + 2 * d, load_bits(x + n * D + d), load_bits(x + (n + 1) * D + d));
}

// Whether the bfloat16 products run here: on dot_gemm (AVX512-BF16 without AMX), or on oneDNN's micro-kernels (AMX)
// where their packed B layout is the one written here (checked once against torch's own packing, so that a oneDNN
// with another layout falls back to torch's attention instead of giving wrong gradients).
bool supported() {
#if defined(__AVX512BF16__)
  if (!have_amx()) return true;  // dot_gemm reads the layout written here
#else
  if (!have_amx()) return false;
#endif
  static const bool same_layout = [] {
    std::vector<bf16> b(KB * D);
    for (int64_t i = 0; i < KB * D; ++i) b[i] = bf16(static_cast<float>(i % 251) - 125.f);  // exact in bfloat16
    std::vector<bf16> theirs(KB * D + 64);  // torch's packing may write a little past the matrix
    blas::pack(KB, D, D, D, at::kBFloat16, at::kBFloat16, b.data(), theirs.data());
    std::vector<uint16_t> ours(KB * D);
    pack_rows(b.data(), ours.data());
    return std::memcmp(ours.data(), theirs.data(), KB * D * sizeof(bf16)) == 0;
  }();
  return same_layout;
}

// D's term for one query: the dot product of its rows of dO and O (D values, float32 arithmetic)
template <typename T>
inline float row_dot(const T* a, const T* b) {
  vf acc{};
  for (int64_t d = 0; d < D; d += L) acc += load(a + d) * load(b + d);
  return hsum(acc);
}

// Which of the L keys c to c + L - 1 come after query position t (the causal mask's masked part)
inline auto after(int64_t c, int64_t t) { return (iota() + static_cast<float>(c)) > static_cast<float>(t); }

// P = exp(S scale - lse) and dS = P (dP - D) scale for L keys, c to c + L - 1 of a block, of one query whose
// position in the block is diag (keys past it come after the query: P = dS = 0 there, whatever S and dP hold).
// lse is the forward's log-sum-exp of the query's scaled scores, so S scale - lse <= 0: exp's whole range.
inline void probs_and_grad(vf s, vf dp, vf lse, vf delta, float scale, int64_t c, int64_t diag, vf& p,
                           vf& ds) {
  const auto masked = after(c, diag);
  const vf pv = vexp(s * scale - lse);
  p = masked ? splat(0.f) : pv;
  ds = masked ? splat(0.f) : pv * (dp - delta) * scale;
}

constexpr int64_t CHUNK = 128;  // queries whose scores are in flight at once (their float32 rows stay in L1/L2)

// The working memory of one core: a head's rows (Tp of them: T rounded up to a block, the padding rows zero;
// their queries take no part, P = dS = 0 there).
struct Scratch {
  explicit Scratch(int64_t tp)
      : q(tp * D), k(tp * D), v(tp * D), dO(tp * D), qt(D * tp), dot(D * tp), ds(tp * KB), p_vnni(tp * KB),
        ds_vnni(tp * KB), s(CHUNK * KB), dp(CHUNK * KB), dq(tp * D), delta(tp), lse(tp), bkt(D * KB), bvt(D * KB),
        bk(KB * D), dkt(D * KB), dvt(D * KB), rows(KB * D) {}
  std::vector<bf16> q, k, v, dO, qt, dot, ds;
  std::vector<uint16_t> p_vnni, ds_vnni;
  std::vector<float> s, dp, dq, delta, lse;
  std::vector<uint16_t> bkt, bvt, bk;
  std::vector<float> dkt, dvt, rows;
};

// B = X_j^T (D x 64 keys) in VNNI layout from the key rows of X: element (d, n) at [d / 2][n][d % 2], which is
// X_j's rows read as pairs of bfloat16: a transpose of 32-bit units.
void pack_transposed(const bf16* x, uint16_t* out) {
  uint32_t* o = reinterpret_cast<uint32_t*>(out);
  for (int64_t n = 0; n < KB; ++n) {
    uint32_t row[D / 2];
    std::memcpy(row, x + n * D, sizeof row);
    for (int64_t p = 0; p < D / 2; ++p) o[p * KB + n] = row[p];
  }
}

// dK_j or dV_j, computed transposed (D x 64 keys, float32), written as bfloat16 rows (keys) of the output
void store_transposed(const float* xt, float* rows, bf16* out, int64_t ld, int64_t n) {
  for (int64_t d = 0; d < D; ++d)
    for (int64_t c = 0; c < KB; ++c) rows[c * D + d] = xt[d * KB + c];
  for (int64_t c = 0; c < n; ++c)
    for (int64_t d = 0; d < D; d += L) store(out + c * ld + d, load(rows + c * D + d));
}

// One head: q, k, v (row stride ld), o and g (the output and its gradient, row stride ld_o), lse; writes dq, dk,
// dv (row stride ld).
void head_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* g, const float* lse,
                   bf16* dq, bf16* dk, bf16* dv, int64_t T, int64_t ld, int64_t ld_o, float scale, Scratch& w) {
  const int64_t tp = w.delta.size();
  // gather the rows (zero past T) and D = rowsum(dO * O), a block of 64 rows at a time, and write the transposes
  // of Q and dO from that block while it is in the L1 cache
  for (int64_t t0 = 0; t0 < tp; t0 += KB) {
    for (int64_t t = t0; t < t0 + KB; ++t) {
      if (t >= T) {  // padding
        for (auto* row : {&w.q, &w.k, &w.v, &w.dO}) std::fill_n(row->data() + t * D, D, bf16(0.f));
        w.delta[t] = w.lse[t] = 0.f;
        continue;
      }
      std::memcpy(w.q.data() + t * D, q + t * ld, D * sizeof(bf16));
      std::memcpy(w.k.data() + t * D, k + t * ld, D * sizeof(bf16));
      std::memcpy(w.v.data() + t * D, v + t * ld, D * sizeof(bf16));
      std::memcpy(w.dO.data() + t * D, g + t * ld_o, D * sizeof(bf16));
      w.delta[t] = row_dot(g + t * ld_o, o + t * ld_o);
      w.lse[t] = lse[t];
    }
    for (int64_t d = 0; d < D; ++d)
      for (int64_t t = t0; t < t0 + KB; ++t) {
        w.qt[d * tp + t] = w.q[t * D + d];
        w.dot[d * tp + t] = w.dO[t * D + d];
      }
  }
  const bf16* bkt = reinterpret_cast<const bf16*>(w.bkt.data());
  const bf16* bvt = reinterpret_cast<const bf16*>(w.bvt.data());
  const bf16* bk = reinterpret_cast<const bf16*>(w.bk.data());
  for (int64_t kb = 0; kb < tp; kb += KB) {
    const int64_t rows = tp - kb;  // the queries at or after this block's first key
    pack_transposed(w.k.data() + kb * D, w.bkt.data());
    pack_transposed(w.v.data() + kb * D, w.bvt.data());
    pack_rows(w.k.data() + kb * D, w.bk.data());  // K_j as the B of dS K_j
    for (int64_t r0 = 0; r0 < rows; r0 += CHUNK) {
      const int64_t m = std::min(CHUNK, rows - r0), q0 = kb + r0;
      gemm(m, KB, D, w.q.data() + q0 * D, D, bkt, w.s.data(), false);   // S
      gemm(m, KB, D, w.dO.data() + q0 * D, D, bvt, w.dp.data(), false);  // dP
      for (int64_t r = 0; r < m; r += 2) {
        vh p_bits[2][KB / L], ds_bits[2][KB / L];
        for (int64_t h = 0; h < 2; ++h) {
          const int64_t t = q0 + r + h, diag = t - kb;  // the query; keys past `diag` come after it
          const float* s = w.s.data() + (r + h) * KB;
          const float* dp = w.dp.data() + (r + h) * KB;
          const vf lse_v = splat(w.lse[t]), delta_v = splat(w.delta[t]);
          for (int64_t c = 0; c < KB; c += L) {
            vf pv, dsv;  // padding rows (t >= T) take no part: every key is "after" them
            probs_and_grad(load(s + c), load(dp + c), lse_v, delta_v, scale, c, t < T ? diag : -1, pv, dsv);
            p_bits[h][c / L] = to_bf16(pv);
            ds_bits[h][c / L] = to_bf16(dsv);
            std::memcpy(w.ds.data() + (r0 + r + h) * KB + c, &ds_bits[h][c / L], sizeof(vh));
          }
        }
        for (int64_t c = 0; c < KB; c += L) {
          store_pair(w.p_vnni.data() + (r0 + r) * KB + 2 * c, p_bits[0][c / L], p_bits[1][c / L]);
          store_pair(w.ds_vnni.data() + (r0 + r) * KB + 2 * c, ds_bits[0][c / L], ds_bits[1][c / L]);
        }
      }
      gemm(m, D, KB, w.ds.data() + r0 * KB, KB, bk, w.dq.data() + q0 * D, kb > 0);  // dQ += dS K_j
    }
    const auto* p_vnni = reinterpret_cast<const bf16*>(w.p_vnni.data());
    const auto* ds_vnni = reinterpret_cast<const bf16*>(w.ds_vnni.data());
    gemm(D, KB, rows, w.dot.data() + kb, tp, p_vnni, w.dvt.data(), false);  // dV_j^T = dO^T P
    gemm(D, KB, rows, w.qt.data() + kb, tp, ds_vnni, w.dkt.data(), false);  // dK_j^T = Q^T dS
    const int64_t n = std::min(KB, T - kb);
    store_transposed(w.dkt.data(), w.rows.data(), dk + kb * ld, ld, n);
    store_transposed(w.dvt.data(), w.rows.data(), dv + kb * ld, ld, n);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; d += L) store(dq + t * ld + d, load(w.dq.data() + t * D + d));
}

// float32: the products are BLAS's sgemm, with its operands read in place, strided, from qkv and the output, and
// dQ, dK_j, dV_j written straight into the gradient; at five calls per block of keys and chunk of 256 queries a
// call's fixed cost does not count.
constexpr int64_t GEMM_CHUNK = 256;  // queries per chunk: S (then P) and dP (then dS) take 64 KB each

// BLAS's sgemm, as torch's x86 builds carry it (MKL's, the one torch's own float32 matmul calls), looked up when
// the library loads: weak, so that a torch without it (no symbol) leaves this path off instead of the library.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

// C (m x n, row-major, row stride ldc) = or += op(A) op(B), op the transpose where asked, A and B row-major;
// BLAS is column-major, where a row-major matrix reads as its transpose: C^T = op(B)^T op(A)^T.
void product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float* c, int64_t ldc, bool add) {
  const char op_a = ta ? 'T' : 'N', op_b = tb ? 'T' : 'N';
  const int rows = n, cols = m, inner = k, ld_b = ldb, ld_a = lda, ld_c = ldc;  // of C^T: B's buffer goes first
  const float one = 1.f, beta = add ? 1.f : 0.f;
  sgemm_(&op_b, &op_a, &rows, &cols, &inner, &one, b, &ld_b, a, &ld_a, &beta, c, &ld_c);
}

void head_backward_float(const float* q, const float* k, const float* v, const float* o, const float* g,
                         const float* lse, float* dq, float* dk, float* dv, int64_t T, int64_t ld, int64_t ld_o,
                         float scale, std::vector<float>& delta, std::vector<float>& s, std::vector<float>& dp) {
  for (int64_t t = 0; t < T; ++t) delta[t] = row_dot(g + t * ld_o, o + t * ld_o);
  for (int64_t kb = 0; kb < T; kb += KB) {
    const int64_t n = std::min(KB, T - kb);  // keys in this block
    const float *kj = k + kb * ld, *vj = v + kb * ld;
    for (int64_t q0 = kb; q0 < T; q0 += GEMM_CHUNK) {  // the queries at or after the block's first key
      const int64_t m = std::min(GEMM_CHUNK, T - q0);
      product(false, true, m, n, D, q + q0 * ld, ld, kj, ld, s.data(), KB, false);       // S = Q K_j^T
      product(false, true, m, n, D, g + q0 * ld_o, ld_o, vj, ld, dp.data(), KB, false);  // dP = dO V_j^T
      for (int64_t r = 0; r < m; ++r) {
        const int64_t t = q0 + r;
        const vf lse_v = splat(lse[t]), delta_v = splat(delta[t]);
        for (int64_t c = 0; c < KB; c += L) {  // a last, partial block's columns past n: keys after every query
          vf p, ds;
          probs_and_grad(load(&s[r * KB + c]), load(&dp[r * KB + c]), lse_v, delta_v, scale, c, t - kb, p, ds);
          store(&s[r * KB + c], p);
          store(&dp[r * KB + c], ds);
        }
      }
      product(false, false, m, D, n, dp.data(), KB, kj, ld, dq + q0 * ld, ld, kb > 0);       // dQ += dS K_j
      product(true, false, n, D, m, s.data(), KB, g + q0 * ld_o, ld_o, dv + kb * ld, ld, q0 > kb);  // dV_j += P^T dO
      product(true, false, n, D, m, dp.data(), KB, q + q0 * ld, ld, dk + kb * ld, ld, q0 > kb);     // dK_j += dS^T Q
    }
  }
}

// ------------------------------------------------------------------------------------------------ forward
// A chunk of queries at a time against every key at or before its last query: S in one pass (float32, in the core's
// cache), each row's exact softmax (no running rescale: its max and sum are known before a single exp is kept),
// then O = P V in one product whose inner dimension is every one of those keys.
constexpr int64_t FWD_CHUNK = 128;
// The row stride of the chunk's S and P: the keys and 64 more. With T = 1024 a row of S was 4 KB, all 128 rows of a
// product's output fell into the same sets of the L1 cache, and the bfloat16 forward took 5.7 ms per 124M layer
// at 1 x 1024 tokens against 4.8 with the padding (2-core AMX Xeon).
inline int64_t padded_row(int64_t keys) { return keys + 64; }

// One query's row of S (keys 0 to n - 1, n a multiple of L; keys past `t` come after the query) becomes
// exp(S scale - max), written to p (float32 or bfloat16): the softmax before its division, which is left to the
// product's output (as torch's flash forward does: the largest P is then 1, exact in bfloat16). Returns the row's
// log-sum-exp of its scaled scores and 1 / its sum.
template <typename T>
std::pair<float, float> row_softmax(const float* s, T* p, int64_t n, int64_t t, float scale) {
  const float inf = std::numeric_limits<float>::infinity();
  vf mx = splat(-inf);
  for (int64_t c = 0; c < n; c += L) {
    const vf x = load(s + c);
    mx = after(c, t) || x < mx ? mx : x;
  }
  const float m = hmax(mx);
  const vf mv = splat(m);
  vf sum{};
  for (int64_t c = 0; c < n; c += L) {
    const vf e = vexp((load(s + c) - mv) * scale);  // <= 0 for the query's keys; the others are dropped
    const vf kept = after(c, t) ? splat(0.f) : e;
    store(p + c, kept);
    sum += kept;
  }
  const float total = hsum(sum);
  return {m * scale + std::log(total), 1.f / total};
}

// O's row (D float32 values) divided by its softmax's sum, to out
template <typename T>
inline void store_row(T* out, const float* o, float inv) {
  const vf iv = splat(inv);
  for (int64_t d = 0; d < D; d += L) store(out + d, load(o + d) * iv);
}

// bfloat16: K_j^T blocks and V packed once per head (T rounded up to a block, padding keys zero), S block by block
// on the micro-kernels, P rounded to bfloat16 as the product's A operand, O in float32 rounded once.
struct ForwardScratch {
  explicit ForwardScratch(int64_t tp)
      : rows(tp * D), kt(tp * D), v(tp * D), s(FWD_CHUNK * padded_row(tp)), p(FWD_CHUNK * padded_row(tp)),
        o(FWD_CHUNK * D) {}
  std::vector<bf16> rows;
  std::vector<uint16_t> kt, v;
  std::vector<float> s;
  std::vector<bf16> p;
  std::vector<float> o;
};

void head_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int64_t T, int64_t ld,
                  int64_t ld_o, float scale, ForwardScratch& w) {
  const int64_t tp = static_cast<int64_t>(w.kt.size()) / D, ls = padded_row(tp);
  for (auto [x, packed] : {std::pair{k, &w.kt}, std::pair{v, &w.v}}) {  // gather the rows (zero past T), pack
    for (int64_t t = 0; t < tp; ++t) {
      if (t < T)
        std::memcpy(w.rows.data() + t * D, x + t * ld, D * sizeof(bf16));
      else
        std::fill_n(w.rows.data() + t * D, D, bf16(0.f));
    }
    for (int64_t kb = 0; kb < tp; kb += KB)
      (x == k ? pack_transposed : pack_rows)(w.rows.data() + kb * D, packed->data() + kb * D);
  }
  const bf16* kt = reinterpret_cast<const bf16*>(w.kt.data());
  const bf16* vp = reinterpret_cast<const bf16*>(w.v.data());
  for (int64_t q0 = 0; q0 < T; q0 += FWD_CHUNK) {
    const int64_t m = std::min(FWD_CHUNK, T - q0), n = (q0 + m + KB - 1) / KB * KB;  // keys: whole blocks
    for (int64_t kb = 0; kb < n; kb += KB)
      gemm(m, KB, D, q + q0 * ld, ld, kt + kb * D, w.s.data() + kb, false, ls);  // S = Q K_j^T
    float inv[FWD_CHUNK];
    for (int64_t r = 0; r < m; ++r)
      std::tie(lse[q0 + r], inv[r]) = row_softmax(w.s.data() + r * ls, w.p.data() + r * ls, n, q0 + r, scale);
    gemm(m, D, n, w.p.data(), ls, vp, w.o.data(), false);  // O = P V
    for (int64_t r = 0; r < m; ++r) store_row(out + (q0 + r) * ld_o, w.o.data() + r * D, inv[r]);
  }
}

// float32: S and O = P V through sgemm, operands read in place and O written in place.
void head_forward_float(const float* q, const float* k, const float* v, float* out, float* lse, int64_t T,
                        int64_t ld, int64_t ld_o, float scale, std::vector<float>& s) {
  const int64_t ls = static_cast<int64_t>(s.size()) / FWD_CHUNK;  // padded_row of T rounded up to L
  for (int64_t q0 = 0; q0 < T; q0 += FWD_CHUNK) {
    const int64_t m = std::min(FWD_CHUNK, T - q0), keys = q0 + m, n = (keys + L - 1) / L * L;
    product(false, true, m, keys, D, q + q0 * ld, ld, k, ld, s.data(), ls, false);  // S = Q K^T
    float inv[FWD_CHUNK];
    for (int64_t r = 0; r < m; ++r) {  // columns from `keys` to n: unwritten, after every query of the chunk
      float* row = s.data() + r * ls;
      std::tie(lse[q0 + r], inv[r]) = row_softmax(row, row, n, q0 + r, scale);
    }
    product(false, false, m, D, keys, s.data(), ls, v, ld, out + q0 * ld_o, ld_o, false);  // O = P V
    for (int64_t r = 0; r < m; ++r) store_row(out + (q0 + r) * ld_o, out + (q0 + r) * ld_o, inv[r]);
  }
}

// Whether the two ops take tensors of this dtype here: float32 where torch carries BLAS's sgemm, bfloat16 where
// the CPU has the micro-kernels or AVX512-BF16.
bool causal_attention_supported(c10::ScalarType dtype) {
  return dtype == at::kFloat ? sgemm_ != nullptr : dtype == at::kBFloat16 && supported();
}

// The ops' refusal where causal_attention_supported says no, naming what is missing
void check_supported(c10::ScalarType dtype, const char* op) {
  TORCH_CHECK(causal_attention_supported(dtype), op,
              dtype == at::kFloat ? ": float32 needs BLAS's sgemm, which this build of torch lacks"
                                  : ": bfloat16 needs oneDNN's bfloat16 micro-kernels (AMX) or AVX512-BF16's dot "
                                    "product, which this CPU lacks");
}

// qkv (B, T, 3C) as below; returns the attention's output (B, T, C) and lse (B, H, T, float32), the log-sum-exp of
// each query's scaled scores, which the backward takes.
std::tuple<at::Tensor, at::Tensor> causal_attention_forward(const at::Tensor& qkv, double scale) {
  const char* op = "causal_attention_forward";
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % (3 * D) == 0, op, ": qkv must be (B, T, 3C), heads of ", D);
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = C / D;
  const auto dtype = qkv.scalar_type();
  TORCH_CHECK((dtype == at::kBFloat16 || dtype == at::kFloat) && qkv.device().is_cpu(), op,
              ": a float32 or bfloat16 CPU tensor only");
  check_supported(dtype, op);
  const auto x = qkv.contiguous();
  auto out = at::empty({B, T, C}, x.options());
  auto lse = at::empty({B, H, T}, x.options().dtype(at::kFloat));
  float* lp = lse.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t tp = (T + KB - 1) / KB * KB;
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::unique_ptr<ForwardScratch> w;
    std::vector<float> s;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H;
      const int64_t base = b * T * 3 * C + h * D, obase = b * T * C + h * D;
      if (dtype == at::kBFloat16) {
        if (!w) w = std::make_unique<ForwardScratch>(tp);
        const bf16* xp = x.data_ptr<bf16>() + base;
        head_forward(xp, xp + C, xp + 2 * C, out.data_ptr<bf16>() + obase, lp + i * T, T, 3 * C, C, sc, *w);
      } else {
        if (s.empty()) s.resize(FWD_CHUNK * padded_row((T + L - 1) / L * L));
        const float* xp = x.data_ptr<float>() + base;
        head_forward_float(xp, xp + C, xp + 2 * C, out.data_ptr<float>() + obase, lp + i * T, T, 3 * C, C, sc, s);
      }
    }
    if (dtype == at::kBFloat16 && have_amx()) blas::brgemm_release(true);
  });
  return {out, lse};
}

// qkv (B, T, 3C): the fused projection's output (queries, keys, values, heads of 64 side by side), out (B, T, C)
// the attention's output and grad_out its gradient, lse (B, H, T) float32 from the forward; returns d qkv.
at::Tensor causal_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& lse, double scale) {
  const char* op = "causal_attention_backward";
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % (3 * D) == 0, op, ": qkv must be (B, T, 3C), heads of ", D);
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = C / D;
  const auto dtype = qkv.scalar_type();
  for (const auto* t : {&grad_out, &qkv, &out})
    TORCH_CHECK(t->scalar_type() == dtype && (dtype == at::kBFloat16 || dtype == at::kFloat) && t->device().is_cpu(),
                op, ": float32 or bfloat16 CPU tensors of one dtype only");
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({B, T, C}), op,
              ": out and grad_out must be (B, T, C)");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.sizes() == at::IntArrayRef({B, H, T}), op,
              ": lse must be float32 (B, H, T)");
  check_supported(dtype, op);
  const auto x = qkv.contiguous(), o = out.contiguous(), g = grad_out.contiguous(), l = lse.contiguous();
  auto dx = at::empty_like(x);
  const float* lp = l.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  if (dtype == at::kBFloat16) {
    const int64_t tp = (T + KB - 1) / KB * KB;
    const bf16 *xp = x.data_ptr<bf16>(), *outp = o.data_ptr<bf16>(), *gp = g.data_ptr<bf16>();
    bf16* dxp = dx.data_ptr<bf16>();
    at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
      Scratch w(tp);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / H, h = i % H;
        const int64_t base = b * T * 3 * C + h * D, obase = b * T * C + h * D;
        head_backward(xp + base, xp + base + C, xp + base + 2 * C, outp + obase, gp + obase, lp + i * T, dxp + base,
                      dxp + base + C, dxp + base + 2 * C, T, 3 * C, C, sc, w);
      }
      if (have_amx()) blas::brgemm_release(true);
    });
    return dx;
  }
  const float *xp = x.data_ptr<float>(), *outp = o.data_ptr<float>(), *gp = g.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> delta(T), s(GEMM_CHUNK * KB), dp(GEMM_CHUNK * KB);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H;
      const int64_t base = b * T * 3 * C + h * D, obase = b * T * C + h * D;
      head_backward_float(xp + base, xp + base + C, xp + base + 2 * C, outp + obase, gp + obase, lp + i * T,
                          dxp + base, dxp + base + C, dxp + base + 2 * C, T, 3 * C, C, sc, delta, s, dp);
    }
  });
  return dx;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt2_kernels, m) {
  m.def("causal_attention_forward(Tensor qkv, float scale) -> (Tensor, Tensor)");
  m.def("causal_attention_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, float scale) -> Tensor");
  m.def("causal_attention_supported(ScalarType dtype) -> bool");
}
TORCH_LIBRARY_IMPL(gpt2_kernels, CPU, m) {
  m.impl("causal_attention_forward", &causal_attention_forward);
  m.impl("causal_attention_backward", &causal_attention_backward);
}
TORCH_LIBRARY_IMPL(gpt2_kernels, CatchAll, m) {
  m.impl("causal_attention_supported", &causal_attention_supported);
}
