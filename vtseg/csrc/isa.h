// Which instruction set vtseg's CPU kernels run with, chosen at run time as PyTorch's own
// CPU kernels are: the widest that both the CPU and PyTorch use (ATEN_CPU_CAPABILITY=avx2,
// or default, caps them as it caps PyTorch's). Each kernel file compiles its body once per
// instruction set (per_isa.h) and calls it through VTSEG_ISA.
#pragma once

#include <ATen/Version.h>

#include <string>

#if defined(__x86_64__) && defined(__GNUC__)  // GCC, or clang (which defines __GNUC__)
#define VTSEG_X86_DISPATCH 1
#endif

namespace vtseg {

enum class Isa { kBase, kAvx2, kAvx512 };

inline Isa cpu_isa() {
#ifdef VTSEG_X86_DISPATCH
  static const Isa isa = [] {
    __builtin_cpu_init();
    const std::string torch_isa = at::get_cpu_capability();
    const bool torch_avx512 = torch_isa.rfind("AVX512", 0) == 0;
    const bool torch_avx2 = torch_avx512 || torch_isa.rfind("AVX2", 0) == 0;
    if (torch_avx512 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
      return Isa::kAvx512;
    if (torch_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

inline const char* isa_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace vtseg

// fn(...) (a function, or a template with its arguments) compiled for the instruction set
// cpu_isa() names.
#ifdef VTSEG_X86_DISPATCH
#define VTSEG_ISA(fn, ...)                                     \
  switch (cpu_isa()) {                                         \
    case Isa::kAvx512: avx512::fn(__VA_ARGS__); break;         \
    case Isa::kAvx2: avx2::fn(__VA_ARGS__); break;             \
    default: base::fn(__VA_ARGS__);                            \
  }
#else
#define VTSEG_ISA(fn, ...) base::fn(__VA_ARGS__);
#endif
