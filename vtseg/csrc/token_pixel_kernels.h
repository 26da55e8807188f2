// The body of the fused token-pixel kernels, included once per instruction set by
// token_pixel_attention.cpp (inside a namespace and a `#pragma GCC target` region), so
// that every helper below is compiled, and inlined, for that instruction set.
//
// Pixels are rows: x[n * C + c] (a channels_last map seen as (N, C)). Vectors are GCC
// vector extensions of 16 floats; the compiler lowers them to one AVX-512 register, two
// AVX2 registers or four SSE/NEON registers.

typedef float v16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));

static inline v16 load(const float* p) {
  v16 r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}

static inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

static inline v16 splat(float a) { return v16{} + a; }

// exp(x) to about 2 ulp (Cephes' expf polynomial), 0 below the smallest normal float.
static inline v16 vexp(v16 x) {
  const v16 hi = splat(88.3762626647949f), lo = splat(kLogMinNormal);
  const i16 underflow = x < lo;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const v16 magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const v16 n = (x * splat(1.44269504088896341f) + magic) - magic;
  const v16 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  v16 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.f);
  const i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const v16 y = p * two_n;
  return underflow ? splat(0.f) : y;
}

#if defined(__clang__) || __GNUC__ >= 12
#define VTSEG_SHUFFLE 1
static inline v16 fold(v16 a, v16 b) {  // lanes 0-7: a's halves added, 8-15: b's
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30,
                                 31);
}
static inline v16 fold4(v16 a, v16 b) {  // 8-lane groups of a and b to 4-lane groups
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                 31);
}
static inline v16 fold2(v16 a, v16 b) {  // 4-lane groups of a and b to 2-lane groups
  return __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
         __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                 31);
}
static inline v16 fold1(v16 a) {  // 2-lane groups to lanes 0-7 (8-15 repeat them)
  return __builtin_shufflevector(a, a, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(a, a, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
}
// Halves, quarters, ... of v combined by op, down to lane 0.
template <typename Op>
static inline float reduce(v16 v, Op op) {
  v = op(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return v[0];
}
static inline float hsum(v16 v) {
  return reduce(v, [](v16 a, v16 b) { return a + b; });
}
static inline float hmax(v16 v) {
  return reduce(v, [](v16 a, v16 b) { return a > b ? a : b; });
}
// Lane l (l < 8) of the result: the sum of the lanes of acc[l].
static inline v16 hsum8(const v16* acc) {
  return fold1(fold2(fold4(fold(acc[0], acc[1]), fold(acc[2], acc[3])),
                     fold4(fold(acc[4], acc[5]), fold(acc[6], acc[7]))));
}
#else
static inline float hsum(v16 v) {
  float lo = 0.f, hi = 0.f;
  for (int i = 0; i < 8; ++i) {
    lo += v[i];
    hi += v[i + 8];
  }
  return lo + hi;
}
static inline float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
#endif

// 0 in lanes l < L, -inf in the others: added to logits, it masks the padding tokens.
static inline v16 token_pad(int64_t L) {
  v16 pad;
  for (int l = 0; l < 16; ++l) pad[l] = l < L ? 0.f : -INFINITY;
  return pad;
}

// Lane l of the result: scale * <x, k[l]> + pad[l] (pad: token_pad(L); k rows are C
// floats, C % 16 == 0).
template <int LMAX>
static inline v16 logits(const float* x, const float* k, int64_t C, v16 pad, float scale) {
  v16 acc[LMAX];
  for (int l = 0; l < LMAX; ++l) acc[l] = v16{};
  for (int64_t c = 0; c < C; c += 16) {
    const v16 xv = load(x + c);
    for (int l = 0; l < LMAX; ++l) acc[l] += xv * load(k + l * C + c);
  }
  v16 z;
#ifdef VTSEG_SHUFFLE
  z = hsum8(acc);
  if (LMAX > 8) {
    const v16 hi = hsum8(acc + 8);
    z = __builtin_shufflevector(z, hi, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  }
#else
  for (int l = 0; l < 16; ++l) z[l] = l < LMAX ? hsum(acc[l]) : 0.f;
#endif
  return z * scale + pad;
}

// Pixels over tokens, pixels n0..n1: out[n] = res[n] + softmax_l(scale x[n] k^T) v.
// k: LMAX rows of C floats, v: LMAX rows of Cv floats (rows >= L are zero).
template <int LMAX>
static void pixels_over_tokens(const float* x, const float* k, const float* v,
                               const float* res, float* out, int64_t n0, int64_t n1,
                               int64_t C, int64_t Cv, int64_t L, float scale) {
  static_assert(LMAX <= 16, "one vector of logits per pixel");
  const v16 pad = token_pad(L);
  for (int64_t n = n0; n < n1; ++n) {
    const v16 z = logits<LMAX>(x + n * C, k, C, pad, scale);
    const v16 e = vexp(z - hmax(z));  // the largest is exp(0) = 1: the sum is >= 1
    v16 a = e * (1.f / hsum(e));
    a = a < splat(kMinNormal) ? splat(0.f) : a;  // no subnormal weights
    float* on = out + n * Cv;
    const float* rn = res ? res + n * Cv : nullptr;
    for (int64_t c = 0; c < Cv; c += 16) {
      v16 o = rn ? load(rn + c) : v16{};
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
  const v16 pad = token_pad(L);
  float z[kRows][16];
  for (int l = 0; l < LMAX; ++l) {
    m[l] = -INFINITY;
    s[l] = 0.f;
  }
  std::fill(acc, acc + LMAX * C, 0.f);
  for (int64_t r0 = n0; r0 < n1; r0 += kRows) {
    const int64_t rows = std::min(kRows, n1 - r0);
    v16 rm = splat(-INFINITY);
    for (int64_t i = 0; i < rows; ++i) {
      const v16 zi = logits<LMAX>(x + (r0 + i) * C, q, C, pad, scale);
      store(z[i], zi);
      rm = zi > rm ? zi : rm;
    }
    float rms[16];
    store(rms, rm);
    raise_maxima(rms, m, s, acc, C, L);
    v16 mv = splat(0.f);
    for (int l = 0; l < LMAX; ++l) mv[l] = l < L ? m[l] : 0.f;
    v16 sv = v16{};
    for (int64_t i = 0; i < rows; ++i) {
      const v16 e = vexp(load(z[i]) - mv);
      store(z[i], e);
      sv += e;
    }
    for (int l = 0; l < LMAX; ++l) s[l] += sv[l];
    for (int64_t c = 0; c < C; c += 16) {
      v16 a[LMAX];
      for (int l = 0; l < LMAX; ++l) a[l] = load(acc + l * C + c);
      for (int64_t i = 0; i < rows; ++i) {
        const v16 xv = load(x + (r0 + i) * C + c);
        for (int l = 0; l < LMAX; ++l) a[l] += z[i][l] * xv;
      }
      for (int l = 0; l < LMAX; ++l) store(acc + l * C + c, a[l]);
    }
  }
}

// ---- Pixels stored channel by channel (an NCHW map seen as (C, N), row stride xs) ----
// Vectors run along the pixels: kTile pixels at a time, one vector of logits per token.

// z[l] (lanes: pixels p..p+15) = scale * <x[:, p + lane], k[l]>, -inf for l >= L.
template <int LMAX>
static inline void logits_cm(const float* x, int64_t xs, const float* k, int64_t C, int64_t L,
                             float scale, v16* z) {
  for (int l = 0; l < LMAX; ++l) z[l] = v16{};
  for (int64_t c = 0; c < C; ++c) {
    const v16 xv = load(x + c * xs);
    for (int l = 0; l < LMAX; ++l) z[l] += k[l * C + c] * xv;
  }
  for (int l = 0; l < LMAX; ++l) z[l] = l < L ? z[l] * scale : splat(-INFINITY);
}

// pixels_over_tokens for channel-major pixels, whole tiles of kTile pixels from n0 to n1.
template <int LMAX>
static void pixels_over_tokens_cm(const float* x, int64_t xs, const float* k, const float* v,
                                  const float* res, int64_t rs, float* out, int64_t os,
                                  int64_t n0, int64_t n1, int64_t C, int64_t Cv, int64_t L,
                                  float scale) {
  v16 z[LMAX];
  for (int64_t p = n0; p + kTile <= n1; p += kTile) {
    logits_cm<LMAX>(x + p, xs, k, C, L, scale, z);
    v16 m = z[0];
    for (int l = 1; l < LMAX; ++l) m = z[l] > m ? z[l] : m;
    v16 sum = v16{};
    for (int l = 0; l < LMAX; ++l) {
      z[l] = vexp(z[l] - m);
      sum += z[l];
    }
    const v16 inv = 1.f / sum;
    for (int l = 0; l < LMAX; ++l) {
      z[l] *= inv;
      z[l] = z[l] < splat(kMinNormal) ? splat(0.f) : z[l];  // no subnormal weights
    }
    for (int64_t c = 0; c < Cv; ++c) {
      v16 o = res ? load(res + c * rs + p) : v16{};
      for (int l = 0; l < LMAX; ++l) o += v[l * Cv + c] * z[l];
      store(out + c * os + p, o);
    }
  }
}

// tokens_over_pixels_part for channel-major pixels n0..n1 (n1 - n0 a multiple of kTile).
// acc is LMAX x C as in the row version; work holds kRows pixels' weights (LMAX vectors
// per tile).
template <int LMAX>
static void tokens_over_pixels_part_cm(const float* x, int64_t xs, const float* q, float* m,
                                       float* s, float* acc, int64_t n0, int64_t n1,
                                       int64_t C, int64_t L, float scale) {
  constexpr int64_t kTiles = 4;  // tiles whose logits are formed before they are pooled
  v16 z[kTiles][LMAX];
  for (int l = 0; l < LMAX; ++l) {
    m[l] = -INFINITY;
    s[l] = 0.f;
  }
  std::fill(acc, acc + LMAX * C, 0.f);
  for (int64_t r0 = n0; r0 < n1; r0 += kTiles * kTile) {
    const int64_t tiles = std::min(kTiles, (n1 - r0) / kTile);
    float rm[LMAX];
    for (int l = 0; l < LMAX; ++l) rm[l] = m[l];
    for (int64_t t = 0; t < tiles; ++t) {
      logits_cm<LMAX>(x + r0 + t * kTile, xs, q, C, L, scale, z[t]);
      for (int l = 0; l < L; ++l) rm[l] = std::max(rm[l], hmax(z[t][l]));
    }
    raise_maxima(rm, m, s, acc, C, L);
    for (int l = 0; l < LMAX; ++l) {
      v16 sv = v16{};
      const v16 ml = splat(l < L ? m[l] : 0.f);
      for (int64_t t = 0; t < tiles; ++t) {
        z[t][l] = vexp(z[t][l] - ml);
        sv += z[t][l];
      }
      s[l] += hsum(sv);
    }
    // acc[l][c] += sum over the tiles' pixels of z * x[c], two channels at a time
    for (int64_t c = 0; c < C; ++c) {
      v16 a[LMAX];
      for (int l = 0; l < LMAX; ++l) a[l] = v16{};
      for (int64_t t = 0; t < tiles; ++t) {
        const v16 xv = load(x + c * xs + r0 + t * kTile);
        for (int l = 0; l < LMAX; ++l) a[l] += z[t][l] * xv;
      }
#ifdef VTSEG_SHUFFLE
      v16 sums = hsum8(a);
      if (LMAX > 8) {
        const v16 hi = hsum8(a + 8);
        sums = __builtin_shufflevector(sums, hi, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21,
                                       22, 23);
      }
      for (int l = 0; l < LMAX; ++l) acc[l * C + c] += sums[l];
#else
      for (int l = 0; l < LMAX; ++l) acc[l * C + c] += hsum(a[l]);
#endif
    }
  }
}
