// Per-ISA CPU chunk kernels and the table the drivers call through.
//
// NOTE: [SIMD dispatch]
// csrc/cpu/kernels/*.cpp are compiled once per SIMD level (cmake/PlaybookSIMD.cmake) into
// namespaces playbook::cpu::{portable,avx2,avx512}; csrc/cpu/dispatch.cpp picks the best level
// the CPU reports at run time. The kernel files must not emit any symbol outside their ISA
// namespace (no std:: templates, no inline functions shared with other translation units):
// the linker would otherwise merge an AVX-512 copy into code that runs on any x86-64.
// All levels compute bit-identical results (-ffp-contract=off, same lane structure).
#pragma once

#include <cstdint>

#include "playbook/math/adam.h"
#include "playbook/math/nadam.h"
#include "playbook/math/sgd.h"
#include "playbook/tensor.h"

namespace playbook {
namespace cpu {

// Elements per work item. Fixed, so chunk boundaries (and the reduction order) never depend on
// the thread count.
constexpr int64_t kChunkSize = 16384;

// Per-tensor scalars of a step, computed by the drivers (csrc/cpu/{adam,nadam,sgd}.cpp) with the
// functions of playbook/math/*.h that the CUDA functors use too.
struct AdamScalars {
  math::MomentConsts c;
  math::AdamStepScalars s;
  bool amsgrad;
};

struct NAdamScalars {
  math::MomentConsts c;
  math::NAdamStepScalars s;
  bool playbook;  // variant
};

struct SGDScalars {
  math::SGDConsts c;
  bool first;     // momentum buffer starts as the gradient
  bool has_momentum;
};

struct KernelTable {
  const char* name;
  // Sum of squares of n elements, in double (see NOTE: [Deterministic sum of squares]).
  double (*sumsq)(const void* x, int64_t n, DType dtype);
  void (*adam)(void* p, const void* g, float* m, float* v, float* vmax, int64_t n, DType dtype,
               const AdamScalars& s);
  void (*nadam)(void* p, const void* g, float* m, float* v, int64_t n, DType dtype,
                const NAdamScalars& s);
  void (*sgd)(void* p, const void* g, float* buf, int64_t n, DType dtype, const SGDScalars& s);
};

#define PLAYBOOK_DECLARE_CPU_KERNELS(isa)                                                      \
  namespace isa {                                                                              \
  double sumsq_kernel(const void* x, int64_t n, DType dtype);                                  \
  void adam_kernel(void* p, const void* g, float* m, float* v, float* vmax, int64_t n,        \
                   DType dtype, const AdamScalars& s);                                         \
  void nadam_kernel(void* p, const void* g, float* m, float* v, int64_t n, DType dtype,        \
                    const NAdamScalars& s);                                                    \
  void sgd_kernel(void* p, const void* g, float* buf, int64_t n, DType dtype,                 \
                  const SGDScalars& s);                                                        \
  }

PLAYBOOK_DECLARE_CPU_KERNELS(portable)
PLAYBOOK_DECLARE_CPU_KERNELS(avx2)
PLAYBOOK_DECLARE_CPU_KERNELS(avx512)

// The table of the level in use (dispatch.cpp).
const KernelTable& kernels();

// A contiguous slice of one tensor: the unit of CPU work.
struct Chunk {
  int32_t tensor;
  int64_t begin;
  int64_t size;
};

}  // namespace cpu
}  // namespace playbook
