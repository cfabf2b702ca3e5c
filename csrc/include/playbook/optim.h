// playbook/optim.h: fused optimizer steps with the global-norm clip computed on the device.
//
// NOTE: [Step pipeline]
// One optimizer step is three calls, none of which reads anything back to the host:
//   1. sumsq(grads)            per-tensor sums of squares (double) and their total, in a fixed
//                              order (chunk order, then tensor order) so the result does not
//                              depend on the thread count or the launch configuration.
//   2. finalize_grad_norm(...) one thread: norm = sqrt(total) / grad_scale, the clip
//                              coefficient, the skip flag, the history ring and the counters, all
//                              written into StepState (see NOTE: [Step state]).
//   3. <family>_step(...)      the update; every element reads StepState::values to get the factor
//                              applied to its raw gradient and whether the step is skipped.
// With several devices, step 1 runs per device, the Python layer adds the totals on the primary
// device (a CUDA device when there is one; copies towards it, no host read of a device total:
// NOTE: [Primary device] in python/playbook/optim/_base.py), step 2 runs there and its `values` are copied
// to the other devices before step 3.
//
// NOTE: [Step state]
// values   (float32, kNumStepValues): what the update kernels read.
//   [kNormIdx]        unclipped global L2 norm of the unscaled gradients of this step
//   [kGradFactorIdx]  factor applied to every raw gradient element: clip_coef / grad_scale,
//                     clip_coef = max_norm / norm if norm > max_norm (norm finite, max_norm > 0),
//                     else 1
//   [kSkipIdx]        1 if this step is skipped (non-finite norm with skip_nonfinite, or the
//                     GradScaler found_inf flag set), else 0
// counters (int64, kNumCounters): [kStepsSeenIdx] steps whose norm was recorded,
//   [kSkippedIdx] steps skipped, [kClippedIdx] steps clipped (finite norm > max_norm, not skipped)
// history  (float32, history_size): ring buffer; the norm of step k (0-based, counting every
//   step seen) is at history[k % history_size].
//
// NOTE: [Skipped step]
// A skipped step leaves params, every moment buffer, step counts and mu_products bit-identical:
// the update kernels return before writing when values[kSkipIdx] != 0.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "playbook/tensor.h"

