// playbook/math/adam.h: the Adam/AdamW update, defined once for the CPU chunk kernels
// (csrc/cpu/kernels/adam_kernel.cpp), the CUDA functors (csrc/cuda/adam.cu) and NAdam's moments.
// NOTE: [Update formulas] in playbook/optim.h states the math; this is its one implementation.
//
// Everything here is `static inline` (internal linkage: each CPU SIMD level keeps its own copy,
// NOTE: [SIMD dispatch]) and PLAYBOOK_HOST_DEVICE. The statement order fixes the fp32 rounding;
// both builds forbid contraction (-ffp-contract=off, --fmad=false), so the CPU and the GPU compute
// the same bits from the same scalars.
#pragma once

#include <cmath>

#include "playbook/host_device.h"

namespace playbook {
namespace math {

// torch.lerp(start, end, w): start + w*(end-start) if |w| < 0.5 else end - (end-start)*(1-w).
static inline PLAYBOOK_HOST_DEVICE float lerp(float start, float end, float w, float one_minus_w,
                                              bool low) {
  return low ? start + w * (end - start) : end - (end - start) * one_minus_w;
}

// Step-independent scalars of an Adam-family step. 1 - beta is computed in double from the double
// beta the user gave (as torch does in Python), then rounded to fp32 once.
struct MomentConsts {
  float grad_factor;   // clip / grad_scale, negated when maximize
  float weight_decay;  // L2 coefficient (0 when decoupled)
  float decay;         // decoupled: 1 - lr*wd, else 1
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  bool lerp_low;       // torch.lerp branch: weight (1 - beta1) < 0.5
};

static inline PLAYBOOK_HOST_DEVICE MomentConsts moment_consts(double lr, double beta1, double beta2,
                                                              float eps, float weight_decay,
                                                              bool decoupled, bool maximize,
                                                              float clip_factor) {
  MomentConsts c;
  c.grad_factor = clip_factor * (maximize ? -1.f : 1.f);
  c.weight_decay = decoupled ? 0.f : weight_decay;
  c.decay = decoupled ? static_cast<float>(1.0 - lr * static_cast<double>(weight_decay)) : 1.f;
  c.beta1 = static_cast<float>(beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.eps = eps;
  c.lerp_low = (1.0 - beta1) < 0.5;
  return c;
}

// Per-tensor scalars of an Adam step (t = step + 1, bias corrections in double).
//
// NOTE: [Adam denominator]
// torch's denominator is sqrt(v) / sqrt(bc2) + eps, a division per element by a per-tensor
// constant. Here it is sqrt(v) * (1 / sqrt(bc2)) + eps, the reciprocal computed once per tensor
// in double and rounded to fp32 once: the same formula, rounded differently in that one
// intermediate (it can differ from torch's quotient by one ulp; playbook was never bitwise equal
// to torch.optim.Adam, whose scalar arithmetic differs too; the tests compare with float64
// references). The update is bound by the divider once its data sits in cache (two divisions
// and a square root per element): one division fewer took the CPU update over 200K params in 400
// tensors from 106 to 79 us (fp32) and from 124 to 109 us (bf16) on one thread of this project's
// Zen 4 VM. The playbook variant multiplies by 1, exactly as it divided by 1.
struct AdamStepScalars {
  float step_size;     // torch: lr / bc1; playbook: lr * sqrt(bc2) / bc1
  float inv_bc2_sqrt;  // torch: 1 / sqrt(bc2); playbook: 1 (multiplies sqrt(v))
};

static inline PLAYBOOK_HOST_DEVICE AdamStepScalars adam_step_scalars(double lr, double beta1,
                                                                     double beta2, float step_value,
                                                                     bool playbook_variant) {
  const double step = static_cast<double>(step_value) + 1.0;
  const double bc1 = 1.0 - pow(beta1, step);
  const double bc2 = 1.0 - pow(beta2, step);
  AdamStepScalars s;
  if (playbook_variant) {
    s.step_size = static_cast<float>(lr * sqrt(bc2) / bc1);
    s.inv_bc2_sqrt = 1.f;
  } else {
    s.step_size = static_cast<float>(lr / bc1);
    s.inv_bc2_sqrt = static_cast<float>(1.0 / sqrt(bc2));
  }
  return s;
}

// The gradient an update uses (clip factor, sign, L2 decay) and the decoupled decay of the param.
static inline PLAYBOOK_HOST_DEVICE float decayed_grad(float& param, float raw_grad,
                                                      const MomentConsts& c) {
  float grad = raw_grad * c.grad_factor;
  if (c.weight_decay != 0.f) grad = grad + c.weight_decay * param;
  param = param * c.decay;
  return grad;
}

// m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2.
static inline PLAYBOOK_HOST_DEVICE void update_moments(float& exp_avg, float& exp_avg_sq, float grad,
                                                       const MomentConsts& c) {
  exp_avg = lerp(exp_avg, grad, c.one_minus_beta1, c.beta1, c.lerp_low);
  exp_avg_sq = exp_avg_sq * c.beta2 + c.one_minus_beta2 * grad * grad;
}

// One element of Adam: param, exp_avg, exp_avg_sq (and max_exp_avg_sq when kAmsgrad) in place.
template <bool kAmsgrad>
static inline PLAYBOOK_HOST_DEVICE void adam_element(float& param, float raw_grad, float& exp_avg,
                                                     float& exp_avg_sq, float& max_exp_avg_sq,
                                                     const MomentConsts& c,
                                                     const AdamStepScalars& s) {
  const float grad = decayed_grad(param, raw_grad, c);
  update_moments(exp_avg, exp_avg_sq, grad, c);
  float second = exp_avg_sq;
  if (kAmsgrad) {
    second = max_exp_avg_sq > exp_avg_sq ? max_exp_avg_sq : exp_avg_sq;
    max_exp_avg_sq = second;
  }
  const float denom = sqrtf(second) * s.inv_bc2_sqrt + c.eps;  // NOTE: [Adam denominator]
  param = param + (-s.step_size) * exp_avg / denom;
}

}  // namespace math
}  // namespace playbook
