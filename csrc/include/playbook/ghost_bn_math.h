// playbook/ghost_bn_math.h: the per-element and per-(ghost batch, channel) formulas of ghost batch
// norm, defined once for the CPU kernels, the CUDA kernels and the host launch emulator
// (NOTE: [Ghost batch norm numerics] and NOTE: [Two-float mean] in playbook/ghost_bn.h).
//
// Included INSIDE a namespace by its users (the CPU kernel files include it in their ISA
// namespace, NOTE: [SIMD dispatch] in csrc/cpu/kernels.h), so it includes nothing but
// host_device.h, and every function is `static inline` (internal linkage: no copy is shared
// between SIMD levels). Include <cmath> before it. Rounding is the same on every path: the CPU
// builds with -ffp-contract=off and nvcc with --fmad=false, so no multiply-add is fused.
#include "playbook/host_device.h"

// y = (x - mean) * alpha + beta with mean = hi + lo, alpha = invstd * weight. F is float, or (CPU
// kernels) a vector of floats: the same operations lane by lane.
template <typename F>
static inline PLAYBOOK_HOST_DEVICE F gbn_normalize(F x, F hi, F lo, F alpha, F beta) {
  return ((x - hi) - lo) * alpha + beta;
}

// dx = (dy - mean(dy) - (x - mean) * k) * a, k = invstd^2 * sum(dy * (x - mean)) / m,
// a = invstd * weight. F as in gbn_normalize.
template <typename F>
static inline PLAYBOOK_HOST_DEVICE F gbn_grad_input(F dy, F x, F hi, F lo, F mdy, F k, F a) {
  return ((dy - mdy) - ((x - hi) - lo) * k) * a;
}

// Adds one element to the shifted sums s1 = sum(x - shift), s2 = sum((x - shift)^2). D is double,
// or (CPU kernels) a vector of doubles: the same operations lane by lane.
template <typename D>
static inline PLAYBOOK_HOST_DEVICE void gbn_stats_add(D x, D shift, D* s1, D* s2) {
  const D d = x - shift;
  *s1 += d;
  *s2 += d * d;
}

// Adds one element to the backward sums sdy = sum(dy), sdyx = sum(dy * (x - mean)).
template <typename D>
static inline PLAYBOOK_HOST_DEVICE void gbn_backward_add(D dy, D x, D hi, D lo, D* sdy, D* sdyx) {
  *sdy += dy;
  *sdyx += dy * ((x - hi) - lo);
}

// Mean and sum of squared deviations m2 of m elements from their shifted sums.
static inline PLAYBOOK_HOST_DEVICE void gbn_moments(double shift, double s1, double s2, double m, double* mean,
                                                    double* m2) {
  double d = s2 - s1 * s1 / m;
  if (d < 0.0) d = 0.0;  // rounding; NaN stays NaN
  *mean = shift + s1 / m;
  *m2 = d;
}

// Saved statistics of m elements: the two-float mean and invstd = 1 / sqrt(m2 / m + eps).
static inline PLAYBOOK_HOST_DEVICE void gbn_save(double mean, double m2, double m, double eps, float* hi, float* lo,
                                                 float* invstd) {
  const float h = static_cast<float>(mean);
  *hi = h;
  *lo = static_cast<float>(mean - static_cast<double>(h));
  *invstd = static_cast<float>(1.0 / sqrt(m2 / m + eps));
}

// grad_weight and grad_bias of channel c: the per-(ghost batch, channel) sums of dy * xhat
// (sdyx * invstd) and of dy, added over the G ghost batches in order, in double.
static inline PLAYBOOK_HOST_DEVICE void gbn_param_grad(int64_t G, int64_t C, int64_t c, const double* sdy,
                                                       const double* sdyx, const float* save_invstd,
                                                       float* grad_weight, float* grad_bias) {
  double gw = 0.0, gb = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    gw += sdyx[g * C + c] * static_cast<double>(save_invstd[g * C + c]);
    gb += sdy[g * C + c];
  }
  if (grad_weight != nullptr) grad_weight[c] = static_cast<float>(gw);
  if (grad_bias != nullptr) grad_bias[c] = static_cast<float>(gb);
}

// One EMA step of a running stat with factor f.
static inline PLAYBOOK_HOST_DEVICE float gbn_ema(float running, double value, double f) {
  return static_cast<float>((1.0 - f) * static_cast<double>(running) + f * value);
}

// EMA factor of ghost batch g: momentum, or the cumulative average 1 / (tracked + g + 1) when
// momentum < 0 (nn.BatchNorm's momentum=None).
static inline PLAYBOOK_HOST_DEVICE double gbn_ema_factor(double momentum, long long tracked, long long g) {
  return momentum < 0.0 ? 1.0 / static_cast<double>(tracked + g + 1) : momentum;
}

// Unbiased variance of m elements (m = 1 gives 0/0 = NaN; the Python layer refuses that case).
static inline PLAYBOOK_HOST_DEVICE double gbn_unbiased(double m2, double m) { return m2 / (m - 1.0); }

// Per-(ghost batch, channel) coefficients of gbn_grad_input.
static inline PLAYBOOK_HOST_DEVICE void gbn_grad_coefs(double sdy, double sdyx, float invstd, float weight, double m,
                                                       float* mdy, float* k, float* a) {
  const double is = static_cast<double>(invstd);
  *mdy = static_cast<float>(sdy / m);
  *k = static_cast<float>(is * is * sdyx / m);
  *a = static_cast<float>(is * static_cast<double>(weight));
}