namespace playbook {

enum StepValueIdx : int { kNormIdx = 0, kGradFactorIdx = 1, kSkipIdx = 2, kNumStepValues = 3 };
enum StepCounterIdx : int { kStepsSeenIdx = 0, kSkippedIdx = 1, kClippedIdx = 2, kNumCounters = 3 };

struct StepState {
  float* values = nullptr;     // kNumStepValues floats
  int64_t* counters = nullptr; // kNumCounters int64
  float* history = nullptr;    // history_size floats (may be null when history_size == 0)
  int64_t history_size = 0;
};

struct ClipArgs {
  float max_norm = 0.f;              // <= 0 or +inf: never clip (the norm is still computed)
  bool skip_nonfinite = true;        // non-finite norm => skip the step
  const float* grad_scale = nullptr; // GradScaler scale the grads carry (nullable: 1)
  float* found_inf = nullptr;        // GradScaler flag (nullable): read (non-zero => skip) and set
                                     // to 1 when the step is skipped (NOTE: [GradScaler
                                     // semantics] in csrc/cpu/norm.cpp)
};

enum class Variant : int32_t { kTorch = 0, kPlaybook = 1 };

// Per-parameter tensors. params[i] and grads[i] share dtype and numel; state is fp32, numel each.
struct AdamTensors {
  std::vector<TensorDesc> params;
  std::vector<TensorDesc> grads;
  std::vector<float*> exp_avgs;
  std::vector<float*> exp_avg_sqs;
  std::vector<float*> max_exp_avg_sqs;  // empty unless amsgrad
  std::vector<float*> steps;            // fp32 scalar per param; incremented unless skipped
};

struct AdamHyper {
  float lr = 1e-3f;
  const float* lr_ptr = nullptr;  // capturable: read lr from device memory instead of `lr`
  // Betas in double, as the user gave them: 1 - beta and the bias corrections are computed in
  // double and rounded to fp32 once (as torch does), not from fp32-rounded betas.
  double beta1 = 0.9;
  double beta2 = 0.999;
  float eps = 1e-8f;
  float weight_decay = 0.f;
  bool decoupled_weight_decay = false;  // AdamW: p *= 1 - lr*wd before the update
  bool amsgrad = false;
  bool maximize = false;
  Variant variant = Variant::kTorch;
};

struct NAdamTensors {
  std::vector<TensorDesc> params;
  std::vector<TensorDesc> grads;
  std::vector<float*> exp_avgs;
  std::vector<float*> exp_avg_sqs;
  std::vector<float*> mu_products;  // fp32 scalar per param (torch variant); updated unless skipped
  std::vector<float*> steps;
};

struct NAdamHyper {
  float lr = 2e-3f;
  const float* lr_ptr = nullptr;
  double beta1 = 0.9;  // double: see AdamHyper
  double beta2 = 0.999;
  float eps = 1e-8f;
  float weight_decay = 0.f;
  float momentum_decay = 4e-3f;
  bool decoupled_weight_decay = false;
  bool maximize = false;
  Variant variant = Variant::kTorch;
};

struct SGDTensors {
  std::vector<TensorDesc> params;
  std::vector<TensorDesc> grads;
  std::vector<float*> momentum_buffers;  // empty when momentum == 0
  std::vector<float*> steps;             // fp32 scalar per param; step 0 => buffer = grad
};

struct SGDHyper {
  float lr = 1e-3f;
  const float* lr_ptr = nullptr;
  float momentum = 0.f;
  float dampening = 0.f;
  float weight_decay = 0.f;
  bool nesterov = false;
  bool maximize = false;
};

// NOTE: [Update formulas] (per element, fp32 math; g = raw grad * values[kGradFactorIdx],
// t = step + 1 read from steps[i]; bc1 = 1 - beta1^t, bc2 = 1 - beta2^t computed in double)
//  g = maximize ? -g : g;  L2 decay: g += wd * p;  decoupled decay: p *= 1 - lr * wd
//  Adam  m = m + (1-b1)(g - m); v = b2 v + (1-b2) g^2; (amsgrad: vmax = max(vmax, v), use vmax)
//        torch:    p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)   (1 / sqrt(bc2) once per
//                  tensor, multiplying sqrt(v): NOTE: [Adam denominator] in playbook/math/adam.h)
//        playbook: p -= (lr * sqrt(bc2) / bc1) * m / (sqrt(v) + eps)
//  NAdam torch:    mu = b1 (1 - 0.5 * 0.96^(t md)), mu_next = b1 (1 - 0.5 * 0.96^((t+1) md)),
//                  mu_product *= mu; m, v as Adam; denom = sqrt(v / bc2) + eps;
//                  p -= lr (1-mu) / (1-mu_product) * g / denom
//                     + lr mu_next / (1 - mu_product mu_next) * m / denom
//        playbook: p -= lr * sqrt(bc2) / bc1 * (b1 m + (1-b1) g) / (sqrt(v) + eps)
//  SGD   (momentum != 0) buf = step == 0 ? g : momentum buf + (1 - dampening) g;
//        g = nesterov ? g + momentum buf : buf;  p -= lr g

namespace cpu {

// Which SIMD level the CPU kernels use on this machine: "avx512", "avx2" or "portable".
const char* simd_level();
// Force a level (tests and benchmarks); returns false if this CPU or build lacks it.
bool set_simd_level(const char* level);

// How a tensor list is cut into chunks and work items (csrc/cpu/chunks.h). A plan builds the one of
// its params once and passes it to the calls below (NOTE: [Cached chunk schedule]); a schedule
// built for other numels, or none, makes the call build its own.
struct ChunkSchedule;
std::shared_ptr<const ChunkSchedule> chunk_schedule(const std::vector<TensorDesc>& tensors);

void sumsq(const std::vector<TensorDesc>& tensors, double* per_tensor_sumsq, double* total,
           int num_threads, const ChunkSchedule* schedule = nullptr);
// sumsq of tensors whose data pointers are not known yet (NOTE: [Streamed sum of squares] in
// csrc/cpu/norm.cpp): produce(i, &data) runs on the calling thread for i = 0, 1, ... in order and
// returns false to stop; the other threads reduce each tensor as soon as its pointer is out. On a
// stop nothing is written and false is returned; an exception thrown by produce is rethrown after
// the threads have finished. Results are bit-identical to sumsq's.
bool sumsq_streamed(const std::vector<TensorDesc>& tensors, const std::function<bool(size_t, void**)>& produce,
                    double* per_tensor_sumsq, double* total, int num_threads,
                    const ChunkSchedule* schedule = nullptr);
void finalize_grad_norm(const double* total_sumsq, const ClipArgs& args, const StepState& state);
void adam_step(const AdamTensors& t, const AdamHyper& h, const float* step_values, int num_threads,
               const ChunkSchedule* schedule = nullptr);
void nadam_step(const NAdamTensors& t, const NAdamHyper& h, const float* step_values, int num_threads,
                const ChunkSchedule* schedule = nullptr);
void sgd_step(const SGDTensors& t, const SGDHyper& h, const float* step_values, int num_threads,
              const ChunkSchedule* schedule = nullptr);

}  // namespace cpu

namespace cuda {

// True when the CUDA kernels were compiled into this build.
bool compiled();
// "80-real;90-real;90-virtual" style list, empty when not compiled.
const char* archs();

// Scratch (bytes) that sumsq needs for these tensors; allocated by the caller (torch).
int64_t sumsq_scratch_bytes(const std::vector<TensorDesc>& tensors);
// All pointers are device memory of `device`; stream is a cudaStream_t.
void sumsq(const std::vector<TensorDesc>& tensors, double* per_tensor_sumsq, double* total,
           void* scratch, int64_t scratch_bytes, int device, void* stream);
void finalize_grad_norm(const double* total_sumsq, const ClipArgs& args, const StepState& state,
                        int device, void* stream);
void adam_step(const AdamTensors& t, const AdamHyper& h, const float* step_values, int device,
               void* stream);
void nadam_step(const NAdamTensors& t, const NAdamHyper& h, const float* step_values, int device,
                void* stream);
void sgd_step(const SGDTensors& t, const SGDHyper& h, const float* step_values, int device,
              void* stream);

}  // namespace cuda

// Argument checks shared by the CPU and CUDA entry points (csrc/common.cpp): same lengths,
// matching dtype/numel between params and grads, non-null pointers, a single device.
void check_tensor_list(const std::vector<TensorDesc>& tensors, const char* what, bool check_data = true);
void check_param_grad_pairs(const std::vector<TensorDesc>& params, const std::vector<TensorDesc>& grads);
void check_state_list(const std::vector<float*>& state, size_t n, const char* what);

}  // namespace playbook
