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

// The element math is math::nadam_element (playbook/math/nadam.h), shared with the CUDA functor.
template <bool kPlaybook>
void nadam_f32(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
               int64_t n, const NAdamScalars& in) {
  const math::MomentConsts c = in.c;  // local copies: loop invariants the vectorizer can hoist
  const math::NAdamStepScalars s = in.s;
  for (int64_t i = 0; i < n; ++i) {
    float param = p[i], exp_avg = m[i], exp_avg_sq = v[i];
    math::nadam_element<kPlaybook>(param, g[i], exp_avg, exp_avg_sq, c, s);
    p[i] = param;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
  }
}

template <typename T>
void nadam_impl(T* p, const T* g, float* m, float* v, int64_t n, const NAdamScalars& s) {
  for_blocks(p, g, n, [&](float* pb, const float* gb, int64_t off, int64_t len) {
    if (s.playbook) {
      nadam_f32<true>(pb, gb, m + off, v + off, len, s);
    } else {
      nadam_f32<false>(pb, gb, m + off, v + off, len, s);
    }
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
