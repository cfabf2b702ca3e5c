// Global gradient norm on the CPU: sum of squares per tensor and in total, then the clip
// decision (NOTE: [Step pipeline], NOTE: [Step state] in playbook/optim.h).
#include <cmath>
#include <vector>

#include "cpu/chunks.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {

void sumsq(const std::vector<TensorDesc>& tensors, double* per_tensor_sumsq, double* total,
           int num_threads) {
  check_tensor_list(tensors, "grad");
  PLAYBOOK_CHECK(total != nullptr, "sumsq needs an output pointer for the total");
  PLAYBOOK_CHECK(tensors.empty() || tensors[0].device == kCPUDevice,
                 "cpu::sumsq got tensors on device ", tensors.empty() ? 0 : tensors[0].device);
  const std::vector<Chunk> chunks = make_chunks(tensors);
  std::vector<double> partial(chunks.size());
  const KernelTable& k = kernels();
  for_each_chunk_index(chunks, total_numel(tensors), num_threads, [&](std::size_t c) {
    const Chunk& ch = chunks[c];
    const TensorDesc& t = tensors[ch.tensor];
    partial[c] = k.sumsq(element_ptr(t, ch.begin), ch.size, t.dtype);
  });
  // Fixed order: chunks of a tensor in order, then tensors in order.
  std::vector<double> per_tensor(tensors.size(), 0.0);
  for (size_t c = 0; c < chunks.size(); ++c) per_tensor[chunks[c].tensor] += partial[c];
  double sum = 0.0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    sum += per_tensor[i];
    if (per_tensor_sumsq != nullptr) per_tensor_sumsq[i] = per_tensor[i];
  }
  *total = sum;
}

void finalize_grad_norm(const double* total_sumsq, const ClipArgs& args, const StepState& state) {
  PLAYBOOK_CHECK(total_sumsq != nullptr && state.values != nullptr && state.counters != nullptr,
                 "finalize_grad_norm needs the total, values and counters buffers");
  PLAYBOOK_CHECK(state.history_size == 0 || state.history != nullptr,
                 "finalize_grad_norm: history_size=", state.history_size, " but no history buffer");
  const double scale = args.grad_scale != nullptr ? static_cast<double>(*args.grad_scale) : 1.0;
  const float norm = static_cast<float>(std::sqrt(*total_sumsq) / scale);
  // NOTE: [GradScaler semantics] A step is skipped when the scaler already found an inf, or when
  // the norm is non-finite and skip_nonfinite is set. found_inf is set exactly when the step is
  // skipped (so the scaler backs off only for steps that did not happen). A non-finite norm is
  // never a clip: an applied non-finite step uses the unclipped grads (factor 1 / grad_scale).
  const bool nonfinite = !std::isfinite(norm);
  const bool found = args.found_inf != nullptr && *args.found_inf != 0.f;
  const bool skip = found || (args.skip_nonfinite && nonfinite);
  if (args.found_inf != nullptr && skip) *args.found_inf = 1.f;
  const bool clipping = !nonfinite && args.max_norm > 0.f && std::isfinite(args.max_norm) && norm > args.max_norm;
  const float clip = clipping ? args.max_norm / norm : 1.f;
  state.values[kNormIdx] = norm;
  state.values[kGradFactorIdx] = static_cast<float>(static_cast<double>(clip) / scale);
  state.values[kSkipIdx] = skip ? 1.f : 0.f;
  if (state.history_size > 0) {
    state.history[state.counters[kStepsSeenIdx] % state.history_size] = norm;
  }
  state.counters[kStepsSeenIdx] += 1;
  if (skip) {
    state.counters[kSkippedIdx] += 1;
  } else if (clipping) {
    state.counters[kClippedIdx] += 1;
  }
}

}  // namespace cpu
}  // namespace playbook
