// Fused CPU kernels of the attention between a few tokens and a map's pixels (float32,
// inference, maps stored channels_last or NCHW): the tokenizers' softmax_N(q x^T) x and
// the projector's residual + softmax_L(x k^T) v, each in one pass over the pixels, with
// nothing of the map's size but the projector's output written. The Python side
// (vtseg/models/layers/token_pixel_kernels.py) decides when they apply; the other cases
// run PyTorch's products (vtseg/models/layers/token_pixel_attention.py).
//
// Compiled once per instruction set (per_isa.h: x86-64 with AVX-512, with AVX2 + FMA, and
// the baseline: SSE2, or NEON elsewhere), each with vectors of its own width, and chosen
// at run time (isa.h). The same build runs on any x86-64 CPU.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "isa.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace vtseg {
namespace {

constexpr int64_t kTile = 16;  // pixels of a channel-major map per unit of work

#define VTSEG_KERNELS "token_pixel_kernels.h"
#include "per_isa.h"
#undef VTSEG_KERNELS

// fn<8> or fn<16> (lmax: the tokens padded to 8 or 16), for that instruction set.
#define VTSEG_DISPATCH(fn, lmax, ...)  \
  if ((lmax) == 8) {                   \
    VTSEG_ISA(fn<8>, __VA_ARGS__)      \
  } else {                             \
    VTSEG_ISA(fn<16>, __VA_ARGS__)     \
  }

// The few tokens' rows, zero-padded to lmax rows, contiguous: (B, lmax, C).
at::Tensor padded_rows(const at::Tensor& t, int64_t lmax) {
  auto out = at::zeros({t.size(0), lmax, t.size(2)}, t.options());
  out.narrow(1, 0, t.size(1)).copy_(t);
  return out;
}

// How a (B, N, C) pixel tensor is stored: one pixel per row (a channels_last map) or one
// channel per row (an NCHW map); the row stride of the other axis.
struct Layout {
  bool rows;
  int64_t stride;  // between pixels (rows) or between channels (channel-major)
};

bool is_rows(const at::Tensor& t) {
  return t.stride(2) == 1 && (t.size(1) == 1 || t.stride(1) == t.size(2));
}

bool is_channel_rows(const at::Tensor& t) {
  return t.stride(1) == 1 && t.stride(2) >= t.size(1);
}

// The pixels as they come when they are rows or channel rows; other strides (the ops are
// tagged flexible_layout: TorchInductor may hand them any) are copied into rows.
at::Tensor as_pixels(const at::Tensor& t) {
  return is_rows(t) || is_channel_rows(t) ? t : t.contiguous();
}

Layout layout_of(const at::Tensor& t) {
  return is_rows(t) ? Layout{true, t.size(2)} : Layout{false, t.stride(2)};
}

// t stored as pixels of layout `like` are, copied if it is not.
at::Tensor stored_as(const at::Tensor& t, const Layout& like) {
  if (like.rows) return is_rows(t) ? t : t.contiguous();
  return is_channel_rows(t) ? t : t.transpose(1, 2).contiguous().transpose(1, 2);
}

void check_args(const at::Tensor& pixels, const at::Tensor& tokens, const char* what) {
  TORCH_CHECK(pixels.device().is_cpu() && tokens.device().is_cpu(), what,
              ": CPU tensors expected");
  TORCH_CHECK(pixels.scalar_type() == at::kFloat && tokens.scalar_type() == at::kFloat, what,
              ": float32 tensors expected");
  TORCH_CHECK(pixels.dim() == 3 && tokens.dim() == 3, what, ": (B, n, c) tensors expected");
  TORCH_CHECK(pixels.size(0) == tokens.size(0), what, ": batch sizes differ");
  TORCH_CHECK(tokens.size(1) >= 1 && tokens.size(1) <= 16, what, ": 1 to 16 tokens expected");
  TORCH_CHECK(pixels.size(2) % 16 == 0, what, ": channels must be a multiple of 16");
}

// An optional (B, N, C) float32 tensor added to an output, stored as `like` (copied if
// it is not); undefined when absent. `what` names it in the error.
at::Tensor added_pixels(const c10::optional<at::Tensor>& t, int64_t B, int64_t N, int64_t C,
                        const Layout& like, const char* what) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 3 && t->size(0) == B &&
                  t->size(1) == N && t->size(2) == C,
              what, " must be (B, N, ", C, ") float32");
  return stored_as(*t, like);
}

// Pixels n0..n1 of channel-major x (row stride xs) as rows, (n1 - n0) x C.
std::vector<float> gather_rows(const float* x, int64_t xs, int64_t n0, int64_t n1, int64_t C) {
  std::vector<float> rows((n1 - n0) * C);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = 0; c < C; ++c) rows[(n - n0) * C + c] = x[c * xs + n];
  return rows;
}

