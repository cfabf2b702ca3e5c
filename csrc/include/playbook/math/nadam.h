// playbook/math/nadam.h: the NAdam update (torch and playbook variants), defined once for the CPU
// chunk kernels, the CUDA functors and the step advance (see playbook/math/adam.h for the rules).
#pragma once

#include "playbook/math/adam.h"

namespace playbook {
namespace math {

// NAdam's momentum schedule: mu_t = b1 (1 - 0.5 * 0.96^(t md)).
static inline PLAYBOOK_HOST_DEVICE double nadam_mu(double beta1, double t, double momentum_decay) {
  return beta1 * (1.0 - 0.5 * pow(0.96, t * momentum_decay));
}
// torch keeps mu_product in a float32 tensor: the product is rounded to fp32.
static inline PLAYBOOK_HOST_DEVICE float nadam_next_mu_product(float mu_product, double mu) {
  return static_cast<float>(static_cast<double>(mu_product) * mu);
}

// Per-tensor scalars of a NAdam step.
struct NAdamStepScalars {
  // torch: p -= coef_grad * g / denom + coef_avg * m / denom, denom = sqrt(v / bc2) + eps
  float bc2, coef_grad, coef_avg;
  // playbook: p -= step_size * (b1 m + (1-b1) g) / (sqrt(v) + eps)
  float step_size;
  double mu;  // mu_t, for the step advance
};

static inline PLAYBOOK_HOST_DEVICE NAdamStepScalars nadam_step_scalars(double lr, double beta1,
                                                                       double beta2,
                                                                       double momentum_decay,
                                                                       float step_value,
                                                                       float mu_product_value) {
  const double step = static_cast<double>(step_value) + 1.0;
  const double bc1 = 1.0 - pow(beta1, step);
  const double bc2 = 1.0 - pow(beta2, step);
  const double mu = nadam_mu(beta1, step, momentum_decay);
  const double mu_next = nadam_mu(beta1, step + 1.0, momentum_decay);
  const double mu_product = static_cast<double>(nadam_next_mu_product(mu_product_value, mu));
  NAdamStepScalars s;
  s.bc2 = static_cast<float>(bc2);
  s.coef_grad = static_cast<float>(lr * (1.0 - mu) / (1.0 - mu_product));
  s.coef_avg = static_cast<float>(lr * mu_next / (1.0 - mu_product * mu_next));
  s.step_size = static_cast<float>(lr * sqrt(bc2) / bc1);
  s.mu = mu;
  return s;
}

// One element of NAdam: param, exp_avg, exp_avg_sq in place.
template <bool kPlaybook>
static inline PLAYBOOK_HOST_DEVICE void nadam_element(float& param, float raw_grad, float& exp_avg,
                                                      float& exp_avg_sq, const MomentConsts& c,
                                                      const NAdamStepScalars& s) {
  const float grad = decayed_grad(param, raw_grad, c);
  update_moments(exp_avg, exp_avg_sq, grad, c);
  if (kPlaybook) {
    const float denom = sqrtf(exp_avg_sq) + c.eps;
    param = param + (-s.step_size) * (c.beta1 * exp_avg + c.one_minus_beta1 * grad) / denom;
  } else {
    const float denom = sqrtf(exp_avg_sq / s.bc2) + c.eps;
    param = param + (-s.coef_grad) * grad / denom;
    param = param + (-s.coef_avg) * exp_avg / denom;
  }
}

}  // namespace math
}  // namespace playbook
