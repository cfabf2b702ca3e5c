// SGD (momentum, dampening, Nesterov) update of one chunk, compiled once per SIMD level
// (NOTE: [SIMD dispatch]). Formulas: NOTE: [Update formulas]; scalars from csrc/cpu/sgd.cpp.
#include <cstdint>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "cpu/kernels.h"

namespace playbook {
namespace cpu {
namespace PLAYBOOK_CPU_ISA {

#include "cpu/kernels/kernel_utils.h"

namespace {

void sgd_f32(float* __restrict p, const float* __restrict g, float* __restrict buf, int64_t n,
             const SGDScalars& s) {
  const float factor = s.grad_factor, wd = s.weight_decay, lr = s.lr, mu = s.momentum;
  const float omd = s.one_minus_dampening;
  const bool l2 = wd != 0.f, first = s.first, nesterov = s.nesterov, has_momentum = s.has_momentum;
  for (int64_t i = 0; i < n; ++i) {
    float param = p[i];
    float grad = g[i] * factor;
    if (l2) grad = grad + wd * param;
    if (has_momentum) {
      const float b = first ? grad : buf[i] * mu + omd * grad;
      buf[i] = b;
      grad = nesterov ? grad + mu * b : b;
    }
    param = param + (-lr) * grad;
    p[i] = param;
  }
}

template <typename T>
void sgd_impl(T* p, const T* g, float* buf, int64_t n, const SGDScalars& s) {
  for_blocks(p, g, n, [&](float* pb, const float* gb, int64_t off, int64_t len) {
    sgd_f32(pb, gb, buf != nullptr ? buf + off : nullptr, len, s);
  });
}

}  // namespace

void sgd_kernel(void* p, const void* g, float* buf, int64_t n, DType dtype, const SGDScalars& s) {
  switch (dtype) {
    case DType::kFloat32:
      return sgd_impl(static_cast<float*>(p), static_cast<const float*>(g), buf, n, s);
    case DType::kBFloat16:
      return sgd_impl(static_cast<Bf16*>(p), static_cast<const Bf16*>(g), buf, n, s);
    case DType::kFloat16:
      return sgd_impl(static_cast<_Float16*>(p), static_cast<const _Float16*>(g), buf, n, s);
  }
}

}  // namespace PLAYBOOK_CPU_ISA
}  // namespace cpu
}  // namespace playbook