// softmax_N(scale q x^T) x: q (B, L, C) tokens, x (B, N, C) pixels -> (B, L, C).
at::Tensor tokens_over_pixels(const at::Tensor& q, const at::Tensor& x_in, double scale) {
  check_args(x_in, q, "tokens_over_pixels");
  const at::Tensor x = as_pixels(x_in);
  const Layout lx = layout_of(x);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), L = q.size(1);
  TORCH_CHECK(q.size(2) == C, "tokens_over_pixels: q and x widths differ");
  TORCH_CHECK(N >= 1, "tokens_over_pixels: no pixels");
  const int64_t lmax = L <= 8 ? 8 : 16;
  const at::Tensor qp = padded_rows(q, lmax);
  // Fixed blocks of pixels, merged in order: the result does not depend on the number of
  // threads. A channel-major map's last pixels short of a tile of 16 are one more part.
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = (N + kBlock - 1) / kBlock, slots = blocks + 1;
  const int64_t tiled = lx.rows ? N : N / kTile * kTile;
  const int64_t part = lmax * (C + 2);
  std::vector<float> parts(B * slots * part);
  const float* xd = x.data_ptr<float>();
  const float* qd = qp.data_ptr<float>();
  const int64_t xb = x.stride(0);
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, B * slots, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / slots, j = i % slots;
      float* p = parts.data() + i * part;
      const float* xbat = xd + b * xb;
      const float* qbat = qd + b * lmax * C;
      int64_t n0 = j * kBlock, n1 = std::min(tiled, n0 + kBlock);
      std::vector<float> tail;
      bool rows = lx.rows;
      if (j == blocks) {  // the channel-major tail, gathered into rows
        n0 = tiled;
        n1 = N;
        tail = gather_rows(xbat, lx.stride, n0, n1, C);
        xbat = tail.data() - n0 * C;
        rows = true;
      }
      if (n0 >= n1) {
        std::fill(p, p + part, 0.f);
        std::fill(p, p + lmax, -INFINITY);
        continue;
      }
      if (rows) {
        VTSEG_DISPATCH(tokens_over_pixels_part, lmax, xbat, qbat, p, p + lmax, p + 2 * lmax,
                       n0, n1, C, L, fscale)
      } else {
        VTSEG_DISPATCH(tokens_over_pixels_part_cm, lmax, xbat, lx.stride, qbat, p, p + lmax,
                       p + 2 * lmax, n0, n1, C, L, fscale)
      }
    }
  });
  auto out = at::empty({B, L, C}, x.options());
  float* od = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t l = 0; l < L; ++l) {
      float m = -INFINITY;
      for (int64_t j = 0; j < slots; ++j) m = std::max(m, parts[(b * slots + j) * part + l]);
      float* o = od + (b * L + l) * C;
      std::fill(o, o + C, 0.f);
      float s = 0.f;
      for (int64_t j = 0; j < slots; ++j) {
        const float* p = parts.data() + (b * slots + j) * part;
        if (p[l] == -INFINITY) continue;
        const float r = std::exp(p[l] - m);
        s += r * p[lmax + l];
        const float* acc = p + 2 * lmax + l * C;
        for (int64_t c = 0; c < C; ++c) o[c] += r * acc[c];
      }
      const float inv = 1.f / s;
      for (int64_t c = 0; c < C; ++c) o[c] *= inv;
    }
  }
  return out;
}

