// The body of the fused token-pixel kernels, included once per instruction set by
// token_pixel_attention.cpp through per_isa.h (inside a namespace and a `#pragma GCC
// target` region, after simd.h), so that every helper below is compiled, and inlined, for
// that instruction set.
//
// Two layouts of a map's pixels:
// * rows: x[n * C + c], a channels_last map seen as (N, C). Vectors run along the
//   channels; a pixel's logits (one lane per token) are reduced from them.
// * channel-major: x[c * xs + n], an NCHW map seen as (C, N). Vectors run along the
//   pixels, one vector of logits per token.

// 0 in the lanes of tokens l < L, -inf in the others: added to logits, it masks the
// padding tokens.
template <int LMAX>
static inline void token_pad(int64_t L, vf* pad) {
  constexpr int TV = token_vectors<LMAX>();
  float p[TV * kLanes];
  for (int l = 0; l < TV * kLanes; ++l) p[l] = l < L ? 0.f : -INFINITY;
  for (int t = 0; t < TV; ++t) pad[t] = load(p + t * kLanes);
}

// ---- Pixels stored as rows ----

// Lane l of z: scale * <x, k[l]> + pad[l] (k rows are C floats, C % 16 == 0).
template <int LMAX>
static inline void logits(const float* x, const float* k, int64_t C, const vf* pad, float scale,
                          vf* z) {
  vf acc[LMAX];
  for (int l = 0; l < LMAX; ++l) acc[l] = vf{};
  for (int64_t c = 0; c < C; c += kLanes) {
    const vf xv = load(x + c);
    for (int l = 0; l < LMAX; ++l) acc[l] += xv * load(k + l * C + c);
  }
  lane_sums<LMAX>(acc, z);
  for (int t = 0; t < token_vectors<LMAX>(); ++t) z[t] = z[t] * scale + pad[t];
}

// softmax over the token lanes of z, in place (padding lanes are -inf and get 0), with no
// subnormal weights.
template <int LMAX>
static inline void softmax_tokens(vf* z) {
  constexpr int TV = token_vectors<LMAX>();
  vf mv = z[0];
  for (int t = 1; t < TV; ++t) mv = z[t] > mv ? z[t] : mv;
  const float m = hmax(mv);
  vf sv = vf{};
  for (int t = 0; t < TV; ++t) {
    z[t] = vexp(z[t] - m);  // the largest is exp(0) = 1: the sum is >= 1
    sv += z[t];
  }
  const float inv = 1.f / hsum(sv);
  for (int t = 0; t < TV; ++t) {
    z[t] *= inv;
    z[t] = z[t] < splat(kMinNormal) ? splat(0.f) : z[t];
  }
}

// Pixels over tokens, pixels n0..n1: out[n] = res[n] + softmax_l(scale x[n] k^T) v.
// k: LMAX rows of C floats, v: LMAX rows of Cv floats (rows >= L are zero).
template <int LMAX>
static void pixels_over_tokens(const float* x, const float* k, const float* v,
                               const float* res, float* out, int64_t n0, int64_t n1,
                               int64_t C, int64_t Cv, int64_t L, float scale) {
  static_assert(LMAX <= 16, "at most 16 tokens");
  constexpr int TV = token_vectors<LMAX>();
  vf pad[TV], z[TV];
  token_pad<LMAX>(L, pad);
  for (int64_t n = n0; n < n1; ++n) {
    logits<LMAX>(x + n * C, k, C, pad, scale, z);
    softmax_tokens<LMAX>(z);
    float a[TV * kLanes];
    for (int t = 0; t < TV; ++t) store(a + t * kLanes, z[t]);
    float* on = out + n * Cv;
    const float* rn = res ? res + n * Cv : nullptr;
    for (int64_t c = 0; c < Cv; c += kLanes) {
      vf o = rn ? load(rn + c) : vf{};
      for (int l = 0; l < LMAX; ++l) o += a[l] * load(v + l * Cv + c);
      store(on + c, o);
    }
  }
}

// Online softmax: where a token's new maximum rm exceeds its running maximum m, rescale
// what was summed so far (s and the token's row of acc) to the new maximum.
static inline void raise_maxima(const float* rm, float* m, float* s, float* acc, int64_t C,
                                int64_t L) {
  for (int64_t l = 0; l < L; ++l) {
    if (rm[l] > m[l]) {
      const float r = m[l] == -INFINITY ? 0.f : std::exp(m[l] - rm[l]);
      s[l] *= r;
      for (int64_t c = 0; c < C; ++c) acc[l * C + c] *= r;
      m[l] = rm[l];
    }
  }
}

