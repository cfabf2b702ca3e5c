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
  // Regions (contiguous layout, NOTE: [Ghost batch norm regions] in ghost_bn_kernel.cpp):
  // num_samples samples sample_stride elements apart, each with num_channels <= kMaxRegionChannels
  // consecutive planes of s elements. Per channel j, over its num_samples planes in sample order
  // (element i of a plane to lane i % 16 of fixed double lanes, combined pairwise):
  // s1[j] = sum(x - shift[j]), s2[j] = sum((x - shift[j])^2), stored (not added).
  void (*stats_region)(const void* x, int64_t sample_stride, int64_t num_samples, int64_t num_channels,
                       int64_t s, DType dtype, const double* shift, double* s1, double* s2);
  // Rows (channels-last layout): num_rows rows of c elements. s1[j] += x[j] - shift[j], etc.
  void (*stats_rows)(const void* x, int64_t num_rows, int64_t c, DType dtype, const double* shift,
                     double* s1, double* s2);
  // The mean is a float pair hi + lo (NOTE: [Two-float mean] in playbook/ghost_bn.h).
  // y = ((x - hi) - lo) * alpha + beta over num_planes consecutive planes of s elements, plane q
  // with hi[q], lo[q], alpha[q], beta[q]. `stream`: non-temporal stores where the level has them
  // (NOTE: [Ghost batch norm streaming stores] in ghost_bn_kernel.cpp; the same values), followed
  // by fence() after the work item.
  void (*apply_planes)(const void* x, void* y, int64_t num_planes, int64_t s, DType dtype, const float* hi,
                       const float* lo, const float* alpha, const float* beta, bool stream);
  // The same over rows of c elements with per-channel hi/lo/alpha/beta.
  void (*apply_rows)(const void* x, void* y, int64_t num_rows, int64_t c, DType dtype,
                     const float* hi, const float* lo, const float* alpha, const float* beta, bool stream);
  // sdy = sum(dy), sdyx = sum(dy * ((x - hi) - lo)) in double, over a region (stored, per channel,
  // lanes as stats_region) / rows (added).
  void (*bwd_reduce_region)(const void* dy, const void* x, int64_t sample_stride, int64_t num_samples,
                            int64_t num_channels, int64_t s, DType dtype, const float* hi, const float* lo,
                            double* sdy, double* sdyx);
  void (*bwd_reduce_rows)(const void* dy, const void* x, int64_t num_rows, int64_t c, DType dtype,
                          const float* hi, const float* lo, double* sdy, double* sdyx);
  // dx = ((dy - mdy) - ((x - hi) - lo) * k) * a over consecutive planes (per-plane coefficients) /
  // rows (per-channel coefficients).
  void (*bwd_apply_planes)(const void* dy, const void* x, void* dx, int64_t num_planes, int64_t s, DType dtype,
                           const float* hi, const float* lo, const float* mdy, const float* k, const float* a,
                           bool stream);
  void (*bwd_apply_rows)(const void* dy, const void* x, void* dx, int64_t num_rows, int64_t c,
                         DType dtype, const float* hi, const float* lo, const float* mdy,
                         const float* k, const float* a, bool stream);
  // Orders the streaming stores of this thread (sfence) before the work item completes.
  void (*fence)();
  // The per-(ghost batch, channel) formulas of playbook/ghost_bn_math.h over channels j < n of one
  // ghost batch of m elements, vectorized where the level allows with the same bits (NOTE: [Ghost
  // batch norm vector finalization] in ghost_bn_kernel.cpp).
  // gbn_moments: the shifted sums s1, s2 become mean, m2 in place.
  void (*moments)(int64_t n, double m, const double* shift, double* s1, double* s2);
  // gbn_save into hi, lo, invstd; when alpha is not null also alpha = invstd * weight (weight null:
  // invstd) and beta = bias (bias null: 0).
  void (*save_stats)(int64_t n, double m, double eps, const double* mean, const double* m2, const float* weight,
                     const float* bias, float* hi, float* lo, float* invstd, float* alpha, float* beta);
  // gbn_grad_coefs (weight null: 1).
  void (*grad_coefs)(int64_t n, double m, const double* sdy, const double* sdyx, const float* invstd,
                     const float* weight, float* mdy, float* k, float* a);
  // The running-stat EMA of one ghost batch with factor f (gbn_ema, gbn_unbiased).
  void (*ema)(int64_t n, double f, double m, const double* mean, const double* m2, float* running_mean,
              float* running_var);
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
