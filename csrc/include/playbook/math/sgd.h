// playbook/math/sgd.h: the SGD update (momentum, dampening, Nesterov), defined once for the CPU
// chunk kernels and the CUDA functors (see playbook/math/adam.h for the rules).
#pragma once

#include "playbook/host_device.h"

namespace playbook {
namespace math {

struct SGDConsts {
  float grad_factor;          // clip / grad_scale, negated when maximize
  float weight_decay, lr, momentum, one_minus_dampening;
  bool nesterov;
};

static inline PLAYBOOK_HOST_DEVICE SGDConsts sgd_consts(float lr, float momentum, double dampening,
                                                        float weight_decay, bool nesterov,
                                                        bool maximize, float clip_factor) {
  SGDConsts c;
  c.grad_factor = clip_factor * (maximize ? -1.f : 1.f);
  c.weight_decay = weight_decay;
  c.lr = lr;
  c.momentum = momentum;
  c.one_minus_dampening = static_cast<float>(1.0 - dampening);
  c.nesterov = nesterov;
  return c;
}

// One element. kMomentum: buf is the momentum buffer (first: it starts as the gradient).
template <bool kMomentum>
static inline PLAYBOOK_HOST_DEVICE void sgd_element(float& param, float raw_grad, float& buf,
                                                    bool first, const SGDConsts& c) {
  float grad = raw_grad * c.grad_factor;
  if (c.weight_decay != 0.f) grad = grad + c.weight_decay * param;
  if (kMomentum) {
    const float b = first ? grad : buf * c.momentum + c.one_minus_dampening * grad;
    buf = b;
    grad = c.nesterov ? grad + c.momentum * b : b;
  }
  param = param + (-c.lr) * grad;
}

}  // namespace math
}  // namespace playbook
