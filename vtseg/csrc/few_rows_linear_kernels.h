// The body of the few-rows linear kernel, included once per instruction set by
// few_rows_linear.cpp through per_isa.h (after simd.h).
//
// y = x w^T + b where x has a few rows (a layer applied to a few tokens): the weight
// w (N, K) is read once, row after row in the order it is stored, and each of its rows is
// multiplied with every row of x while it is in registers. x's rows come in passes of
// kLinearRows, zero-padded; every y[m, n] is one dot product summed in a fixed order.

// Weight rows and input rows multiplied at once: their accumulators and operands fit the
// vector registers (4 x 4 + 5 of AVX-512's 32, 3 x 4 + 4 of AVX2's or SSE's 16), and the
// four input rows stay in the first-level cache while the weight rows stream past.
constexpr int kWeightRows = kLanes == 16 ? 4 : 3;
constexpr int kInputRows = 4;
static_assert(kLinearRows % kInputRows == 0, "whole groups of input rows per pass");

// y[m, n] = b[n] + <x[m], w[n]> for the rows m0 <= m < min(M, m0 + kLinearRows) and the
// weight rows n0 <= n < n1; x holds whole passes of kLinearRows rows of K floats
// (K % kLanes == 0), y is (M, N).
static void few_rows_linear_block(const float* x, const float* w, const float* b, float* y,
                                  int64_t m0, int64_t M, int64_t n0, int64_t n1, int64_t K,
                                  int64_t N) {
  constexpr int R = kInputRows, WR = kWeightRows;
  constexpr int TV = token_vectors<R>();
  for (int64_t n = n0; n < n1; n += WR) {
    const int nw = static_cast<int>(std::min<int64_t>(WR, n1 - n));
    const float* wn = w + n * K;
    for (int64_t r0 = m0; r0 < m0 + kLinearRows && r0 < M; r0 += R) {
      const float* xr = x + r0 * K;
      vf acc[WR][R];
      for (int j = 0; j < WR; ++j)
        for (int r = 0; r < R; ++r) acc[j][r] = vf{};
      if (nw == WR) {
        for (int64_t k = 0; k < K; k += kLanes) {
          vf u[WR];
          for (int j = 0; j < WR; ++j) u[j] = load(wn + j * K + k);
          for (int r = 0; r < R; ++r) {
            const vf xv = load(xr + r * K + k);
            for (int j = 0; j < WR; ++j) acc[j][r] += u[j] * xv;
          }
        }
      } else {  // the last nw < WR weight rows
        for (int64_t k = 0; k < K; k += kLanes) {
          for (int r = 0; r < R; ++r) {
            const vf xv = load(xr + r * K + k);
            for (int j = 0; j < nw; ++j) acc[j][r] += load(wn + j * K + k) * xv;
          }
        }
      }
      const int64_t rows = std::min<int64_t>(R, M - r0);
      for (int j = 0; j < nw; ++j) {
        vf z[TV];
        lane_sums<R>(acc[j], z);
        float s[TV * kLanes];
        for (int t = 0; t < TV; ++t) store(s + t * kLanes, z[t]);
        const float bias = b ? b[n + j] : 0.f;
        for (int64_t r = 0; r < rows; ++r) y[(r0 + r) * N + n + j] = s[r] + bias;
      }
    }
  }
}
