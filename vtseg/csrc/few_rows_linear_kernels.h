// The body of the few-rows linear kernel, included once per instruction set by
// few_rows_linear.cpp through per_isa.h (after simd.h).
//
// y = x w^T + b where x has a few rows (a layer applied to a few tokens): the weight
// w (N, K) is read once, row after row in the order it is stored, and each of its rows is
// multiplied with every row of x while it is in registers. x's rows come in passes of
// kLinearRows, zero-padded; every y[m, n] is one dot product summed in a fixed order.

// Weight rows multiplied at once: two where the vector registers hold 2 x kLinearRows
// accumulators besides their operands (32 of AVX-512's registers), else one.
constexpr int kWeightRows = kLanes == 16 ? 2 : 1;

// y[m, n] = b[n] + <x[m], w[n]> for the rows m0 <= m < min(M, m0 + kLinearRows) and the
// weight rows n0 <= n < n1; x holds whole passes of kLinearRows rows of K floats
// (K % kLanes == 0), y is (M, N).
static void few_rows_linear_block(const float* x, const float* w, const float* b, float* y,
                                  int64_t m0, int64_t M, int64_t n0, int64_t n1, int64_t K,
                                  int64_t N) {
  constexpr int R = kLinearRows;
  constexpr int TV = token_vectors<R>();
  const float* xm = x + m0 * K;
  const int64_t rows = std::min<int64_t>(R, M - m0);
  for (int64_t n = n0; n < n1; n += kWeightRows) {
    const int nw = static_cast<int>(std::min<int64_t>(kWeightRows, n1 - n));
    vf acc[kWeightRows][R];
    for (int j = 0; j < kWeightRows; ++j)
      for (int r = 0; r < R; ++r) acc[j][r] = vf{};
    const float* wn = w + n * K;
    if (nw == kWeightRows) {
      for (int64_t k = 0; k < K; k += kLanes) {
        vf u[kWeightRows];
        for (int j = 0; j < kWeightRows; ++j) u[j] = load(wn + j * K + k);
        for (int r = 0; r < R; ++r) {
          const vf xv = load(xm + r * K + k);
          for (int j = 0; j < kWeightRows; ++j) acc[j][r] += u[j] * xv;
        }
      }
    } else {  // the last weight row, alone
      for (int64_t k = 0; k < K; k += kLanes) {
        const vf u = load(wn + k);
        for (int r = 0; r < R; ++r) acc[0][r] += u * load(xm + r * K + k);
      }
    }
    for (int j = 0; j < nw; ++j) {
      vf z[TV];
      lane_sums<R>(acc[j], z);
      float s[TV * kLanes];
      for (int t = 0; t < TV; ++t) store(s + t * kLanes, z[t]);
      const float bias = b ? b[n + j] : 0.f;
      for (int64_t r = 0; r < rows; ++r) y[(m0 + r) * N + n + j] = s[r] + bias;
    }
  }
}
