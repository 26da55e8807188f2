// Compiles the kernel body VTSEG_KERNELS names once per instruction set, after simd.h: in
// namespaces avx512 and avx2 (x86-64, each in a region compiled for that instruction set:
// `#pragma GCC target` with GCC, `#pragma clang attribute` with clang) and base (SSE2, or
// NEON elsewhere), each with vectors of its own width. Include it inside a namespace, with
// VTSEG_KERNELS defined as the body's header name.
#ifdef VTSEG_X86_DISPATCH
#ifdef __clang__
#pragma clang attribute push(                                                            \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,f16c"))), \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,f16c")
#endif
#define VTSEG_LANES 16
namespace avx512 {
#include "simd.h"
#include VTSEG_KERNELS
}  // namespace avx512
#undef VTSEG_LANES
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#endif
#define VTSEG_LANES 8
namespace avx2 {
#include "simd.h"
#include VTSEG_KERNELS
}  // namespace avx2
#undef VTSEG_LANES
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
#define VTSEG_LANES 4  // SSE2, NEON
namespace base {
#include "simd.h"
#include VTSEG_KERNELS
}  // namespace base
#undef VTSEG_LANES
