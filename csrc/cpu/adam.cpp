// Fused Adam/AdamW step on the CPU (NOTE: [Update formulas] in playbook/optim.h).
#include <cmath>
#include <vector>

#include "cpu/chunks.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/math/adam.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {

void adam_step(const AdamTensors& t, const AdamHyper& h, const float* step_values, int num_threads,
               const ChunkSchedule* schedule) {
  const size_t n = t.params.size();
  check_param_grad_pairs(t.params, t.grads);
  check_state_list(t.exp_avgs, n, "exp_avg");
  check_state_list(t.exp_avg_sqs, n, "exp_avg_sq");
  check_state_list(t.steps, n, "step");
  if (h.amsgrad) check_state_list(t.max_exp_avg_sqs, n, "max_exp_avg_sq");
  PLAYBOOK_CHECK(step_values != nullptr, "adam_step needs the step values buffer");
  if (n == 0 || step_values[kSkipIdx] != 0.f) return;  // NOTE: [Skipped step]

  const double lr = h.lr_ptr != nullptr ? static_cast<double>(*h.lr_ptr) : static_cast<double>(h.lr);
  const math::MomentConsts consts =
      math::moment_consts(lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.decoupled_weight_decay,
                          h.maximize, step_values[kGradFactorIdx]);
  // NOTE: [Scalars per distinct step] The per-tensor scalars depend on the tensor only through
  // its step count, which is almost always the same for every tensor: the two pow() calls run
  // once per distinct step value (the same function of the same inputs: the same bits).
  std::vector<AdamScalars> scalars(n);
  for (size_t i = 0; i < n; ++i) {
    scalars[i].c = consts;
    if (i > 0 && *t.steps[i] == *t.steps[i - 1]) {
      scalars[i].s = scalars[i - 1].s;
    } else {
      scalars[i].s = math::adam_step_scalars(lr, h.beta1, h.beta2, *t.steps[i],
                                             h.variant == Variant::kPlaybook);
    }
    scalars[i].amsgrad = h.amsgrad;
  }

  const KernelTable& k = kernels();
  for_each_chunk(t.params, schedule, num_threads, [&](const Chunk& ch) {
    const size_t i = static_cast<size_t>(ch.tensor);
    k.adam(element_ptr(t.params[i], ch.begin), element_ptr(t.grads[i], ch.begin), t.exp_avgs[i] + ch.begin,
           t.exp_avg_sqs[i] + ch.begin, h.amsgrad ? t.max_exp_avg_sqs[i] + ch.begin : nullptr, ch.size,
           t.params[i].dtype, scalars[i]);
  });
  for (size_t i = 0; i < n; ++i) *t.steps[i] += 1.f;
}

}  // namespace cpu
}  // namespace playbook
