// playbook/ghost_bn.h: ghost batch norm (Hoffer et al. 2017; playbook "Batch normalization
// implementation details"), torch-agnostic.
//
// NOTE: [Ghost batch norm layout]
// The input is viewed as (n, c, s): n samples, c channels, s = product of the spatial sizes.
// Contiguous memory is (n, c, s) ("planes" of s elements); channels-last memory is (n, s, c)
// ("rows" of c elements). Input with s == 1 is always handled as channels-last (both orders are
// the same memory). Ghost batch g covers samples [g*vbs, min((g+1)*vbs, n)), so every ghost batch
// has vbs samples except possibly the last; its statistics for channel c run over all
// (sample, spatial) elements of that slice.
//
// NOTE: [Ghost batch norm numerics]
// Statistics are shifted sums: with K = the first element of the (ghost batch, channel) slice,
// s1 = sum(x - K) and s2 = sum((x - K)^2); mean = K + s1/m and m2 = s2 - s1^2/m (m = element
// count, m2 = sum of squared deviations, clamped at 0), the sums and this formula in double. The
// shift makes the subtraction well conditioned (no E[x^2] - E[x]^2 cancellation), in one pass
// over x. float32 input: every term is added in double (exact to ~1e-16 relative). bfloat16 and
// float16 input: the terms (x - K, exact unless the exponents of x and K differ by more than 15
// (bfloat16) / 12 (float16), then rounded once, and its square) are added in float over short
// fixed blocks (at most 32 terms), and each block's sum in double (NOTE:
// [Ghost batch norm float blocks] in csrc/cpu/kernels/ghost_bn_kernel.cpp): each block is within
// 32 * 2^-24 of the sum of its absolute terms, far below the 2^-9 (bfloat16) / 2^-12 (float16)
// rounding of the output; the double chains cost about 2.5x the instructions and bound those
// passes. The backward sums (below) follow the same rule per dtype. Each sum has a fixed
// accumulation order (lanes and blocks for planes, row order and row runs for rows, fixed-size row
// blocks merged in block order), so results are bitwise independent of the thread count and of
// the SIMD level. The CUDA kernels use the same terms and the same float/double split with their
// own grouping (NOTE: [Ghost batch norm CUDA kernels]).
// Normalize: y = (x - mean) * (invstd * w) + b in fp32, invstd = 1/sqrt(m2/m + eps).
//
// NOTE: [Two-float mean]
// The saved mean is a float pair: hi = float(mean), lo = float(mean - hi), and kernels compute
// x - mean as (x - hi) - lo. With a large mean and a small spread (x = 1e4 + 0.01 * noise), a
// single fp32 mean is off by up to half an ulp of 1e4 (5e-4, 5% of the spread) and every output
// and gradient inherits that error; x - hi is exact there (Sterbenz), so the pair keeps the full
// accuracy of the double statistics. save_mean buffers are [2, G, C]: all hi, then all lo.
// save_invstd is [G, C].
// Backward with sdy = sum(dy), sdyx = sum(dy * (x - mean)) per (ghost batch, channel):
//   dx = (dy - sdy/m - (x - mean) * invstd^2 * sdyx/m) * invstd * w,
//   grad_weight = sum_g sdyx * invstd, grad_bias = sum_g sdy.
// Running stats: the EMA is applied once per ghost batch in order, with the unbiased variance
// m2/(m-1); momentum < 0 means the cumulative average, factor 1/(num_batches_tracked + g + 1).
#pragma once

#include <cstdint>

#include "playbook/host_device.h"
#include "playbook/tensor.h"

namespace playbook {

struct GhostBNShape {
  int64_t n = 0;             // samples
  int64_t c = 0;             // channels
  int64_t s = 1;             // spatial positions per (sample, channel)
  int64_t vbs = 1;           // virtual (ghost) batch size, in samples
  bool channels_last = false;  // memory (n, s, c) instead of (n, c, s)
  DType dtype = DType::kFloat32;
  int32_t device = kCPUDevice;

