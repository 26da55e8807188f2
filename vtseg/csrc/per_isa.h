// Compiles the kernel body VTSEG_KERNELS names once per instruction set, after simd.h: in
// namespaces avx512 and avx2 (x86-64 with GCC, each in its `#pragma GCC target` region)
// and base (SSE2, or NEON elsewhere), each with vectors of its own width. Include it inside
// a namespace, with VTSEG_KERNELS defined as the body's header name.
#ifdef VTSEG_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi,bmi2,f16c")
#define VTSEG_LANES 16
namespace avx512 {
#include "simd.h"
#include VTSEG_KERNELS
}  // namespace avx512
#undef VTSEG_LANES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define VTSEG_LANES 8
namespace avx2 {
#include "simd.h"
#include VTSEG_KERNELS
}  // namespace avx2
#undef VTSEG_LANES
#pragma GCC pop_options
#endif
#define VTSEG_LANES 4  // SSE2, NEON
namespace base {
#include "simd.h"
#include VTSEG_KERNELS
}  // namespace base
#undef VTSEG_LANES
