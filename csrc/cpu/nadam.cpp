// Fused NAdam step on the CPU (NOTE: [Update formulas] in playbook/optim.h).
#include <cmath>
#include <vector>

#include "cpu/chunks.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {

void nadam_step(const NAdamTensors& t, const NAdamHyper& h, const float* step_values, int num_threads) {
  const size_t n = t.params.size();
  check_param_grad_pairs(t.params, t.grads);
  check_state_list(t.exp_avgs, n, "exp_avg");
  check_state_list(t.exp_avg_sqs, n, "exp_avg_sq");
  check_state_list(t.mu_products, n, "mu_product");
  check_state_list(t.steps, n, "step");
  PLAYBOOK_CHECK(step_values != nullptr, "nadam_step needs the step values buffer");
  if (n == 0 || step_values[kSkipIdx] != 0.f) return;  // NOTE: [Skipped step]

  const double lr = h.lr_ptr != nullptr ? static_cast<double>(*h.lr_ptr) : static_cast<double>(h.lr);
  const double b1 = h.beta1, b2 = h.beta2;
  const float factor = step_values[kGradFactorIdx] * (h.maximize ? -1.f : 1.f);
  std::vector<NAdamScalars> scalars(n);
  std::vector<double> mus(n);
  for (size_t i = 0; i < n; ++i) {
    const double step = static_cast<double>(*t.steps[i]) + 1.0;
    const double bc1 = 1.0 - std::pow(b1, step);
    const double bc2 = 1.0 - std::pow(b2, step);
    const double mu = b1 * (1.0 - 0.5 * std::pow(0.96, step * h.momentum_decay));
    const double mu_next = b1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * h.momentum_decay));
    // torch keeps mu_product as a float32 tensor: round the product the same way.
    const double mu_product = static_cast<double>(static_cast<float>(*t.mu_products[i] * mu));
    mus[i] = mu;
    NAdamScalars& s = scalars[i];
    s.grad_factor = factor;
    s.weight_decay = h.decoupled_weight_decay ? 0.f : h.weight_decay;
    s.decay = h.decoupled_weight_decay ? static_cast<float>(1.0 - lr * h.weight_decay) : 1.f;
    s.beta1 = h.beta1;
    s.one_minus_beta1 = static_cast<float>(1.0 - b1);
    s.beta2 = h.beta2;
    s.one_minus_beta2 = static_cast<float>(1.0 - b2);
    s.eps = h.eps;
    s.lerp_low = (1.0 - b1) < 0.5;
    s.playbook = h.variant == Variant::kPlaybook;
    s.bc2 = static_cast<float>(bc2);
    s.coef_grad = static_cast<float>(lr * (1.0 - mu) / (1.0 - mu_product));
    s.coef_avg = static_cast<float>(lr * mu_next / (1.0 - mu_product * mu_next));
    s.step_size = static_cast<float>(lr * std::sqrt(bc2) / bc1);
  }

  const KernelTable& k = kernels();
  for_each_chunk(t.params, num_threads, [&](const Chunk& ch) {
    const size_t i = static_cast<size_t>(ch.tensor);
    k.nadam(element_ptr(t.params[i], ch.begin), element_ptr(t.grads[i], ch.begin), t.exp_avgs[i] + ch.begin,
            t.exp_avg_sqs[i] + ch.begin, ch.size, t.params[i].dtype, scalars[i]);
  });
  for (size_t i = 0; i < n; ++i) {
    *t.steps[i] += 1.f;
    *t.mu_products[i] = static_cast<float>(*t.mu_products[i] * mus[i]);
  }
}

}  // namespace cpu
}  // namespace playbook
