// A matrix product with its rows split evenly across torch's threads, each part one single-threaded torch matmul
// (oneDNN's, for bfloat16): our own partition of the work, where oneDNN's is poor.
//
// Why: oneDNN 3.12's bfloat16 matmul on AMX runs some of GPT-2's training products on one core of two. Those with
// 1,024 rows and 768 columns (a 124M model at 1 x 1024 tokens: the forward of both output projections, the
// input gradients of c_attn, attn.c_proj, c_fc and the output layer) ran at ~1,100-1,400 GFLOP/s where this op
// reaches ~1,700-2,500, 1.4-1.9x faster (a 2-core AMX Xeon, bf16 peak ~2,600). At other shapes it measured from
// 0.7x to 1.8x of oneDNN, so gpt2.kernels takes it only in the band where it was faster throughout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace {

// out = a b (+ bias, broadcast over rows): a (M, K), b (K, N) in any strides, same dtype; rows of out split in
// `parts` (at most one per thread), each computed by one at::mm / at::addmm inside the thread's share of the work,
// where the nested parallel region leaves it one thread.
at::Tensor split_rows_matmul(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  const char* op = "split_rows_matmul";
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), op, ": a (M, K) and b (K, N) expected, got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device().is_cpu() && b.device().is_cpu(), op,
              ": a and b must be CPU tensors of one dtype");
  if (bias) TORCH_CHECK(bias->dim() == 1 && bias->size(0) == b.size(1), op, ": bias must be (N,)");
  const int64_t M = a.size(0), parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), M));
  const int64_t rows = (M + parts - 1) / parts;
  auto out = at::empty({M, b.size(1)}, a.options());
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    // each thread's part is plain torch, below autograd (the grad mode is the calling thread's, not the worker's)
    at::AutoDispatchBelowAutograd below_autograd;
    for (int64_t p = first; p < last; ++p) {
      const int64_t r0 = p * rows, n = std::min(rows, M - r0);
      if (n <= 0) continue;
      auto part = out.narrow(0, r0, n);
      if (bias)
        at::addmm_out(part, *bias, a.narrow(0, r0, n), b);
      else
        at::mm_out(part, a.narrow(0, r0, n), b);
    }
  });
  return out;
}

// Whether oneDNN runs bfloat16 products on its AMX micro-kernels here (the CPU the split was measured on)
bool split_rows_supported() { return at::native::cpublas::could_pack(at::kBFloat16); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt2_kernels, m) {
  m.def("split_rows_matmul(Tensor a, Tensor b, Tensor? bias) -> Tensor");
  m.def("split_rows_supported() -> bool");
}
TORCH_LIBRARY_IMPL(gpt2_kernels, CPU, m) { m.impl("split_rows_matmul", &split_rows_matmul); }
TORCH_LIBRARY_IMPL(gpt2_kernels, CatchAll, m) { m.impl("split_rows_supported", &split_rows_supported); }
