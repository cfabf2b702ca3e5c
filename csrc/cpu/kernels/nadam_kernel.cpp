// NAdam update of one chunk, compiled once per SIMD level (NOTE: [SIMD dispatch]).
// Formulas: NOTE: [Update formulas] in playbook/optim.h; scalars from csrc/cpu/nadam.cpp.
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

void nadam_f32(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
               int64_t n, const NAdamScalars& s) {
  const float factor = s.grad_factor, wd = s.weight_decay, decay = s.decay;
  const float b1 = s.beta1, omb1 = s.one_minus_beta1, b2 = s.beta2, omb2 = s.one_minus_beta2;
  const float eps = s.eps, bc2 = s.bc2, coef_grad = s.coef_grad, coef_avg = s.coef_avg;
  const float step_size = s.step_size;
  const bool low = s.lerp_low, l2 = wd != 0.f, playbook_variant = s.playbook;
  for (int64_t i = 0; i < n; ++i) {
    float param = p[i];
    float grad = g[i] * factor;
    if (l2) grad = grad + wd * param;
    param = param * decay;
    const float exp_avg = lerp(m[i], grad, omb1, b1, low);
    const float exp_avg_sq = v[i] * b2 + omb2 * grad * grad;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    if (playbook_variant) {
      const float denom = __builtin_sqrtf(exp_avg_sq) + eps;
      param = param + (-step_size) * (b1 * exp_avg + omb1 * grad) / denom;
    } else {
      const float denom = __builtin_sqrtf(exp_avg_sq / bc2) + eps;
      param = param + (-coef_grad) * grad / denom;
      param = param + (-coef_avg) * exp_avg / denom;
    }
    p[i] = param;
  }
}

template <typename T>
void nadam_impl(T* p, const T* g, float* m, float* v, int64_t n, const NAdamScalars& s) {
  for_blocks(p, g, n, [&](float* pb, const float* gb, int64_t off, int64_t len) {
    nadam_f32(pb, gb, m + off, v + off, len, s);
  });
}

}  // namespace

void nadam_kernel(void* p, const void* g, float* m, float* v, int64_t n, DType dtype,
                  const NAdamScalars& s) {
  switch (dtype) {
    case DType::kFloat32:
      return nadam_impl(static_cast<float*>(p), static_cast<const float*>(g), m, v, n, s);
    case DType::kBFloat16:
      return nadam_impl(static_cast<Bf16*>(p), static_cast<const Bf16*>(g), m, v, n, s);
    case DType::kFloat16:
      return nadam_impl(static_cast<_Float16*>(p), static_cast<const _Float16*>(g), m, v, n, s);
  }
}

}  // namespace PLAYBOOK_CPU_ISA
}  // namespace cpu
}  // namespace playbook