  PLAYBOOK_HOST_DEVICE int64_t num_ghost() const { return vbs <= 0 ? 0 : (n + vbs - 1) / vbs; }
  PLAYBOOK_HOST_DEVICE int64_t ghost_samples(int64_t g) const { return g * vbs + vbs <= n ? vbs : n - g * vbs; }
  PLAYBOOK_HOST_DEVICE int64_t ghost_count(int64_t g) const { return ghost_samples(g) * s; }
};

// Argument checks shared by the CPU and CUDA entry points (csrc/cpu/ghost_bn.cpp).
void check_ghost_bn_shape(const GhostBNShape& shape);

namespace cpu {

// Per (ghost batch, channel) mean and sum of squared deviations m2, in double; [G, C] each.
void ghost_bn_stats(const GhostBNShape& shape, const void* x, double* mean, double* m2,
                    int num_threads);

// From mean/m2 ([G, C] doubles) and the element counts (`count` for ghost batches 0..G-2,
// `count_last` for ghost batch G-1):
// save_mean ([2, G, C] floats, NOTE: [Two-float mean]), save_invstd ([G, C]) and, when running_mean is not null, the per-ghost-batch
// EMA of the running stats (NOTE: [Ghost batch norm numerics]).
void ghost_bn_finalize(int64_t num_ghost, int64_t c, const double* mean, const double* m2,
                       int64_t count, int64_t count_last, double eps, double momentum,
                       int64_t num_batches_tracked, float* running_mean, float* running_var,
                       float* save_mean, float* save_invstd);

// y = (x - mean) * invstd * w + b per (ghost batch, channel); weight/bias may be null (1 and 0).
void ghost_bn_apply(const GhostBNShape& shape, const void* x, void* y, const float* save_mean,
                    const float* save_invstd, const float* weight, const float* bias,
                    int num_threads);

// sdy, sdyx ([G, C] doubles) of the backward pass.
void ghost_bn_backward_reduce(const GhostBNShape& shape, const void* dy, const void* x,
                              const float* save_mean, double* sdy, double* sdyx, int num_threads);

// dx from the sums over each ghost batch (count / count_last elements as in ghost_bn_finalize;
// for cross-rank ghost batches the sums and counts are those of the whole ghost batch).
void ghost_bn_backward_apply(const GhostBNShape& shape, const void* dy, const void* x,
                             const float* save_mean, const float* save_invstd, const float* weight,
                             const double* sdy, const double* sdyx, int64_t count, int64_t count_last,
                             void* dx,
                             int num_threads);

// grad_weight[c] = sum_g sdyx[g, c] * invstd[g, c], grad_bias[c] = sum_g sdy[g, c] (either may
// be null).
void ghost_bn_param_grads(int64_t num_ghost, int64_t c, const double* sdy, const double* sdyx,
                          const float* save_invstd, float* grad_weight, float* grad_bias);

// Single-process training step in one call: stats, finalize (with the running-stat EMA when
// running_mean is not null) and apply, the same bits as the three calls (channels-last ghost
// batches that fit in the cache are normalized right after their statistics). mean/m2 are [G, C]
// double scratch, allocated here when null.
void ghost_bn_forward_train(const GhostBNShape& shape, const void* x, void* y, const float* weight,
                            const float* bias, double eps, double momentum, int64_t num_batches_tracked,
                            float* running_mean, float* running_var, double* mean, double* m2,
                            float* save_mean, float* save_invstd, int num_threads);

// Single-process backward in one call: sums, dx (when dx is not null) and the parameter grads
// (when not null). Contiguous layout, and channels-last ghost batches that fit in the cache: each
// work item computes dx right after its sums (measured faster than two passes); larger
// channels-last ghost batches go in windows (NOTE: [Ghost batch norm work split] in
// csrc/cpu/ghost_bn.cpp). sdy/sdyx are [G, C] double scratch, allocated here
// when null.
void ghost_bn_backward_train(const GhostBNShape& shape, const void* dy, const void* x,
                             const float* save_mean, const float* save_invstd, const float* weight,
                             double* sdy, double* sdyx, void* dx, float* grad_weight, float* grad_bias,
                             int num_threads);

}  // namespace cpu

// CUDA (csrc/cuda/ghost_bn.cu; NOTE: [Ghost batch norm CUDA kernels]). Same contracts as the CPU
// functions; every pointer is device memory of shape.device, work is queued on `stream` (torch's
// current stream) without host synchronization. The backward apply takes a [3, G, C] float scratch.
namespace cuda {
void ghost_bn_stats(const GhostBNShape& shape, const void* x, double* mean, double* m2, void* stream);
void ghost_bn_finalize(int64_t num_ghost, int64_t c, const double* mean, const double* m2, int64_t count,
                       int64_t count_last, double eps, double momentum, int64_t num_batches_tracked,
                       float* running_mean, float* running_var, float* save_mean, float* save_invstd, int device,
                       void* stream);
void ghost_bn_apply(const GhostBNShape& shape, const void* x, void* y, const float* save_mean,
                    const float* save_invstd, const float* weight, const float* bias, void* stream);
void ghost_bn_backward_reduce(const GhostBNShape& shape, const void* dy, const void* x, const float* save_mean,
                              double* sdy, double* sdyx, void* stream);
void ghost_bn_backward_apply(const GhostBNShape& shape, const void* dy, const void* x, const float* save_mean,
                             const float* save_invstd, const float* weight, const double* sdy, const double* sdyx,
                             int64_t count, int64_t count_last, float* coefs, void* dx, void* stream);
void ghost_bn_param_grads(int64_t num_ghost, int64_t c, const double* sdy, const double* sdyx,
                          const float* save_invstd, float* grad_weight, float* grad_bias, int device, void* stream);
}  // namespace cuda

}  // namespace playbook
