// A linear layer applied to a few rows (tokens), float32 on CPU: y = x w^T + b with the
// weight streamed once (few_rows_linear_kernels.h). The Python side
// (vtseg/deploy/few_rows_linear.py) decides when it applies; nn.Linear runs otherwise.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "isa.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

namespace vtseg {
namespace {

constexpr int kLinearRows = 8;       // rows of x per pass over a block of the weight
constexpr int64_t kLinearBlock = 16;  // weight rows per unit of work

#define VTSEG_KERNELS "few_rows_linear_kernels.h"
#include "per_isa.h"
#undef VTSEG_KERNELS

// x (..., K) w^T + b: w (N, K), b (N) or None -> (..., N).
at::Tensor few_rows_linear(const at::Tensor& x, const at::Tensor& w_in,
                           const c10::optional<at::Tensor>& b_in) {
  TORCH_CHECK(x.device().is_cpu() && w_in.device().is_cpu(),
              "few_rows_linear: CPU tensors expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w_in.scalar_type() == at::kFloat,
              "few_rows_linear: float32 tensors expected");
  TORCH_CHECK(w_in.dim() == 2 && x.dim() >= 1 && x.size(-1) == w_in.size(1),
              "few_rows_linear: x (..., K) and w (N, K) expected");
  const int64_t N = w_in.size(0), K = w_in.size(1);
  TORCH_CHECK(K % 16 == 0, "few_rows_linear: in_features must be a multiple of 16");
  const at::Tensor w = w_in.contiguous();
  at::Tensor b;
  if (b_in.has_value()) {
    TORCH_CHECK(b_in->device().is_cpu() && b_in->scalar_type() == at::kFloat &&
                    b_in->dim() == 1 && b_in->size(0) == N,
                "few_rows_linear: b must be (N,) float32");
    b = b_in->contiguous();
  }
  const at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  auto y = at::empty(shape, x.options());
  if (M == 0 || N == 0) return y;
  // x's rows in whole passes of kLinearRows, contiguous: as they are, or zero-padded.
  at::Tensor xp = x2;
  if (M % kLinearRows || !x2.is_contiguous()) {
    const int64_t passes = (M + kLinearRows - 1) / kLinearRows;
    xp = at::zeros({passes * kLinearRows, K}, x.options());
    xp.narrow(0, 0, M).copy_(x2);
  }
  const float* xd = xp.data_ptr<float>();
  const float* wd = w.data_ptr<float>();
  const float* bd = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  // Blocks of weight rows are split over the threads, at least PyTorch's grain of weights
  // each; each block meets every pass of x while it is in cache. Every output is one
  // thread's: any split gives the same numbers.
  const int64_t blocks = (N + kLinearBlock - 1) / kLinearBlock;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (kLinearBlock * K));
  at::parallel_for(0, blocks, grain, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n0 = j * kLinearBlock, n1 = std::min(N, n0 + kLinearBlock);
      for (int64_t m0 = 0; m0 < M; m0 += kLinearRows) {
        VTSEG_ISA(few_rows_linear_block, xd, wd, bd, yd, m0, M, n0, n1, K, N)
      }
    }
  });
  return y;
}

}  // namespace
}  // namespace vtseg

TORCH_LIBRARY_FRAGMENT(vtseg, m) {
  m.def("few_rows_linear(Tensor x, Tensor w, Tensor? b) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(vtseg, CPU, m) {
  m.impl("few_rows_linear", &vtseg::few_rows_linear);
}
