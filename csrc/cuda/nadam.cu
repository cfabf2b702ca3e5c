// Fused NAdam step on the GPU (NOTE: [Update formulas] in playbook/optim.h). Mirrors
// csrc/cpu/nadam.cpp (per-tensor scalars) and csrc/cpu/kernels/nadam_kernel.cpp (per element).
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "playbook/check.h"
#include "playbook/math/nadam.h"
#include "playbook/optim.h"

namespace playbook {
namespace cuda {
namespace detail {
namespace {

// Tensor lists of one launch (NOTE: [Kernel-argument tensor table]). kStepIdx and kMuProductIdx
// point to the tensor's fp32 scalars, not to element lists.
enum NAdamListIdx : int {
  kParamIdx = 0,
  kGradIdx = 1,
  kExpAvgIdx = 2,
  kExpAvgSqIdx = 3,
  kStepIdx = 4,
  kMuProductIdx = 5,
  kNAdamDepth = 6,
};

struct NAdamArgs {
  const float* step_values;  // NOTE: [Step state]
  const float* lr_ptr;       // nullable: lr
  double beta1, beta2;       // as the user gave them (1 - beta in double: playbook/math/adam.h)
  float lr, eps, weight_decay, momentum_decay;
  bool decoupled_weight_decay, maximize, playbook_variant;
};

template <typename T>
struct NAdamFunctor {
  NAdamArgs a;

  // Per thread, set by begin(): the step-independent scalars (math::moment_consts).
  double lr;
  math::MomentConsts c;
  // Per-tensor scalars, cached by the (step, mu_product) they were computed for.
  bool cached;
  float cached_step, cached_mu_product;
  math::NAdamStepScalars s;

  __device__ bool begin() {
    if (a.step_values[kSkipIdx] != 0.f) return false;  // NOTE: [Skipped step]
    lr = a.lr_ptr != nullptr ? static_cast<double>(*a.lr_ptr) : static_cast<double>(a.lr);
    c = math::moment_consts(lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.decoupled_weight_decay,
                            a.maximize, a.step_values[kGradFactorIdx]);
    cached = false;
    return true;
  }

  // t = step + 1; mu_t, mu_{t+1}; the new mu_product = fp32(mu_product * mu_t), used here and
  // stored by advance_steps (same function, same bits).
  __device__ void set_scalars(float step_value, float mu_product_value) {
    if (cached && __float_as_uint(step_value) == __float_as_uint(cached_step) &&
        __float_as_uint(mu_product_value) == __float_as_uint(cached_mu_product)) {
      return;
    }
    s = math::nadam_step_scalars(lr, a.beta1, a.beta2, a.momentum_decay, step_value,
                                 mu_product_value);
    cached_step = step_value;
    cached_mu_product = mu_product_value;
    cached = true;
  }

  __device__ void operator()(const TensorListMeta<kNAdamDepth>& meta, int tensor, int chunk) {
    set_scalars(*static_cast<const float*>(meta.ptrs[kStepIdx][tensor]),
                *static_cast<const float*>(meta.ptrs[kMuProductIdx][tensor]));
    // The variant is fixed for the launch: branch once per chunk, not per element.
    if (a.playbook_variant) {
      update_chunk<true>(meta, tensor, chunk);
    } else {
      update_chunk<false>(meta, tensor, chunk);
    }
  }

