// Fused SGD step (momentum, dampening, Nesterov) on the CPU (NOTE: [Update formulas]).
#include <vector>

#include "cpu/chunks.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/math/sgd.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {

void sgd_step(const SGDTensors& t, const SGDHyper& h, const float* step_values, int num_threads,
              const ChunkSchedule* schedule) {
  const size_t n = t.params.size();
  const bool has_momentum = h.momentum != 0.f;
  check_param_grad_pairs(t.params, t.grads);
  check_state_list(t.steps, n, "step");
  if (has_momentum) check_state_list(t.momentum_buffers, n, "momentum_buffer");
  PLAYBOOK_CHECK(step_values != nullptr, "sgd_step needs the step values buffer");
  if (n == 0 || step_values[kSkipIdx] != 0.f) return;  // NOTE: [Skipped step]

  const float lr = h.lr_ptr != nullptr ? *h.lr_ptr : h.lr;
  const math::SGDConsts consts = math::sgd_consts(lr, h.momentum, h.dampening, h.weight_decay,
                                                  h.nesterov, h.maximize, step_values[kGradFactorIdx]);
  std::vector<SGDScalars> scalars(n);
  for (size_t i = 0; i < n; ++i) {
    scalars[i].c = consts;
    scalars[i].first = *t.steps[i] == 0.f;
    scalars[i].has_momentum = has_momentum;
  }

  const KernelTable& k = kernels();
  for_each_chunk(t.params, schedule, num_threads, [&](const Chunk& ch) {
    const size_t i = static_cast<size_t>(ch.tensor);
    k.sgd(element_ptr(t.params[i], ch.begin), element_ptr(t.grads[i], ch.begin),
          has_momentum ? t.momentum_buffers[i] + ch.begin : nullptr, ch.size, t.params[i].dtype, scalars[i]);
  });
  for (size_t i = 0; i < n; ++i) *t.steps[i] += 1.f;
}

}  // namespace cpu
}  // namespace playbook
