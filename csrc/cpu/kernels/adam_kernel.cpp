// Adam/AdamW update of one chunk, compiled once per SIMD level (NOTE: [SIMD dispatch]).
// Formulas: NOTE: [Update formulas] in playbook/optim.h; scalars from csrc/cpu/adam.cpp.
#include <cstdint>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/kernels.h"

namespace playbook {
namespace cpu {
namespace PLAYBOOK_CPU_ISA {

#include "cpu/kernels/kernel_utils.h"
#include "cpu/kernels/bf16_avx512.h"

namespace {

// The element math is math::adam_element (playbook/math/adam.h), shared with the CUDA functor.
template <bool kAmsgrad>
void adam_f32(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
              float* __restrict vmax, int64_t n, const AdamScalars& in) {
  const math::MomentConsts c = in.c;  // local copies: loop invariants the vectorizer can hoist
  const math::AdamStepScalars s = in.s;
  for (int64_t i = 0; i < n; ++i) {
    float param = p[i], exp_avg = m[i], exp_avg_sq = v[i];
    float max_sq = kAmsgrad ? vmax[i] : 0.f;
    math::adam_element<kAmsgrad>(param, g[i], exp_avg, exp_avg_sq, max_sq, c, s);
    p[i] = param;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    if (kAmsgrad) vmax[i] = max_sq;
  }
}

#ifdef PLAYBOOK_BF16_AVX512
// bf16 at the AVX-512 level: NOTE: [bf16 in registers] (csrc/cpu/kernels/bf16_avx512.h). The
// 16-element strip stays in registers (the j loop is vectorized whole); the tail goes through the
// scalar conversions. kNative: params rounded back by vcvtneps2bf16 (NOTE: [bf16 rounding
// instruction]).
template <bool kAmsgrad, bool kNative>
static inline void adam_bf16_strips(Bf16* __restrict p, const Bf16* __restrict g, float* __restrict m,
                                    float* __restrict v, float* __restrict vmax, int64_t n, const AdamScalars& in) {
  const math::MomentConsts c = in.c;
  const math::AdamStepScalars s = in.s;
  constexpr int kW = 16;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    alignas(64) float pb[kW];
    alignas(64) float gb[kW];
    _mm512_store_ps(pb, load16_bf16(p + i));
    _mm512_store_ps(gb, load16_bf16(g + i));
    for (int j = 0; j < kW; ++j) {
      float exp_avg = m[i + j], exp_avg_sq = v[i + j];
      float max_sq = kAmsgrad ? vmax[i + j] : 0.f;
      math::adam_element<kAmsgrad>(pb[j], gb[j], exp_avg, exp_avg_sq, max_sq, c, s);
      m[i + j] = exp_avg;
      v[i + j] = exp_avg_sq;
      if (kAmsgrad) vmax[i + j] = max_sq;
    }
    if constexpr (kNative) {
      store16_bf16_native(p + i, _mm512_load_ps(pb));  // NOTE: [bf16 rounding instruction]
    } else {
      store16_bf16(p + i, _mm512_load_ps(pb));
    }
  }
  for (; i < n; ++i) {
    float param = to_float(p[i]), exp_avg = m[i], exp_avg_sq = v[i];
    float max_sq = kAmsgrad ? vmax[i] : 0.f;
    math::adam_element<kAmsgrad>(param, to_float(g[i]), exp_avg, exp_avg_sq, max_sq, c, s);
    p[i] = StoreAs<Bf16>::from(param);
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    if (kAmsgrad) vmax[i] = max_sq;
  }
}

// The strip loop compiled twice: with the one-instruction rounding for CPUs with AVX512_BF16
// (flatten inlines the loop and the rounding into this function, which carries the target), and
// without it (compiled for the AVX-512 level alone).
template <bool kAmsgrad>
PLAYBOOK_BF16_NATIVE_TARGET __attribute__((flatten)) void adam_bf16_native(Bf16* p, const Bf16* g, float* m,
                                                                           float* v, float* vmax, int64_t n,
                                                                           const AdamScalars& s) {
  adam_bf16_strips<kAmsgrad, true>(p, g, m, v, vmax, n, s);
}

template <bool kAmsgrad>
void adam_bf16(Bf16* p, const Bf16* g, float* m, float* v, float* vmax, int64_t n, const AdamScalars& s) {
  if (has_avx512_bf16()) {
    adam_bf16_native<kAmsgrad>(p, g, m, v, vmax, n, s);
  } else {
    adam_bf16_strips<kAmsgrad, false>(p, g, m, v, vmax, n, s);
  }
}

void adam_impl(Bf16* p, const Bf16* g, float* m, float* v, float* vmax, int64_t n, const AdamScalars& s) {
  if (s.amsgrad) {
    adam_bf16<true>(p, g, m, v, vmax, n, s);
  } else {
    adam_bf16<false>(p, g, m, v, nullptr, n, s);
  }
}
#endif

template <typename T>
void adam_impl(T* p, const T* g, float* m, float* v, float* vmax, int64_t n, const AdamScalars& s) {
  for_blocks(p, g, n, [&](float* pb, const float* gb, int64_t off, int64_t len) {
    if (s.amsgrad) {
      adam_f32<true>(pb, gb, m + off, v + off, vmax + off, len, s);
    } else {
      adam_f32<false>(pb, gb, m + off, v + off, nullptr, len, s);
    }
  });
}

}  // namespace

void adam_kernel(void* p, const void* g, float* m, float* v, float* vmax, int64_t n, DType dtype,
                 const AdamScalars& s) {
  switch (dtype) {
    case DType::kFloat32:
      return adam_impl(static_cast<float*>(p), static_cast<const float*>(g), m, v, vmax, n, s);
    case DType::kBFloat16:
      return adam_impl(static_cast<Bf16*>(p), static_cast<const Bf16*>(g), m, v, vmax, n, s);
    case DType::kFloat16:
      return adam_impl(static_cast<_Float16*>(p), static_cast<const _Float16*>(g), m, v, vmax, n, s);
  }
}

}  // namespace PLAYBOOK_CPU_ISA
}  // namespace cpu
}  // namespace playbook
