// Fused Adam/AdamW step on the GPU (NOTE: [Update formulas] in playbook/optim.h). Mirrors
// csrc/cpu/adam.cpp (per-tensor scalars) and csrc/cpu/kernels/adam_kernel.cpp (per element).
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "playbook/check.h"
#include "playbook/math/adam.h"
#include "playbook/optim.h"

namespace playbook {
namespace cuda {
namespace detail {
namespace {

// Tensor lists of one launch (NOTE: [Kernel-argument tensor table]). kStepIdx is a pointer to
// the tensor's fp32 step scalar, not an element list.
enum AdamListIdx : int {
  kParamIdx = 0,
  kGradIdx = 1,
  kExpAvgIdx = 2,
  kExpAvgSqIdx = 3,
  kStepIdx = 4,
  kMaxExpAvgSqIdx = 5,  // amsgrad only
};

struct AdamArgs {
  const float* step_values;  // NOTE: [Step state]
  const float* lr_ptr;       // nullable: lr
  double beta1, beta2;       // as the user gave them (1 - beta in double: playbook/math/adam.h)
  float lr, eps, weight_decay;
  bool decoupled_weight_decay, maximize, playbook_variant;
};

template <typename T, bool kAmsgrad>
struct AdamFunctor {
  static constexpr int kDepth = kAmsgrad ? 6 : 5;
  AdamArgs a;

  // Per thread, set by begin(): the step-independent scalars (math::moment_consts, as
  // csrc/cpu/adam.cpp computes them; lr and the clip factor are read from device memory).
  double lr;
  math::MomentConsts c;
  // Per-tensor scalars, cached by the step value they were computed for (all tensors of an
  // optimizer usually share it, so pow runs about once per thread).
  bool cached;
  float cached_step;
  math::AdamStepScalars s;

  __device__ bool begin() {
    if (a.step_values[kSkipIdx] != 0.f) return false;  // NOTE: [Skipped step]
    lr = a.lr_ptr != nullptr ? static_cast<double>(*a.lr_ptr) : static_cast<double>(a.lr);
    c = math::moment_consts(lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.decoupled_weight_decay,
                            a.maximize, a.step_values[kGradFactorIdx]);
    cached = false;
    return true;
  }

  __device__ void set_step(float step_value) {
    if (cached && __float_as_uint(step_value) == __float_as_uint(cached_step)) return;
    s = math::adam_step_scalars(lr, a.beta1, a.beta2, step_value, a.playbook_variant);
    cached_step = step_value;
    cached = true;
  }

  __device__ void operator()(const TensorListMeta<kDepth>& meta, int tensor, int chunk) {
    set_step(*static_cast<const float*>(meta.ptrs[kStepIdx][tensor]));
    T* p = chunk_ptr<T>(meta, kParamIdx, tensor, chunk);
    const T* g = chunk_ptr<const T>(meta, kGradIdx, tensor, chunk);
    float* m = chunk_ptr<float>(meta, kExpAvgIdx, tensor, chunk);
    float* v = chunk_ptr<float>(meta, kExpAvgSqIdx, tensor, chunk);
    float* vmax = nullptr;
    if constexpr (kAmsgrad) vmax = chunk_ptr<float>(meta, kMaxExpAvgSqIdx, tensor, chunk);
    const int64_t n = chunk_numel(meta.numel[tensor], chunk);
    bool aligned = is_vector_aligned<T>(p) && is_vector_aligned<T>(g) &&
                   is_vector_aligned<float>(m) && is_vector_aligned<float>(v);
    if constexpr (kAmsgrad) aligned = aligned && is_vector_aligned<float>(vmax);

    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < n;
         i += static_cast<int64_t>(kBlockSize) * kILP) {
      opmath_t rp[kILP], rg[kILP], rm[kILP], rv[kILP], rvmax[kILP];
      load_ilp(rp, p, i, n, aligned);
      load_ilp(rg, g, i, n, aligned);
      load_ilp(rm, m, i, n, aligned);
      load_ilp(rv, v, i, n, aligned);
      if constexpr (kAmsgrad) load_ilp(rvmax, vmax, i, n, aligned);
#pragma unroll
      for (int j = 0; j < kILP; ++j) {
        // The element math: playbook/math/adam.h, shared with the CPU kernels.
        math::adam_element<kAmsgrad>(rp[j], rg[j], rm[j], rv[j], rvmax[j], c, s);
      }
      store_ilp(p, i, n, aligned, rp);
      store_ilp(m, i, n, aligned, rm);
      store_ilp(v, i, n, aligned, rv);
      if constexpr (kAmsgrad) store_ilp(vmax, i, n, aligned, rvmax);
    }
  }
};

template <typename T, bool kAmsgrad>
void launch_adam(const AdamTensors& t, const std::vector<size_t>& idx, const AdamArgs& args,
                 int sms, cudaStream_t stream) {
  using Functor = AdamFunctor<T, kAmsgrad>;
  constexpr int kDepth = Functor::kDepth;
  std::vector<std::array<void*, kDepth>> rows;
  std::vector<int64_t> numels;
  rows.reserve(idx.size());
  numels.reserve(idx.size());
  for (size_t i : idx) {
    std::array<void*, kDepth> row{};
    row[kParamIdx] = t.params[i].data;
    row[kGradIdx] = t.grads[i].data;
    row[kExpAvgIdx] = t.exp_avgs[i];
    row[kExpAvgSqIdx] = t.exp_avg_sqs[i];
    row[kStepIdx] = t.steps[i];
    if constexpr (kAmsgrad) row[kMaxExpAvgSqIdx] = t.max_exp_avg_sqs[i];
    rows.push_back(row);
    numels.push_back(t.params[i].numel);
  }
  Functor functor{};
  functor.a = args;
  multi_tensor_apply<kDepth>(rows, numels, functor, sms, stream);
}

}  // namespace
}  // namespace detail

void adam_step(const AdamTensors& t, const AdamHyper& h, const float* step_values, int device,
               void* stream) {
  using namespace detail;
  const size_t n = t.params.size();
  check_param_grad_pairs(t.params, t.grads);
  check_on_device(t.params, device, "param");
  check_state_list(t.exp_avgs, n, "exp_avg");
  check_state_list(t.exp_avg_sqs, n, "exp_avg_sq");
  check_state_list(t.steps, n, "step");
  if (h.amsgrad) check_state_list(t.max_exp_avg_sqs, n, "max_exp_avg_sq");
  PLAYBOOK_CHECK(step_values != nullptr, "adam_step needs the step values buffer");
  if (n == 0) return;

  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  const int sms = sm_count(device);
  AdamArgs args{};
  args.step_values = step_values;
  args.lr_ptr = h.lr_ptr;
  args.lr = h.lr;
  args.beta1 = h.beta1;
  args.beta2 = h.beta2;
  args.eps = h.eps;
  args.weight_decay = h.weight_decay;
  args.decoupled_weight_decay = h.decoupled_weight_decay;
  args.maximize = h.maximize;
  args.playbook_variant = h.variant == Variant::kPlaybook;

  for_each_dtype_group(t.params, [&](auto tag, const std::vector<size_t>& idx) {
    using T = typename decltype(tag)::type;
    if (h.amsgrad) {
      launch_adam<T, true>(t, idx, args, sms, s);
    } else {
      launch_adam<T, false>(t, idx, args, sms, s);
    }
  });
  // After every update launch has read steps[i] (same stream): steps[i] += 1 unless skipped.
  advance_steps(t.steps, nullptr, StepAdvanceArgs{step_values, 0.0, 0.0}, s);
}

}  // namespace cuda
}  // namespace playbook
