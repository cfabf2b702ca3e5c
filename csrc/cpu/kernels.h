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

#include "playbook/tensor.h"

namespace playbook {
namespace cpu {

// Elements per work item. Fixed, so chunk boundaries (and the reduction order) never depend on
// the thread count.
constexpr int64_t kChunkSize = 16384;

// Per-tensor scalars of an Adam step, computed by the driver (csrc/cpu/adam.cpp).
struct AdamScalars {
  float grad_factor;   // clip / grad_scale, negated when maximize
  float weight_decay;  // L2 coefficient (0 when decoupled)
  float decay;         // decoupled: 1 - lr*wd, else 1
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float step_size;     // torch: lr / bc1; playbook: lr * sqrt(bc2) / bc1
  float bc2_sqrt;      // torch: sqrt(bc2); playbook: 1 (divides sqrt(v))
  bool lerp_low;       // torch.lerp branch: weight (1 - beta1) < 0.5
  bool amsgrad;
};

struct NAdamScalars {
  float grad_factor, weight_decay, decay;
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  bool lerp_low;
  bool playbook;       // variant
  // torch variant: p -= coef_grad * g / denom + coef_avg * m / denom, denom = sqrt(v / bc2) + eps
  float bc2, coef_grad, coef_avg;
  // playbook variant: p -= step_size * (b1 m + (1-b1) g) / (sqrt(v) + eps)
  float step_size;
};

struct SGDScalars {
  float grad_factor, weight_decay, lr, momentum, one_minus_dampening;
  bool first;     // momentum buffer starts as the gradient
  bool nesterov;
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