// residual + softmax_L(scale x k^T) v: x (B, N, C) pixels, k (B, L, C), v (B, L, Cv),
// residual (B, N, Cv) pixels stored as x, or None -> (B, N, Cv) pixels stored as x.
at::Tensor pixels_over_tokens(const at::Tensor& x_in, const at::Tensor& k, const at::Tensor& v,
                              const c10::optional<at::Tensor>& residual, double scale) {
  check_args(x_in, k, "pixels_over_tokens");
  const at::Tensor x = as_pixels(x_in);
  const Layout lx = layout_of(x);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), L = k.size(1), Cv = v.size(2);
  TORCH_CHECK(k.size(2) == C, "pixels_over_tokens: x and k widths differ");
  TORCH_CHECK(v.dim() == 3 && v.size(0) == B && v.size(1) == L && v.scalar_type() == at::kFloat,
              "pixels_over_tokens: v must be (B, L, Cv) float32");
  TORCH_CHECK(Cv % 16 == 0, "pixels_over_tokens: value channels must be a multiple of 16");
  const at::Tensor r = added_pixels(residual, B, N, Cv, lx, "pixels_over_tokens: the residual");
  const float* rd = r.defined() ? r.data_ptr<float>() : nullptr;
  const int64_t rb = r.defined() ? r.stride(0) : 0;
  const int64_t rs = !r.defined() ? 0 : lx.rows ? Cv : r.stride(2);
  const int64_t lmax = L <= 8 ? 8 : 16;
  const at::Tensor kp = padded_rows(k, lmax), vp = padded_rows(v, lmax);
  // The output is stored as the pixels are: rows, or an NCHW map's channel rows.
  auto out = lx.rows ? at::empty({B, N, Cv}, x.options())
                     : at::empty({B, Cv, N}, x.options()).transpose(1, 2);
  const int64_t os = lx.rows ? Cv : N;
  const float* xd = x.data_ptr<float>();
  const float* kd = kp.data_ptr<float>();
  const float* vd = vp.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const int64_t xb = x.stride(0);
  const float fscale = static_cast<float>(scale);
  // Every pixel is computed alone: any split over threads gives the same numbers. Work is
  // split in tiles of 16 pixels (a channel-major map's vector); a last, shorter tile of a
  // channel-major map is gathered into rows.
  const int64_t tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, B * tiles, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t b = i / tiles, t0 = i % tiles, t1 = std::min(tiles, t0 + (i1 - i));
      const int64_t n0 = t0 * kTile, n1 = std::min(N, t1 * kTile);
      const float* xbat = xd + b * xb;
      const float* rbat = rd ? rd + b * rb : nullptr;
      float* obat = od + b * N * Cv;
      const float* kbat = kd + b * lmax * C;
      const float* vbat = vd + b * lmax * Cv;
      if (lx.rows) {
        VTSEG_DISPATCH(pixels_over_tokens, lmax, xbat, kbat, vbat, rbat, obat, n0, n1, C, Cv, L,
                       fscale)
      } else {
        const int64_t whole = n0 + (n1 - n0) / kTile * kTile;
        VTSEG_DISPATCH(pixels_over_tokens_cm, lmax, xbat, lx.stride, kbat, vbat, rbat, rs, obat,
                       os, n0, whole, C, Cv, L, fscale)
        if (whole < n1) {  // the last pixels, as rows
          const std::vector<float> xr = gather_rows(xbat, lx.stride, whole, n1, C);
          const std::vector<float> rr =
              rbat ? gather_rows(rbat, rs, whole, n1, Cv) : std::vector<float>();
          std::vector<float> orow((n1 - whole) * Cv);
          const int64_t cnt = n1 - whole;
          VTSEG_DISPATCH(pixels_over_tokens, lmax, xr.data(), kbat, vbat,
                         rbat ? rr.data() : nullptr, orow.data(), 0, cnt, C, Cv, L, fscale)
          for (int64_t n = 0; n < cnt; ++n)
            for (int64_t c = 0; c < Cv; ++c) obat[c * os + whole + n] = orow[n * Cv + c];
        }
      }
      i += t1 - t0;
    }
  });
  return out;
}

