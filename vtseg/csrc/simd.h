// Vectors of one instruction set and their helpers, included once per instruction set
// (see per_isa.h) before the kernel bodies that use them.
//
// VTSEG_LANES, set by per_isa.h, is the width of that instruction set's vectors in floats:
// 16 (AVX-512), 8 (AVX2) or 4 (SSE, NEON). Vectors are GCC vector extensions of that
// width, so each is one register.

constexpr int kLanes = VTSEG_LANES;
constexpr float kMinNormal = FLT_MIN;
constexpr float kLogMinNormal = -87.3365447505531f;  // log(FLT_MIN)
typedef float vf __attribute__((vector_size(4 * VTSEG_LANES)));
typedef int vi __attribute__((vector_size(4 * VTSEG_LANES)));

// Vectors holding one lane per row (token), for up to LMAX of them.
template <int LMAX>
constexpr int token_vectors() {
  return (LMAX + kLanes - 1) / kLanes;
}

static inline vf load(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}

static inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

static inline vf splat(float a) { return vf{} + a; }

// exp(x) to about 2 ulp (Cephes' expf polynomial), 0 below the smallest normal float.
static inline vf vexp(vf x) {
  const vf hi = splat(88.3762626647949f), lo = splat(kLogMinNormal);
  const vi underflow = x < lo;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * splat(1.44269504088896341f) + magic) - magic;
  const vf r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.f);
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const vf y = p * two_n;
  return underflow ? splat(0.f) : y;
}

// Horizontal sum and maximum of a vector's lanes.
#if defined(__clang__) || __GNUC__ >= 12
#define VTSEG_SHUFFLE 1
// v combined by op with v's lanes swapped in blocks of half, a quarter, ... of the width.
template <typename Op>
static inline float reduce(vf v, Op op) {
#if VTSEG_LANES == 16
  v = op(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
#elif VTSEG_LANES == 8
  v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1));
  v = op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2));
#endif
  return v[0];
}
static inline float hsum(vf v) {
  return reduce(v, [](vf a, vf b) { return a + b; });
}
static inline float hmax(vf v) {
  return reduce(v, [](vf a, vf b) { return a > b ? a : b; });
}
#else
static inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
static inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
#endif

#if defined(VTSEG_SHUFFLE) && VTSEG_LANES == 16
#define VTSEG_SUMS8 1
static inline vf fold(vf a, vf b) {  // lanes 0-7: a's halves added, 8-15: b's
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30,
                                 31);
}
static inline vf fold4(vf a, vf b) {  // 8-lane groups of a and b to 4-lane groups
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                 31);
}
static inline vf fold2(vf a, vf b) {  // 4-lane groups of a and b to 2-lane groups
  return __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
         __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                 31);
}
static inline vf fold1(vf a) {  // 2-lane groups to lanes 0-7 (8-15 repeat them)
  return __builtin_shufflevector(a, a, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(a, a, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
}
// Lane l (l < 8) of the result: the sum of the lanes of acc[l].
static inline vf sums8(const vf* acc) {
  return fold1(fold2(fold4(fold(acc[0], acc[1]), fold(acc[2], acc[3])),
                     fold4(fold(acc[4], acc[5]), fold(acc[6], acc[7]))));
}
#endif

// z[t] lane j: the sum of the lanes of acc[t * kLanes + j], for LMAX accumulators (lanes
// past LMAX hold anything: the callers mask or skip them).
template <int LMAX>
static inline void lane_sums(const vf* acc, vf* z) {
#ifdef VTSEG_SUMS8
  z[0] = sums8(acc);
  if (LMAX > 8) {
    const vf hi = sums8(acc + 8);
    z[0] = __builtin_shufflevector(z[0], hi, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22,
                                   23);
  }
#else
  constexpr int TV = token_vectors<LMAX>();
  float s[TV * kLanes] = {};
  for (int l = 0; l < LMAX; ++l) s[l] = hsum(acc[l]);
  for (int t = 0; t < TV; ++t) z[t] = load(s + t * kLanes);
#endif
}

#undef VTSEG_SUMS8
#undef VTSEG_SHUFFLE
