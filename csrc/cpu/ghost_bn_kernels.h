// Per-ISA inner loops of ghost batch norm (csrc/cpu/kernels/ghost_bn_kernel.cpp), compiled once
// per SIMD level like the optimizer kernels (NOTE: [SIMD dispatch] in csrc/cpu/kernels.h), and
// the table the driver csrc/cpu/ghost_bn.cpp calls through. Numerics: NOTE: [Ghost batch norm
// numerics] in playbook/ghost_bn.h.
#pragma once

#include <cstdint>

#include "playbook/tensor.h"

namespace playbook {
namespace cpu {

constexpr int64_t kMaxRegionChannels = 64;

struct GhostBNKernels {
  // Planes (contiguous layout): num_planes planes of s elements, plane p at x + p*stride.
  // s1 += sum(x - shift), s2 += sum((x - shift)^2), accumulated in fixed lanes.
  void (*stats_planes)(const void* x, int64_t stride, int64_t num_planes, int64_t s, DType dtype,
                       double shift, double* s1, double* s2);
  // Rows (channels-last layout): num_rows rows of c elements. s1[j] += x[j] - shift[j], etc.
  void (*stats_rows)(const void* x, int64_t num_rows, int64_t c, DType dtype, const double* shift,
                     double* s1, double* s2);
  // The mean is a float pair hi + lo (NOTE: [Two-float mean] in playbook/ghost_bn.h).
  // y = ((x - hi) - lo) * alpha + beta over one plane of s elements.
  // `stream`: non-temporal stores where the level has them (NOTE: [Ghost batch norm streaming
  // stores] in ghost_bn_kernel.cpp; the same values), followed by fence() after the work item.
  void (*apply_plane)(const void* x, void* y, int64_t s, DType dtype, float hi, float lo,
                      float alpha, float beta, bool stream);
  // The same over rows of c elements with per-channel hi/lo/alpha/beta.
  void (*apply_rows)(const void* x, void* y, int64_t num_rows, int64_t c, DType dtype,
                     const float* hi, const float* lo, const float* alpha, const float* beta, bool stream);
  // sdy += sum(dy), sdyx += sum(dy * ((x - hi) - lo)) over planes / rows, in double.
  void (*bwd_reduce_planes)(const void* dy, const void* x, int64_t stride, int64_t num_planes,
                            int64_t s, DType dtype, float hi, float lo, double* sdy, double* sdyx);
  void (*bwd_reduce_rows)(const void* dy, const void* x, int64_t num_rows, int64_t c, DType dtype,
                          const float* hi, const float* lo, double* sdy, double* sdyx);
  // dx = ((dy - mdy) - ((x - hi) - lo) * k) * a over one plane / rows.
  void (*bwd_apply_plane)(const void* dy, const void* x, void* dx, int64_t s, DType dtype,
                          float hi, float lo, float mdy, float k, float a, bool stream);
  void (*bwd_apply_rows)(const void* dy, const void* x, void* dx, int64_t num_rows, int64_t c,
                         DType dtype, const float* hi, const float* lo, const float* mdy,
                         const float* k, const float* a, bool stream);
  // Regions (contiguous layout, NOTE: [Ghost batch norm regions] in ghost_bn_kernel.cpp):
  // num_samples samples sample_stride elements apart, each with num_channels <= kMaxRegionChannels
  // consecutive planes of s elements; per channel j, the same sums as stats_planes /
  // bwd_reduce_planes over its num_samples planes, stored (not added) into s1[j], s2[j].
  void (*stats_region)(const void* x, int64_t sample_stride, int64_t num_samples, int64_t num_channels,
                       int64_t s, DType dtype, const double* shift, double* s1, double* s2);
  void (*bwd_reduce_region)(const void* dy, const void* x, int64_t sample_stride, int64_t num_samples,
                            int64_t num_channels, int64_t s, DType dtype, const float* hi, const float* lo,
                            double* sdy, double* sdyx);
  // Orders the streaming stores of this thread (sfence) before the work item completes.
  void (*fence)();
};

#define PLAYBOOK_DECLARE_GHOST_BN_KERNELS(isa) \
  namespace isa {                              \
  const GhostBNKernels& ghost_bn_kernels();    \
  }

PLAYBOOK_DECLARE_GHOST_BN_KERNELS(portable)
PLAYBOOK_DECLARE_GHOST_BN_KERNELS(avx2)
PLAYBOOK_DECLARE_GHOST_BN_KERNELS(avx512)

}  // namespace cpu
}  // namespace playbook
