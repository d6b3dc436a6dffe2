// The backward pass of causal self-attention for training on the CPU, bfloat16, head dimension 64: the gradients
// of the queries, keys and values, written straight into the gradient of the fused q/k/v projection's output.
//
// torch's CPU flash-attention backward took 17.7 ms per GPT-2 124M layer at 1 x 1024 tokens on a 2-core AMX
// Xeon (its forward: 5.3 ms), a sixth of the training step. Here each head runs on one core, one block of 64 keys
// at a time against every query at or after it (the causal mask's other half is never computed):
//   S = Q K_j^T, dP = dO V_j^T                      (queries x 64, float32)
//   P = exp(S * scale - lse), dS = P (dP - D) scale   (D = rowsum(dO * O); one pass, bfloat16 out)
//   dV_j = P^T dO, dK_j = dS^T Q                     (64 x 64, summed over the queries: one long product each)
//   dQ += dS K_j
// The products are oneDNN's batch-reduce GEMM micro-kernels through torch (at::native::cpublas::brgemm, the
// building block of torch's own CPU flash-attention forward), which run on AMX tiles where the CPU has them; B
// operands are packed to its pair-interleaved (VNNI) layout first. lse is the forward's log-sum-exp of the
// scaled scores (torch's flash forward returns it), so P is recomputed exactly as the forward made it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vectors.h"

namespace {
using bf16 = c10::BFloat16;
namespace blas = at::native::cpublas;
constexpr int64_t D = 64;   // head dimension (every GPT-2 size has 64)
constexpr int64_t KB = 64;  // keys per block: the widest B operand the micro-kernel's packing takes

bool supported() { return blas::could_pack(at::kBFloat16); }

// B (k x n, row stride ld) packed for brgemm; n <= 64
void pack(const bf16* b, int64_t k, int64_t n, int64_t ld, bf16* out) {
  blas::pack(k, n, ld, n, at::kBFloat16, at::kBFloat16, b, out);
}

// C (m x n, float32, row stride n) = or += A (m x k, bfloat16, row stride lda) times packed B
void gemm(int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda, const bf16* b_packed, float* c, bool add) {
  blas::brgemm(m, n, k, lda, n, n, add, a, b_packed, c, true);
}

// One head: q, k, v, o, g point at its first row (row stride ld in elements), lse at its T log-sum-exps; dq, dk,
// dv at its first row of the output (row stride ld). Tp is T rounded up to a block; the scratch buffers hold Tp
// rows, the padding rows zero (their queries take no part: P = dS = 0 there).
struct Scratch {
  explicit Scratch(int64_t tp)
      : q(tp * D), k(tp * D), v(tp * D), dO(tp * D), qt(D * tp), dot(D * tp), kt(D * tp), vt(D * tp), p(tp * KB), ds(tp * KB),
        p_packed(tp * KB + 64), ds_packed(tp * KB + 64), s(tp * KB), dp(tp * KB), dq(tp * D), delta(tp), lse(tp),
        bkt(D * KB), bvt(D * KB), bk(KB * D), dkt(D * KB), dvt(D * KB), dk_rows(KB * D), dv_rows(KB * D) {}
  std::vector<bf16> q, k, v, dO, qt, dot, kt, vt, p, ds, p_packed, ds_packed;
  std::vector<float> s, dp, dq, delta, lse;
  std::vector<bf16> bkt, bvt, bk;
  std::vector<float> dkt, dvt, dk_rows, dv_rows;
};

void head_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* g, const float* lse,
                   bf16* dq, bf16* dk, bf16* dv, int64_t T, int64_t ld, int64_t ld_o, float scale, Scratch& w) {
  const int64_t tp = w.delta.size();
  // gather this head's rows (zero past T) and D = rowsum(dO * O), a block of 64 rows at a time, and write their
  // transposes from that block while it is in the L1 cache (a row-by-row transpose wrote a cache line per element)
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
      v16 delta{};
      for (int64_t d = 0; d < D; d += L) delta += load(g + t * ld_o + d) * load(o + t * ld_o + d);
      w.delta[t] = hsum(delta);
      w.lse[t] = lse[t];
    }
    for (int64_t d = 0; d < D; ++d)
      for (int64_t t = t0; t < t0 + KB; ++t) {
        w.qt[d * tp + t] = w.q[t * D + d];
        w.dot[d * tp + t] = w.dO[t * D + d];
        w.kt[d * tp + t] = w.k[t * D + d];
        w.vt[d * tp + t] = w.v[t * D + d];
      }
  }
  const v16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int64_t kb = 0; kb < tp; kb += KB) {
    const int64_t rows = tp - kb;  // the queries at or after this block's first key
    pack(w.kt.data() + kb, D, KB, tp, w.bkt.data());
    pack(w.vt.data() + kb, D, KB, tp, w.bvt.data());
    pack(w.k.data() + kb * D, KB, D, D, w.bk.data());
    gemm(rows, KB, D, w.q.data() + kb * D, D, w.bkt.data(), w.s.data(), false);
    gemm(rows, KB, D, w.dO.data() + kb * D, D, w.bvt.data(), w.dp.data(), false);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = kb + r;  // the query
      const float* s = w.s.data() + r * KB;
      const float* dp = w.dp.data() + r * KB;
      bf16* p = w.p.data() + r * KB;
      bf16* ds = w.ds.data() + r * KB;
      const v16 lse_v = splat(w.lse[t]), delta_v = splat(w.delta[t]);
      const bool real = t < T;
      for (int64_t c = 0; c < KB; c += L) {
        v16 pv = vexp(load(s + c) * scale - lse_v);  // S * scale <= lse: the argument is never positive
        // keys after the query (the causal mask: only in the diagonal block), padding queries: nothing
        pv = (real && r < KB) ? ((iota + static_cast<float>(c)) > static_cast<float>(r) ? splat(0.f) : pv)
                              : (real ? pv : splat(0.f));
        store(p + c, pv);
        store(ds + c, pv * (load(dp + c) - delta_v) * scale);
      }
    }
    pack(w.p.data(), rows, KB, KB, w.p_packed.data());
    pack(w.ds.data(), rows, KB, KB, w.ds_packed.data());
    gemm(D, KB, rows, w.dot.data() + kb, tp, w.p_packed.data(), w.dvt.data(), false);  // dV_j^T = dO^T P
    gemm(D, KB, rows, w.qt.data() + kb, tp, w.ds_packed.data(), w.dkt.data(), false);  // dK_j^T = Q^T dS
    gemm(rows, D, KB, w.ds.data(), KB, w.bk.data(), w.dq.data() + kb * D, kb > 0);     // dQ += dS K_j
    // dK_j, dV_j: transposed back in the L1 cache, then a row (key) at a time
    for (int64_t d = 0; d < D; ++d)
      for (int64_t c = 0; c < KB; ++c) {
        w.dk_rows[c * D + d] = w.dkt[d * KB + c];
        w.dv_rows[c * D + d] = w.dvt[d * KB + c];
      }
    for (int64_t c = 0; c < KB && kb + c < T; ++c)
      for (int64_t d = 0; d < D; d += L) {
        store(dk + (kb + c) * ld + d, load(w.dk_rows.data() + c * D + d));
        store(dv + (kb + c) * ld + d, load(w.dv_rows.data() + c * D + d));
      }
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; d += L) store(dq + t * ld + d, load(w.dq.data() + t * D + d));
}

