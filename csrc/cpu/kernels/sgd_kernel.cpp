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

// The element math is math::sgd_element (playbook/math/sgd.h), shared with the CUDA functor.
template <bool kMomentum>
void sgd_f32(float* __restrict p, const float* __restrict g, float* __restrict buf, int64_t n,
             const SGDScalars& in) {
  const math::SGDConsts c = in.c;  // local copy: loop invariants the vectorizer can hoist
  const bool first = in.first;
  for (int64_t i = 0; i < n; ++i) {
    float param = p[i];
    float b = kMomentum ? buf[i] : 0.f;
    math::sgd_element<kMomentum>(param, g[i], b, first, c);
    p[i] = param;
    if (kMomentum) buf[i] = b;
  }
}

template <typename T>
void sgd_impl(T* p, const T* g, float* buf, int64_t n, const SGDScalars& s) {
  for_blocks(p, g, n, [&](float* pb, const float* gb, int64_t off, int64_t len) {
    if (s.has_momentum) {
      sgd_f32<true>(pb, gb, buf + off, len, s);
    } else {
      sgd_f32<false>(pb, gb, nullptr, len, s);
    }
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
