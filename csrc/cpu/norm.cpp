// Global gradient norm on the CPU: sum of squares per tensor and in total, then the clip
// decision (NOTE: [Step pipeline], NOTE: [Step state] in playbook/optim.h).
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <vector>

#include "cpu/chunks.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {

namespace {

void check_sumsq_args(const std::vector<TensorDesc>& tensors, const double* total) {
  PLAYBOOK_CHECK(total != nullptr, "sumsq needs an output pointer for the total");
  PLAYBOOK_CHECK(tensors.empty() || tensors[0].device == kCPUDevice,
                 "cpu::sumsq got tensors on device ", tensors.empty() ? 0 : tensors[0].device);
}

// Fixed order: chunks of a tensor in order, then tensors in order.
void combine(const std::vector<Chunk>& chunks, const std::vector<double>& partial, size_t num_tensors,
             double* per_tensor_sumsq, double* total) {
  std::vector<double> per_tensor(num_tensors, 0.0);
  for (size_t c = 0; c < chunks.size(); ++c) per_tensor[chunks[c].tensor] += partial[c];
  double sum = 0.0;
  for (size_t i = 0; i < num_tensors; ++i) {
    sum += per_tensor[i];
    if (per_tensor_sumsq != nullptr) per_tensor_sumsq[i] = per_tensor[i];
  }
  *total = sum;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

void sumsq(const std::vector<TensorDesc>& tensors, double* per_tensor_sumsq, double* total,
           int num_threads, const ChunkSchedule* schedule) {
  check_tensor_list(tensors, "grad");
  check_sumsq_args(tensors, total);
  ChunkSchedule fresh;
  const ChunkSchedule& s = schedule_for(tensors, schedule, &fresh);
  const std::vector<Chunk>& chunks = s.chunks;
  std::vector<double> partial(chunks.size());
  const KernelTable& k = kernels();
  for_each_chunk_index(s, num_threads, [&](std::size_t c) {
    const Chunk& ch = chunks[c];
    const TensorDesc& t = tensors[ch.tensor];
    partial[c] = k.sumsq(element_ptr(t, ch.begin), ch.size, t.dtype);
  });
  combine(chunks, partial, tensors.size(), per_tensor_sumsq, total);
}

// NOTE: [Streamed sum of squares]
// An optimizer step first collects every grad's data pointer from Python, one torch call after
// another on the calling thread (~50 us for 400 tensors), and only then reduces them. Here the
// reduction runs alongside the collection (NOTE: [Producer thread] in parallel.cpp): the calling
// thread publishes the pointers collected so far (`ready` = i + 1, release) whenever they complete
// a work item, and the other threads take the packed work items (NOTE: [Packed work items]) in order, each waiting until the
// last tensor of its item is out. The chunks, the per-chunk kernel and the combining order are
// those of sumsq, so the results are the same bits. A stop (or an exception) in produce publishes
// everything at once with `stop` set: the waiting threads then skip their items and nothing is
// written.
bool sumsq_streamed(const std::vector<TensorDesc>& tensors, const std::function<bool(size_t, void**)>& produce,
                    double* per_tensor_sumsq, double* total, int num_threads, const ChunkSchedule* schedule) {
  check_tensor_list(tensors, "grad", /*check_data=*/false);  // the pointers come from produce
  check_sumsq_args(tensors, total);
  std::vector<TensorDesc> descs = tensors;
  ChunkSchedule fresh;
  const ChunkSchedule& s = schedule_for(descs, schedule, &fresh);
  const std::vector<Chunk>& chunks = s.chunks;
  const std::vector<ChunkRange>& items = s.items;
  std::vector<double> partial(chunks.size());
  const KernelTable& k = kernels();
  std::atomic<size_t> ready{0};
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  const size_t n = descs.size();
  // Tensor counts at which a work item becomes ready: `ready` is stored only there (a store per
  // tensor would move its cache line between the cores ~400 times a step while a worker polls it).
  std::vector<size_t> publish_at(items.size());
  for (size_t it = 0; it < items.size(); ++it) publish_at[it] = static_cast<size_t>(chunks[items[it].last - 1].tensor) + 1;
  auto produce_all = [&]() {
    try {
      size_t next_publish = 0;
      for (size_t i = 0; i < n; ++i) {
        void* data = nullptr;
        if (!produce(i, &data) || (data == nullptr && descs[i].numel > 0)) {
          stop.store(true, std::memory_order_relaxed);
          break;
        }
        descs[i].data = data;
        if (next_publish < publish_at.size() && publish_at[next_publish] == i + 1) {
          ready.store(i + 1, std::memory_order_release);
          while (next_publish < publish_at.size() && publish_at[next_publish] <= i + 1) ++next_publish;
        }
      }
    } catch (...) {
      error = std::current_exception();
      stop.store(true, std::memory_order_relaxed);
    }
    ready.store(n, std::memory_order_release);  // never leave a worker waiting
  };
  auto work = [&]() {
    for (;;) {
      const size_t it = next.fetch_add(1, std::memory_order_relaxed);
      if (it >= items.size()) return;
      const size_t needed = static_cast<size_t>(chunks[items[it].last - 1].tensor) + 1;
      while (ready.load(std::memory_order_acquire) < needed) cpu_relax();
      if (stop.load(std::memory_order_relaxed)) continue;  // ready == n was stored after stop
      for (size_t c = items[it].first; c < items[it].last; ++c) {
        const Chunk& ch = chunks[c];
        const TensorDesc& t = descs[ch.tensor];
        partial[c] = k.sumsq(element_ptr(t, ch.begin), ch.size, t.dtype);
      }
    }
  };
  run_with_producer(threads_for(s.total, num_threads), produce_all, work);
  if (error) std::rethrow_exception(error);
  if (stop.load(std::memory_order_relaxed)) return false;
  combine(chunks, partial, n, per_tensor_sumsq, total);
  return true;
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