// add + a b: a (B, N, K) over a map's pixels with K <= 16, b (B, K, C), add (B, N, C) or
// None -> (B, N, C), stored one pixel per row, or one channel per row when channels_major.
at::Tensor pixel_product(const at::Tensor& a_in, const at::Tensor& b_in,
                         const c10::optional<at::Tensor>& add_in, bool channels_major) {
  TORCH_CHECK(a_in.device().is_cpu() && b_in.device().is_cpu(),
              "pixel_product: CPU tensors expected");
  TORCH_CHECK(a_in.scalar_type() == at::kFloat && b_in.scalar_type() == at::kFloat,
              "pixel_product: float32 tensors expected");
  TORCH_CHECK(a_in.dim() == 3 && b_in.dim() == 3 && a_in.size(0) == b_in.size(0) &&
                  a_in.size(2) == b_in.size(1),
              "pixel_product: a (B, N, K) and b (B, K, C) expected");
  const int64_t B = a_in.size(0), N = a_in.size(1), K = a_in.size(2), C = b_in.size(2);
  TORCH_CHECK(K >= 1 && K <= 16, "pixel_product: 1 to 16 inner terms expected");
  TORCH_CHECK(C % 16 == 0, "pixel_product: C must be a multiple of 16");
  const at::Tensor add =
      added_pixels(add_in, B, N, C, Layout{!channels_major, 0}, "pixel_product: add");
  const int64_t kmax = K <= 8 ? 8 : 16;
  auto out = channels_major ? at::empty({B, C, N}, a_in.options()).transpose(1, 2)
                            : at::empty({B, N, C}, a_in.options());
  if (N == 0) return out;
  float* od = out.data_ptr<float>();
  const float* dd = add.defined() ? add.data_ptr<float>() : nullptr;
  const int64_t db = add.defined() ? add.stride(0) : 0;
  if (!channels_major) {
    const at::Tensor b = padded_rows(b_in, kmax);  // (B, kmax, C)
    const float* ad = a_in.data_ptr<float>();
    const float* bd = b.data_ptr<float>();
    const int64_t as0 = a_in.stride(0), as1 = a_in.stride(1), as2 = a_in.stride(2);
    constexpr int64_t kRowsPerTask = 64;
    const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
    at::parallel_for(0, B * tasks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bi = i / tasks, n0 = i % tasks * kRowsPerTask;
        const int64_t n1 = std::min(N, n0 + kRowsPerTask);
        VTSEG_DISPATCH(pixel_product_rows, kmax, ad + bi * as0, as1, as2, bd + bi * kmax * C,
                       dd ? dd + bi * db : nullptr, od + bi * N * C, n0, n1, K, C)
      }
    });
    return out;
  }
  // Channel rows: a read as K rows along the pixels, b as C rows of kmax terms.
  at::Tensor at_ = a_in.transpose(1, 2);  // (B, K, N)
  if (at_.stride(2) != 1) at_ = at_.contiguous();
  auto bt = at::zeros({B, C, kmax}, b_in.options());
  bt.narrow(2, 0, K).copy_(b_in.transpose(1, 2));
  const float* atd = at_.data_ptr<float>();
  const float* btd = bt.data_ptr<float>();
  const int64_t atb = at_.stride(0), ak = at_.stride(1);
  const int64_t adds = dd ? add.stride(2) : 0;
  const int64_t tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, B * tiles, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t bi = i / tiles, t0 = i % tiles, t1 = std::min(tiles, t0 + (i1 - i));
      const int64_t n0 = t0 * kTile, n1 = std::min(N, t1 * kTile);
      const int64_t whole = n0 + (n1 - n0) / kTile * kTile;
      const float* a = atd + bi * atb;
      const float* b = btd + bi * C * kmax;
      const float* d = dd ? dd + bi * db : nullptr;
      float* o = od + bi * C * N;
      VTSEG_DISPATCH(pixel_product_cm, kmax, a, ak, b, d, adds, o, N, n0, whole, K, C)
      for (int64_t c = 0; c < C; ++c) {  // the last pixels, short of a tile
        for (int64_t n = whole; n < n1; ++n) {
          float acc = d ? d[c * adds + n] : 0.f;
          for (int64_t k = 0; k < K; ++k) acc += b[c * kmax + k] * a[k * ak + n];
          o[c * N + n] = acc;
        }
      }
      i += t1 - t0;
    }
  });
  return out;
}

}  // namespace

// Whether at::parallel_for runs on PyTorch's threads in this build. With PyTorch's OpenMP
// backend it is inlined here and needs -fopenmp, which setup.py leaves out when the
// compiler has no OpenMP (Apple's clang); with PyTorch's native backend it needs nothing.
bool threaded() {
#if defined(_OPENMP) || AT_PARALLEL_NATIVE
  return true;
#else
  return false;
#endif
}

}  // namespace vtseg

// flexible_layout: torch.compile hands the ops their inputs in whatever layout it stores
// them in (an NCHW model's convolution outputs may be channels_last), with no copy into
// the layout they were traced with; the shape functions (token_pixel_kernels.py) give the
// projector's output the layout of its pixels, as the op does.
TORCH_LIBRARY(vtseg, m) {
  m.def("tokens_over_pixels(Tensor q, Tensor x, float scale) -> Tensor",
        {at::Tag::flexible_layout, at::Tag::pt2_compliant_tag});
  m.def("pixels_over_tokens(Tensor x, Tensor k, Tensor v, Tensor? residual, float scale) "
        "-> Tensor",
        {at::Tag::flexible_layout, at::Tag::pt2_compliant_tag});
  m.def("pixel_product(Tensor a, Tensor b, Tensor? add, bool channels_major) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(vtseg, CPU, m) {
  m.impl("tokens_over_pixels", &vtseg::tokens_over_pixels);
  m.impl("pixels_over_tokens", &vtseg::pixels_over_tokens);
  m.impl("pixel_product", &vtseg::pixel_product);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vtseg's fused CPU kernels, registered as torch.ops.vtseg";
  m.def("isa", &vtseg::isa_name,
        "The instruction set the kernels run with: avx512, avx2 or base");
  m.def("threaded", &vtseg::threaded,
        "Whether the kernels run on PyTorch's threads (false: built without OpenMP)");
}