// qkv (B, T, 3C): the fused projection's output (queries, keys, values, heads of 64 side by side), out (B, T, C)
// the attention's output and grad_out its gradient, lse (B, H, T) float32 from the forward; returns d qkv.
at::Tensor causal_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& lse, double scale) {
  const char* op = "causal_attention_backward";
  TORCH_CHECK(supported(), op, ": needs oneDNN's bfloat16 micro-kernels, which this CPU lacks");
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % (3 * D) == 0, op, ": qkv must be (B, T, 3C), heads of ", D);
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = C / D;
  for (const auto* t : {&grad_out, &qkv, &out})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->device().is_cpu(), op, ": bfloat16 CPU tensors only");
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({B, T, C}), op,
              ": out and grad_out must be (B, T, C)");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.sizes() == at::IntArrayRef({B, H, T}), op,
              ": lse must be float32 (B, H, T)");
  const auto x = qkv.contiguous(), o = out.contiguous(), g = grad_out.contiguous(), l = lse.contiguous();
  auto dx = at::empty_like(x);
  const int64_t tp = (T + KB - 1) / KB * KB;
  const bf16 *xp = x.data_ptr<bf16>(), *outp = o.data_ptr<bf16>(), *gp = g.data_ptr<bf16>();
  const float* lp = l.data_ptr<float>();
  bf16* dxp = dx.data_ptr<bf16>();
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    Scratch w(tp);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H;
      const int64_t base = b * T * 3 * C + h * D, obase = b * T * C + h * D;
      head_backward(xp + base, xp + base + C, xp + base + 2 * C, outp + obase, gp + obase, lp + i * T, dxp + base,
                    dxp + base + C, dxp + base + 2 * C, T, 3 * C, C, static_cast<float>(scale), w);
    }
    blas::brgemm_release(true);
  });
  return dx;
}

bool causal_attention_backward_supported() { return supported(); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt2_kernels, m) {
  m.def("causal_attention_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, float scale) -> Tensor");
  m.def("causal_attention_backward_supported() -> bool");
}
TORCH_LIBRARY_IMPL(gpt2_kernels, CPU, m) { m.impl("causal_attention_backward", &causal_attention_backward); }
TORCH_LIBRARY_IMPL(gpt2_kernels, CatchAll, m) {
  m.impl("causal_attention_backward_supported", &causal_attention_backward_supported);
}