  template <bool kPlaybook>
  __device__ void update_chunk(const TensorListMeta<kNAdamDepth>& meta, int tensor, int chunk) {
    T* p = chunk_ptr<T>(meta, kParamIdx, tensor, chunk);
    const T* g = chunk_ptr<const T>(meta, kGradIdx, tensor, chunk);
    float* m = chunk_ptr<float>(meta, kExpAvgIdx, tensor, chunk);
    float* v = chunk_ptr<float>(meta, kExpAvgSqIdx, tensor, chunk);
    const int64_t n = chunk_numel(meta.numel[tensor], chunk);
    const bool aligned = is_vector_aligned<T>(p) && is_vector_aligned<T>(g) &&
                         is_vector_aligned<float>(m) && is_vector_aligned<float>(v);
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < n;
         i += static_cast<int64_t>(kBlockSize) * kILP) {
      opmath_t rp[kILP], rg[kILP], rm[kILP], rv[kILP];
      load_ilp(rp, p, i, n, aligned);
      load_ilp(rg, g, i, n, aligned);
      load_ilp(rm, m, i, n, aligned);
      load_ilp(rv, v, i, n, aligned);
#pragma unroll
      for (int j = 0; j < kILP; ++j) {
        // The element math: playbook/math/nadam.h, shared with the CPU kernels.
        math::nadam_element<kPlaybook>(rp[j], rg[j], rm[j], rv[j], c, s);
      }
      store_ilp(p, i, n, aligned, rp);
      store_ilp(m, i, n, aligned, rm);
      store_ilp(v, i, n, aligned, rv);
    }
  }
};

template <typename T>
void launch_nadam(const NAdamTensors& t, const std::vector<size_t>& idx, const NAdamArgs& args,
                  int sms, cudaStream_t stream) {
  std::vector<std::array<void*, kNAdamDepth>> rows;
  std::vector<int64_t> numels;
  rows.reserve(idx.size());
  numels.reserve(idx.size());
  for (size_t i : idx) {
    std::array<void*, kNAdamDepth> row{};
    row[kParamIdx] = t.params[i].data;
    row[kGradIdx] = t.grads[i].data;
    row[kExpAvgIdx] = t.exp_avgs[i];
    row[kExpAvgSqIdx] = t.exp_avg_sqs[i];
    row[kStepIdx] = t.steps[i];
    row[kMuProductIdx] = t.mu_products[i];
    rows.push_back(row);
    numels.push_back(t.params[i].numel);
  }
  NAdamFunctor<T> functor{};
  functor.a = args;
  multi_tensor_apply<kNAdamDepth>(rows, numels, functor, sms, stream);
}

}  // namespace
}  // namespace detail

void nadam_step(const NAdamTensors& t, const NAdamHyper& h, const float* step_values, int device,
                void* stream) {
  using namespace detail;
  const size_t n = t.params.size();
  check_param_grad_pairs(t.params, t.grads);
  check_on_device(t.params, device, "param");
  check_state_list(t.exp_avgs, n, "exp_avg");
  check_state_list(t.exp_avg_sqs, n, "exp_avg_sq");
  check_state_list(t.mu_products, n, "mu_product");
  check_state_list(t.steps, n, "step");
  PLAYBOOK_CHECK(step_values != nullptr, "nadam_step needs the step values buffer");
  if (n == 0) return;

  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  const int sms = sm_count(device);
  NAdamArgs args{};
  args.step_values = step_values;
  args.lr_ptr = h.lr_ptr;
  args.lr = h.lr;
  args.beta1 = h.beta1;
  args.beta2 = h.beta2;
  args.eps = h.eps;
  args.weight_decay = h.weight_decay;
  args.momentum_decay = h.momentum_decay;
  args.decoupled_weight_decay = h.decoupled_weight_decay;
  args.maximize = h.maximize;
  args.playbook_variant = h.variant == Variant::kPlaybook;

  for_each_dtype_group(t.params, [&](auto tag, const std::vector<size_t>& idx) {
    using T = typename decltype(tag)::type;
    launch_nadam<T>(t, idx, args, sms, s);
  });
  // After every update launch has read steps[i] and mu_products[i] (same stream): advance both
  // unless skipped; mu_products advance in both variants, as on the CPU.
  advance_steps(t.steps, &t.mu_products,
                StepAdvanceArgs{step_values, h.beta1, static_cast<double>(h.momentum_decay)},
                s);
}

}  // namespace cuda
}  // namespace playbook
