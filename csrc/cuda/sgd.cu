// Fused SGD step (momentum, dampening, Nesterov) on the GPU (NOTE: [Update formulas] in
// playbook/optim.h). Mirrors csrc/cpu/sgd.cpp and csrc/cpu/kernels/sgd_kernel.cpp.
#include <array>
#include <cstdint>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "playbook/check.h"
#include "playbook/math/sgd.h"
#include "playbook/optim.h"

namespace playbook {
namespace cuda {
namespace detail {
namespace {

// Tensor lists of one launch (NOTE: [Kernel-argument tensor table]). Without momentum only the
// first two; kStepIdx points to the tensor's fp32 step scalar (step 0 => buffer = gradient).
enum SGDListIdx : int {
  kParamIdx = 0,
  kGradIdx = 1,
  kMomentumBufferIdx = 2,
  kStepIdx = 3,
};

struct SGDArgs {
  const float* step_values;  // NOTE: [Step state]
  const float* lr_ptr;       // nullable: lr
  float lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

template <typename T, bool kMomentum>
struct SGDFunctor {
  static constexpr int kDepth = kMomentum ? 4 : 2;
  SGDArgs a;

  // Per thread, set by begin() (math::sgd_consts, as csrc/cpu/sgd.cpp computes them).
  math::SGDConsts c;

  __device__ bool begin() {
    if (a.step_values[kSkipIdx] != 0.f) return false;  // NOTE: [Skipped step]
    const float lr = a.lr_ptr != nullptr ? *a.lr_ptr : a.lr;
    c = math::sgd_consts(lr, a.momentum, a.dampening, a.weight_decay, a.nesterov, a.maximize,
                         a.step_values[kGradFactorIdx]);
    return true;
  }

  __device__ void operator()(const TensorListMeta<kDepth>& meta, int tensor, int chunk) {
    T* p = chunk_ptr<T>(meta, kParamIdx, tensor, chunk);
    const T* g = chunk_ptr<const T>(meta, kGradIdx, tensor, chunk);
    float* buf = nullptr;
    bool first = false;
    if constexpr (kMomentum) {
      buf = chunk_ptr<float>(meta, kMomentumBufferIdx, tensor, chunk);
      first = *static_cast<const float*>(meta.ptrs[kStepIdx][tensor]) == 0.f;
    }
    const int64_t n = chunk_numel(meta.numel[tensor], chunk);
    bool aligned = is_vector_aligned<T>(p) && is_vector_aligned<T>(g);
    if constexpr (kMomentum) aligned = aligned && is_vector_aligned<float>(buf);

    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < n;
         i += static_cast<int64_t>(kBlockSize) * kILP) {
      opmath_t rp[kILP], rg[kILP], rb[kILP];
      load_ilp(rp, p, i, n, aligned);
      load_ilp(rg, g, i, n, aligned);
      if constexpr (kMomentum) {
        if (first) {
#pragma unroll
          for (int j = 0; j < kILP; ++j) rb[j] = 0.f;  // not read: the buffer starts as grad
        } else {
          load_ilp(rb, buf, i, n, aligned);
        }
      }
#pragma unroll
      for (int j = 0; j < kILP; ++j) {
        // The element math: playbook/math/sgd.h, shared with the CPU kernels.
        math::sgd_element<kMomentum>(rp[j], rg[j], rb[j], first, c);
      }
      store_ilp(p, i, n, aligned, rp);
      if constexpr (kMomentum) store_ilp(buf, i, n, aligned, rb);
    }
  }
};

template <typename T, bool kMomentum>
void launch_sgd(const SGDTensors& t, const std::vector<size_t>& idx, const SGDArgs& args, int sms,
                cudaStream_t stream) {
  using Functor = SGDFunctor<T, kMomentum>;
  constexpr int kDepth = Functor::kDepth;
  std::vector<std::array<void*, kDepth>> rows;
  std::vector<int64_t> numels;
  rows.reserve(idx.size());
  numels.reserve(idx.size());
  for (size_t i : idx) {
    std::array<void*, kDepth> row{};
    row[kParamIdx] = t.params[i].data;
    row[kGradIdx] = t.grads[i].data;
    if constexpr (kMomentum) {
      row[kMomentumBufferIdx] = t.momentum_buffers[i];
      row[kStepIdx] = t.steps[i];
    }
    rows.push_back(row);
    numels.push_back(t.params[i].numel);
  }
  Functor functor{};
  functor.a = args;
  multi_tensor_apply<kDepth>(rows, numels, functor, sms, stream);
}

}  // namespace
}  // namespace detail

void sgd_step(const SGDTensors& t, const SGDHyper& h, const float* step_values, int device,
              void* stream) {
  using namespace detail;
  const size_t n = t.params.size();
  const bool has_momentum = h.momentum != 0.f;
  check_param_grad_pairs(t.params, t.grads);
  check_on_device(t.params, device, "param");
  check_state_list(t.steps, n, "step");
  if (has_momentum) check_state_list(t.momentum_buffers, n, "momentum_buffer");
  PLAYBOOK_CHECK(step_values != nullptr, "sgd_step needs the step values buffer");
  if (n == 0) return;

  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  const int sms = sm_count(device);
  SGDArgs args{};
  args.step_values = step_values;
  args.lr_ptr = h.lr_ptr;
  args.lr = h.lr;
  args.momentum = h.momentum;
  args.dampening = h.dampening;
  args.weight_decay = h.weight_decay;
  args.nesterov = h.nesterov;
  args.maximize = h.maximize;

  for_each_dtype_group(t.params, [&](auto tag, const std::vector<size_t>& idx) {
    using T = typename decltype(tag)::type;
    if (has_momentum) {
      launch_sgd<T, true>(t, idx, args, sms, s);
    } else {
      launch_sgd<T, false>(t, idx, args, sms, s);
    }
  });
  // After every update launch has read steps[i] (same stream): steps[i] += 1 unless skipped.
  advance_steps(t.steps, nullptr, StepAdvanceArgs{step_values, 0.0, 0.0}, s);
}

}  // namespace cuda
}  // namespace playbook
