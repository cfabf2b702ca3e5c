// Sum of squares of one chunk, compiled once per SIMD level (NOTE: [SIMD dispatch]).
//
// NOTE: [Deterministic sum of squares]
// Each element is widened to double and squared: the product of two floats is exact in double,
// so fused or unfused multiply-add give the same bits. The chunk keeps kLanes independent
// accumulators (element i goes to lane i % kLanes) that are combined in a fixed pairwise order;
// the compiler vectorizes across lanes without reassociating anything. Every SIMD level and
// every thread count therefore produces the same bits for the same chunk.
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

constexpr int kLanes = 16;

static_assert(kBlock % kLanes == 0, "blocks must keep element i in lane i % kLanes");

// Adds x[i]^2 to acc[i % kLanes] for i in [0, n).
void accumulate(double* __restrict acc, const float* __restrict x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double v = static_cast<double>(x[i + j]);
      acc[j] += v * v;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const double v = static_cast<double>(x[i + j]);
    acc[j] += v * v;
  }
}

double combine(double* acc) {
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

double sumsq_impl(const float* x, int64_t n) {
  double acc[kLanes] = {};
  accumulate(acc, x, n);
  return combine(acc);
}

#ifdef PLAYBOOK_BF16_AVX512
// bf16 at the AVX-512 level: widened in registers (NOTE: [bf16 in registers]); lanes 0-7 and
// 8-15 of acc are the two accumulators, each lane adds its elements in the same order as above.
double sumsq_impl(const Bf16* x, int64_t n) {
  static_assert(kLanes == 16, "two 8-double accumulators hold the kLanes lanes");
  __m512d acc_lo = _mm512_setzero_pd();
  __m512d acc_hi = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 f = load16_bf16(x + i);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
    acc_lo = _mm512_add_pd(acc_lo, _mm512_mul_pd(lo, lo));
    acc_hi = _mm512_add_pd(acc_hi, _mm512_mul_pd(hi, hi));
  }
  alignas(64) double acc[kLanes];
  _mm512_store_pd(acc, acc_lo);
  _mm512_store_pd(acc + 8, acc_hi);
  for (int j = 0; i + j < n; ++j) {
    const double v = static_cast<double>(to_float(x[i + j]));
    acc[j] += v * v;
  }
  return combine(acc);
}
#endif

// 16-bit storage: widened block by block (NOTE: [16-bit blocks]); same lanes as above.
template <typename T>
double sumsq_impl(const T* x, int64_t n) {
  double acc[kLanes] = {};
  float block[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    load_block(block, x + b, len);
    accumulate(acc, block, len);
  }
  return combine(acc);
}

}  // namespace

double sumsq_kernel(const void* x, int64_t n, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return sumsq_impl(static_cast<const float*>(x), n);
    case DType::kBFloat16: return sumsq_impl(static_cast<const Bf16*>(x), n);
    case DType::kFloat16: return sumsq_impl(static_cast<const _Float16*>(x), n);
  }
  return 0.0;
}

}  // namespace PLAYBOOK_CPU_ISA
}  // namespace cpu
}  // namespace playbook
