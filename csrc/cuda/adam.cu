// Fused Adam/AdamW step on the GPU (NOTE: [Update formulas] in playbook/optim.h). Mirrors
// csrc/cpu/adam.cpp (per-tensor scalars) and csrc/cpu/kernels/adam_kernel.cpp (per element).
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "playbook/check.h"
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
  float lr, beta1, beta2, eps, weight_decay;
  bool decoupled_weight_decay, maximize, playbook_variant;
};

template <typename T, bool kAmsgrad>
struct AdamFunctor {
  static constexpr int kDepth = kAmsgrad ? 6 : 5;
  AdamArgs a;

  // Per thread, set by begin(): the scalars csrc/cpu/adam.cpp computes per tensor that do not
  // depend on the step.
  double lr;
  float grad_factor, l2_weight_decay, decay, one_minus_beta1, one_minus_beta2;
  bool lerp_low;
  // Per-tensor scalars, cached by the step value they were computed for (all tensors of an
  // optimizer usually share it, so pow runs about once per thread).
  bool cached;
  float cached_step, step_size, bc2_sqrt;

  __device__ bool begin() {
    if (a.step_values[kSkipIdx] != 0.f) return false;  // NOTE: [Skipped step]
    lr = a.lr_ptr != nullptr ? static_cast<double>(*a.lr_ptr) : static_cast<double>(a.lr);
    grad_factor = a.step_values[kGradFactorIdx] * (a.maximize ? -1.f : 1.f);
    l2_weight_decay = a.decoupled_weight_decay ? 0.f : a.weight_decay;
    decay = a.decoupled_weight_decay ? static_cast<float>(1.0 - lr * a.weight_decay) : 1.f;
    one_minus_beta1 = static_cast<float>(1.0 - static_cast<double>(a.beta1));
    one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(a.beta2));
    lerp_low = (1.0 - static_cast<double>(a.beta1)) < 0.5;
    cached = false;
    return true;
  }

  // t = step + 1; bc1 = 1 - b1^t, bc2 = 1 - b2^t in double.
  __device__ void set_step(float step_value) {
    if (cached && __float_as_uint(step_value) == __float_as_uint(cached_step)) return;
    const double step = static_cast<double>(step_value) + 1.0;
    const double bc1 = 1.0 - pow(static_cast<double>(a.beta1), step);
    const double bc2 = 1.0 - pow(static_cast<double>(a.beta2), step);
    if (a.playbook_variant) {
      step_size = static_cast<float>(lr * sqrt(bc2) / bc1);
      bc2_sqrt = 1.f;
    } else {
      step_size = static_cast<float>(lr / bc1);
      bc2_sqrt = static_cast<float>(sqrt(bc2));
    }
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

    const float wd = l2_weight_decay, b1 = a.beta1, b2 = a.beta2, eps = a.eps;
    const float omb1 = one_minus_beta1, omb2 = one_minus_beta2;
    const bool l2 = wd != 0.f;
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
        opmath_t param = rp[j];
        opmath_t grad = rg[j] * grad_factor;
        if (l2) grad = grad + wd * param;
        param = param * decay;
        const opmath_t exp_avg = lerp(rm[j], grad, omb1, b1, lerp_low);
        const opmath_t exp_avg_sq = rv[j] * b2 + omb2 * grad * grad;
        rm[j] = exp_avg;
        rv[j] = exp_avg_sq;
        opmath_t second = exp_avg_sq;
        if constexpr (kAmsgrad) {
          second = rvmax[j] > exp_avg_sq ? rvmax[j] : exp_avg_sq;
          rvmax[j] = second;
        }
        const opmath_t denom = sqrtf(second) / bc2_sqrt + eps;
        param = param + (-step_size) * exp_avg / denom;
        rp[j] = param;
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
