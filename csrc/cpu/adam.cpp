// Fused Adam/AdamW step on the CPU (NOTE: [Update formulas] in playbook/optim.h).
#include <cmath>
#include <vector>

#include "cpu/chunks.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {

void adam_step(const AdamTensors& t, const AdamHyper& h, const float* step_values, int num_threads) {
  const size_t n = t.params.size();
  check_param_grad_pairs(t.params, t.grads);
  check_state_list(t.exp_avgs, n, "exp_avg");
  check_state_list(t.exp_avg_sqs, n, "exp_avg_sq");
  check_state_list(t.steps, n, "step");
  if (h.amsgrad) check_state_list(t.max_exp_avg_sqs, n, "max_exp_avg_sq");
  PLAYBOOK_CHECK(step_values != nullptr, "adam_step needs the step values buffer");
  if (n == 0 || step_values[kSkipIdx] != 0.f) return;  // NOTE: [Skipped step]

  const double lr = h.lr_ptr != nullptr ? static_cast<double>(*h.lr_ptr) : static_cast<double>(h.lr);
  const float factor = step_values[kGradFactorIdx] * (h.maximize ? -1.f : 1.f);
  std::vector<AdamScalars> scalars(n);
  for (size_t i = 0; i < n; ++i) {
    const double step = static_cast<double>(*t.steps[i]) + 1.0;
    const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), step);
    const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), step);
    AdamScalars& s = scalars[i];
    s.grad_factor = factor;
    s.weight_decay = h.decoupled_weight_decay ? 0.f : h.weight_decay;
    s.decay = h.decoupled_weight_decay ? static_cast<float>(1.0 - lr * h.weight_decay) : 1.f;
    s.beta1 = h.beta1;
    s.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
    s.beta2 = h.beta2;
    s.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
    s.eps = h.eps;
    if (h.variant == Variant::kTorch) {
      s.step_size = static_cast<float>(lr / bc1);
      s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    } else {
      s.step_size = static_cast<float>(lr * std::sqrt(bc2) / bc1);
      s.bc2_sqrt = 1.f;
    }
    s.lerp_low = (1.0 - h.beta1) < 0.5;
    s.amsgrad = h.amsgrad;
  }

  const KernelTable& k = kernels();
  for_each_chunk(t.params, num_threads, [&](const Chunk& ch) {
    const size_t i = static_cast<size_t>(ch.tensor);
    k.adam(element_ptr(t.params[i], ch.begin), element_ptr(t.grads[i], ch.begin), t.exp_avgs[i] + ch.begin,
           t.exp_avg_sqs[i] + ch.begin, h.amsgrad ? t.max_exp_avg_sqs[i] + ch.begin : nullptr, ch.size,
           t.params[i].dtype, scalars[i]);
  });
  for (size_t i = 0; i < n; ++i) *t.steps[i] += 1.f;
}

}  // namespace cpu
}  // namespace playbook
