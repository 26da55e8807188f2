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

static inline float hsum(v16 v) {
  float lo = 0.f, hi = 0.f;
  for (int i = 0; i < 8; ++i) {
    lo += v[i];
    hi += v[i + 8];
  }
  return lo + hi;
}

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

// z[l] = scale * <x, k[l]> for l < L (k rows are C floats, C % 16 == 0), -inf for l >= L.
template <int LMAX>
static inline void logits(const float* x, const float* k, int64_t C, int64_t L, float scale,
                          float* z) {
  v16 acc[LMAX];
  for (int l = 0; l < LMAX; ++l) acc[l] = v16{};
  for (int64_t c = 0; c < C; c += 16) {
    const v16 xv = load(x + c);
    for (int l = 0; l < LMAX; ++l) acc[l] += xv * load(k + l * C + c);
  }
  for (int l = 0; l < LMAX; ++l) z[l] = l < L ? scale * hsum(acc[l]) : -INFINITY;
}

// Pixels over tokens, pixels n0..n1: out[n] = res[n] + softmax_l(scale x[n] k^T) v.
// k: LMAX rows of C floats, v: LMAX rows of Cv floats (rows >= L are zero).
template <int LMAX>
static void pixels_over_tokens(const float* x, const float* k, const float* v,
                               const float* res, float* out, int64_t n0, int64_t n1,
                               int64_t C, int64_t Cv, int64_t L, float scale) {
  static_assert(LMAX <= 16, "one vector of logits per pixel");
  float z[16];
  for (int64_t n = n0; n < n1; ++n) {
    logits<LMAX>(x + n * C, k, C, L, scale, z);
    float m = z[0];
    for (int l = 1; l < LMAX; ++l) m = z[l] > m ? z[l] : m;
    v16 zv = splat(-INFINITY);
    for (int l = 0; l < LMAX; ++l) zv[l] = z[l];
    const v16 e = vexp(zv - m);  // the largest is exp(0) = 1: the sum is >= 1
    float sum = 0.f;
    for (int l = 0; l < LMAX; ++l) sum += e[l];
    v16 a = e * (1.f / sum);
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

// Tokens over pixels, the partial result of pixels n0..n1 (online softmax): running
// maximum m[l], sum s[l] of exp(z - m) and acc[l] = sum_n exp(z[n, l] - m[l]) x[n].
template <int LMAX>
static void tokens_over_pixels_part(const float* x, const float* q, float* m, float* s,
                                    float* acc, int64_t n0, int64_t n1, int64_t C, int64_t L,
                                    float scale) {
  constexpr int64_t kRows = 64;  // pixels whose logits are formed before they are pooled
  float z[kRows][16];
  for (int l = 0; l < LMAX; ++l) {
    m[l] = -INFINITY;
    s[l] = 0.f;
  }
  std::fill(acc, acc + LMAX * C, 0.f);
  for (int64_t r0 = n0; r0 < n1; r0 += kRows) {
    const int64_t rows = std::min(kRows, n1 - r0);
    float rm[16];
    for (int l = 0; l < LMAX; ++l) rm[l] = m[l];
    for (int64_t i = 0; i < rows; ++i) {
      logits<LMAX>(x + (r0 + i) * C, q, C, L, scale, z[i]);
      for (int l = 0; l < LMAX; ++l) rm[l] = z[i][l] > rm[l] ? z[i][l] : rm[l];
    }
    for (int l = 0; l < L; ++l) {
      if (rm[l] > m[l]) {  // a new maximum: rescale what was summed so far
        const float r = m[l] == -INFINITY ? 0.f : std::exp(m[l] - rm[l]);
        s[l] *= r;
        for (int64_t c = 0; c < C; ++c) acc[l * C + c] *= r;
        m[l] = rm[l];
      }
    }
    v16 mv = splat(0.f);
    for (int l = 0; l < LMAX; ++l) mv[l] = l < L ? m[l] : 0.f;
    for (int64_t i = 0; i < rows; ++i) {
      v16 zv = splat(-INFINITY);
      for (int l = 0; l < LMAX; ++l) zv[l] = z[i][l];
      const v16 e = vexp(zv - mv);
      for (int l = 0; l < LMAX; ++l) {
        z[i][l] = e[l];
        s[l] += e[l];
      }
    }
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