// Tokens over pixels, the partial result of pixels n0..n1 (online softmax): running
// maximum m[l], sum s[l] of exp(z - m) and acc[l] = sum_n exp(z[n, l] - m[l]) x[n].
template <int LMAX>
static void tokens_over_pixels_part(const float* x, const float* q, float* m, float* s,
                                    float* acc, int64_t n0, int64_t n1, int64_t C, int64_t L,
                                    float scale) {
  constexpr int64_t kRows = 64;  // pixels whose logits are formed before they are pooled
  constexpr int TV = token_vectors<LMAX>();
  vf pad[TV];
  token_pad<LMAX>(L, pad);
  float z[kRows][TV * kLanes];
  for (int l = 0; l < LMAX; ++l) {
    m[l] = -INFINITY;
    s[l] = 0.f;
  }
  std::fill(acc, acc + LMAX * C, 0.f);
  for (int64_t r0 = n0; r0 < n1; r0 += kRows) {
    const int64_t rows = std::min(kRows, n1 - r0);
    vf rm[TV], zi[TV];
    for (int t = 0; t < TV; ++t) rm[t] = splat(-INFINITY);
    for (int64_t i = 0; i < rows; ++i) {
      logits<LMAX>(x + (r0 + i) * C, q, C, pad, scale, zi);
      for (int t = 0; t < TV; ++t) {
        store(z[i] + t * kLanes, zi[t]);
        rm[t] = zi[t] > rm[t] ? zi[t] : rm[t];
      }
    }
    float rms[TV * kLanes];
    for (int t = 0; t < TV; ++t) store(rms + t * kLanes, rm[t]);
    raise_maxima(rms, m, s, acc, C, L);
    float ms[TV * kLanes] = {};
    for (int l = 0; l < L; ++l) ms[l] = m[l];
    vf mv[TV], sv[TV];
    for (int t = 0; t < TV; ++t) {
      mv[t] = load(ms + t * kLanes);
      sv[t] = vf{};
    }
    for (int64_t i = 0; i < rows; ++i) {
      for (int t = 0; t < TV; ++t) {
        const vf e = vexp(load(z[i] + t * kLanes) - mv[t]);
        store(z[i] + t * kLanes, e);
        sv[t] += e;
      }
    }
    for (int l = 0; l < LMAX; ++l) s[l] += sv[l / kLanes][l % kLanes];
    for (int64_t c = 0; c < C; c += kLanes) {
      vf a[LMAX];
      for (int l = 0; l < LMAX; ++l) a[l] = load(acc + l * C + c);
      for (int64_t i = 0; i < rows; ++i) {
        const vf xv = load(x + (r0 + i) * C + c);
        for (int l = 0; l < LMAX; ++l) a[l] += z[i][l] * xv;
      }
      for (int l = 0; l < LMAX; ++l) store(acc + l * C + c, a[l]);
    }
  }
}

// ---- Pixels stored channel by channel (an NCHW map seen as (C, N), row stride xs) ----
// Vectors run along the pixels: kLanes pixels at a time, one vector of logits per token.
// The caller hands over whole tiles of kTile (16) pixels, a multiple of kLanes.

// z[l] (lanes: pixels p..p+kLanes-1) = scale * <x[:, p + lane], k[l]>, -inf for l >= L.
template <int LMAX>
static inline void logits_cm(const float* x, int64_t xs, const float* k, int64_t C, int64_t L,
                             float scale, vf* z) {
  for (int l = 0; l < LMAX; ++l) z[l] = vf{};
  for (int64_t c = 0; c < C; ++c) {
    const vf xv = load(x + c * xs);
    for (int l = 0; l < LMAX; ++l) z[l] += k[l * C + c] * xv;
  }
  for (int l = 0; l < LMAX; ++l) z[l] = l < L ? z[l] * scale : splat(-INFINITY);
}

// pixels_over_tokens for channel-major pixels n0..n1 (n1 - n0 a multiple of kTile).
template <int LMAX>
static void pixels_over_tokens_cm(const float* x, int64_t xs, const float* k, const float* v,
                                  const float* res, int64_t rs, float* out, int64_t os,
                                  int64_t n0, int64_t n1, int64_t C, int64_t Cv, int64_t L,
                                  float scale) {
  static_assert(kTile % kLanes == 0, "tiles of whole vectors");
  vf z[LMAX];
  for (int64_t p = n0; p + kLanes <= n1; p += kLanes) {
    logits_cm<LMAX>(x + p, xs, k, C, L, scale, z);
    vf m = z[0];
    for (int l = 1; l < LMAX; ++l) m = z[l] > m ? z[l] : m;
    vf sum = vf{};
    for (int l = 0; l < LMAX; ++l) {
      z[l] = vexp(z[l] - m);
      sum += z[l];
    }
    const vf inv = 1.f / sum;
    for (int l = 0; l < LMAX; ++l) {
      z[l] *= inv;
      z[l] = z[l] < splat(kMinNormal) ? splat(0.f) : z[l];  // no subnormal weights
    }
    for (int64_t c = 0; c < Cv; ++c) {
      vf o = res ? load(res + c * rs + p) : vf{};
      for (int l = 0; l < LMAX; ++l) o += v[l * Cv + c] * z[l];
      store(out + c * os + p, o);
    }
  }
}

