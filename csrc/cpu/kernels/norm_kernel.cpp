// Sum of squares of one chunk, compiled once per SIMD level (NOTE: [SIMD dispatch]).
//
// NOTE: [Deterministic sum of squares]
// Each element is widened to double and squared: the product of two floats is exact in double,
// so fused or unfused multiply-add give the same bits. The chunk keeps kLanes independent
// accumulators (element i goes to lane i % kLanes) that are combined in a fixed pairwise order;
// the compiler vectorizes across lanes without reassociating anything. Every SIMD level and
// every thread count therefore produces the same bits for the same chunk.
#include <cstdint>

#include "cpu/kernels.h"

namespace playbook {
namespace cpu {
namespace PLAYBOOK_CPU_ISA {

#include "cpu/kernels/kernel_utils.h"

namespace {

constexpr int kLanes = 16;

template <typename T>
double sumsq_impl(const T* __restrict x, int64_t n) {
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = 0.0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double v = static_cast<double>(to_float(x[i + j]));
      acc[j] += v * v;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const double v = static_cast<double>(to_float(x[i + j]));
    acc[j] += v * v;
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
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