// tokens_over_pixels_part for channel-major pixels n0..n1 (n1 - n0 a multiple of kTile).
// acc is LMAX x C as in the row version.
template <int LMAX>
static void tokens_over_pixels_part_cm(const float* x, int64_t xs, const float* q, float* m,
                                       float* s, float* acc, int64_t n0, int64_t n1,
                                       int64_t C, int64_t L, float scale) {
  constexpr int64_t kBlock = 64;  // pixels whose logits are formed before they are pooled
  constexpr int kVecs = kBlock / kLanes;
  vf z[kVecs][LMAX];
  for (int l = 0; l < LMAX; ++l) {
    m[l] = -INFINITY;
    s[l] = 0.f;
  }
  std::fill(acc, acc + LMAX * C, 0.f);
  for (int64_t r0 = n0; r0 < n1; r0 += kBlock) {
    const int64_t vecs = std::min<int64_t>(kVecs, (n1 - r0) / kLanes);
    float rm[LMAX];
    for (int l = 0; l < LMAX; ++l) rm[l] = m[l];
    for (int64_t t = 0; t < vecs; ++t) {
      logits_cm<LMAX>(x + r0 + t * kLanes, xs, q, C, L, scale, z[t]);
      for (int l = 0; l < L; ++l) rm[l] = std::max(rm[l], hmax(z[t][l]));
    }
    raise_maxima(rm, m, s, acc, C, L);
    for (int l = 0; l < LMAX; ++l) {
      vf sv = vf{};
      const vf ml = splat(l < L ? m[l] : 0.f);
      for (int64_t t = 0; t < vecs; ++t) {
        z[t][l] = vexp(z[t][l] - ml);
        sv += z[t][l];
      }
      s[l] += hsum(sv);
    }
    // acc[l][c] += sum over the block's pixels of z * x[c]
    for (int64_t c = 0; c < C; ++c) {
      vf a[LMAX];
      for (int l = 0; l < LMAX; ++l) a[l] = vf{};
      for (int64_t t = 0; t < vecs; ++t) {
        const vf xv = load(x + c * xs + r0 + t * kLanes);
        for (int l = 0; l < LMAX; ++l) a[l] += z[t][l] * xv;
      }
      constexpr int TV = token_vectors<LMAX>();
      vf sums[TV];
      lane_sums<LMAX>(a, sums);
      for (int l = 0; l < LMAX; ++l) acc[l * C + c] += sums[l / kLanes][l % kLanes];
    }
  }
}


// ---- A product with a few inner terms, written over a map's pixels (the GEMMs of the
// VT blocks' training, whose inner dimension is the L tokens or 2 L) ----

// Rows: out[n] = add[n] + sum_k a[n, k] b[k] for pixels n0..n1, a[n, k] at a[n * as1 + k *
// as2], b KMAX rows of C floats (rows >= K are zero), add and out rows of C floats.
template <int KMAX>
static void pixel_product_rows(const float* a, int64_t as1, int64_t as2, const float* b,
                               const float* add, float* out, int64_t n0, int64_t n1,
                               int64_t K, int64_t C) {
  for (int64_t n = n0; n < n1; ++n) {
    float an[KMAX] = {};
    for (int64_t k = 0; k < K; ++k) an[k] = a[n * as1 + k * as2];
    const float* rn = add ? add + n * C : nullptr;
    float* on = out + n * C;
    for (int64_t c = 0; c < C; c += kLanes) {
      vf o = rn ? load(rn + c) : vf{};
      for (int k = 0; k < KMAX; ++k) o += an[k] * load(b + k * C + c);
      store(on + c, o);
    }
  }
}

// Channel rows: out[c, n] = add[c, n] + sum_k bt[c, k] at[k, n] for pixels n0..n1 (whole
// vectors), at K rows (stride ak) along the pixels, bt C rows of KMAX floats (k >= K zero),
// add and out channel rows (strides adds, os).
template <int KMAX>
static void pixel_product_cm(const float* at, int64_t ak, const float* bt, const float* add,
                             int64_t adds, float* out, int64_t os, int64_t n0, int64_t n1,
                             int64_t K, int64_t C) {
  for (int64_t p = n0; p + kLanes <= n1; p += kLanes) {
    vf av[KMAX];
    for (int k = 0; k < KMAX; ++k) av[k] = k < K ? load(at + k * ak + p) : vf{};
    for (int64_t c = 0; c < C; ++c) {
      vf o = add ? load(add + c * adds + p) : vf{};
      const float* bc = bt + c * KMAX;
      for (int k = 0; k < KMAX; ++k) o += bc[k] * av[k];
      store(out + c * os + p, o);
    }
  }
}
