// Multi-tensor apply: one kernel launch processes many tensors, chunk by chunk (modelled on
// ATen's MultiTensorApply.cuh), plus the per-tensor step advance that follows every update.
//
// NOTE: [Kernel-argument tensor table]
// The pointers and sizes of the tensors of one launch travel in a struct passed BY VALUE as a
// kernel argument (TensorListMeta, at most kTableBytes so that table + functor stay within the
// classic 4 KB kernel-parameter limit). There is no host->device copy of a pointer table and no
// device allocation, so every launch is self-contained: it can be captured in a CUDA graph and
// replayed, and the host never waits. Lists longer than one table are split into several
// launches on the same stream. The table is declared __grid_constant__, so the kernel indexes
// it in the constant bank directly instead of copying ~4 KB into each thread's local memory.
//
// Work decomposition: tensor t of a launch is cut into ceil(numel / kChunkSize) chunks;
// chunk_start[] is the prefix sum of those counts (empty tensors are left out: every listed
// tensor has >= 1 chunk). Block b handles chunks b, b + gridDim.x, ... (grid-stride) and finds
// the tensor of a chunk by binary search in chunk_start. What a chunk computes never depends on
// the grid size: the launch configuration changes only which block does it.
//
// A functor has
//   __device__ bool begin();   // once per thread; false => the block exits (skipped step).
//                              // Must give the same answer in every thread of a block.
//   __device__ void operator()(const TensorListMeta<kDepth>& meta, int tensor, int chunk);
// and is trivially copyable (it is a kernel argument too). It may cache per-tensor scalars in
// its members: the kernel works on a per-thread copy.
#pragma once

#include <array>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cuda/common.cuh"

namespace playbook {
namespace cuda {
namespace detail {

constexpr int kMaxKernelParamBytes = 4096;  // portable limit (older drivers / architectures)
constexpr int kFunctorParamBytes = 256;     // reserved for the functor argument
constexpr int kTableBytes = kMaxKernelParamBytes - kFunctorParamBytes;
// Chunks per launch stay well below INT_MAX so `c += gridDim.x` cannot overflow.
constexpr int64_t kMaxChunksPerLaunch = INT_MAX / 2;

template <int kDepth>
struct TensorListMeta {
  static constexpr int kMaxTensors = (kTableBytes - 16) / (kDepth * 8 + 8 + 4);
  void* ptrs[kDepth][kMaxTensors];         // list k, tensor t (chunk 0 of the tensor)
  int64_t numel[kMaxTensors];
  int32_t chunk_start[kMaxTensors + 1];    // prefix sums of chunk counts
  int32_t num_tensors;
};

// Largest t in [0, num_tensors) with chunk_start[t] <= c (chunk_start is strictly increasing).
template <int kDepth>
__device__ __forceinline__ int find_tensor(const TensorListMeta<kDepth>& meta, int c) {
  int lo = 0;
  int hi = meta.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta.chunk_start[mid] <= c) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Elements of chunk `chunk` of a tensor with `numel` elements.
__device__ __forceinline__ int64_t chunk_numel(int64_t numel, int chunk) {
  const int64_t rest = numel - static_cast<int64_t>(chunk) * kChunkSize;
  return rest < kChunkSize ? rest : kChunkSize;
}

// First element of chunk `chunk` in list k.
template <typename T, int kDepth>
__device__ __forceinline__ T* chunk_ptr(const TensorListMeta<kDepth>& meta, int k, int tensor,
                                        int chunk) {
  return static_cast<T*>(meta.ptrs[k][tensor]) + static_cast<int64_t>(chunk) * kChunkSize;
}

template <int kDepth, typename Functor>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_apply_kernel(const __grid_constant__ TensorListMeta<kDepth> meta,
                              const Functor functor) {
  Functor op = functor;
  if (!op.begin()) return;
  const int total_chunks = meta.chunk_start[meta.num_tensors];
  for (int c = static_cast<int>(blockIdx.x); c < total_chunks; c += static_cast<int>(gridDim.x)) {
    const int t = find_tensor(meta, c);
    op(meta, t, c - meta.chunk_start[t]);
  }
}

// Launches `functor` over the tensors described by ptrs[i] (kDepth pointers each: lists in the
// order the functor expects) and numels[i], as many tensors per launch as the table holds.
// The current device must already be the tensors' device (DeviceGuard).
template <int kDepth, typename Functor>
void multi_tensor_apply(const std::vector<std::array<void*, kDepth>>& ptrs,
                        const std::vector<int64_t>& numels, const Functor& functor, int sms,
                        cudaStream_t stream) {
  using Meta = TensorListMeta<kDepth>;
  static_assert(kDepth >= 1, "multi_tensor_apply needs at least one tensor list");
  static_assert(Meta::kMaxTensors >= 8,
                "tensor table too deep: fewer than 8 tensors per launch fit the kernel arguments");
  static_assert(sizeof(Meta) <= kTableBytes,
                "TensorListMeta exceeds its share of the 4 KB kernel-parameter space");
  static_assert(sizeof(Functor) <= kFunctorParamBytes,
                "functor too large: table + functor must fit the 4 KB kernel-parameter space");
  static_assert(std::is_trivially_copyable<Functor>::value,
                "functors are kernel arguments and must be trivially copyable");
  PLAYBOOK_CHECK(ptrs.size() == numels.size(), "multi_tensor_apply: ", ptrs.size(),
                 " pointer rows for ", numels.size(), " tensors");

  Meta meta{};  // zeroed: unused slots are copied too
  const int max_grid = sms * kBlocksPerSM;
  auto launch = [&]() {
    const int chunks = meta.chunk_start[meta.num_tensors];
    const int grid = chunks < max_grid ? chunks : max_grid;
    PLAYBOOK_LAUNCH((multi_tensor_apply_kernel<kDepth, Functor>), grid, kBlockSize, 0, stream)(
        meta, functor);
    PLAYBOOK_CUDA_CHECK(cudaGetLastError());
    meta.num_tensors = 0;
    meta.chunk_start[0] = 0;
  };

  for (size_t i = 0; i < numels.size(); ++i) {
    const int64_t numel = numels[i];
    if (numel == 0) continue;
    const int64_t chunks = (numel + kChunkSize - 1) / kChunkSize;
    PLAYBOOK_CHECK(chunks <= kMaxChunksPerLaunch, "tensor with numel=", numel,
                   " is too large for one launch");
    if (meta.num_tensors == Meta::kMaxTensors ||
        meta.chunk_start[meta.num_tensors] + chunks > kMaxChunksPerLaunch) {
      launch();
    }
    const int slot = meta.num_tensors;
    for (int k = 0; k < kDepth; ++k) meta.ptrs[k][slot] = ptrs[i][k];
    meta.numel[slot] = numel;
    meta.chunk_start[slot + 1] = meta.chunk_start[slot] + static_cast<int32_t>(chunks);
    meta.num_tensors = slot + 1;
  }
  if (meta.num_tensors > 0) launch();
}

// ---------------------------------------------------------------------------------------------
// Step advance: after the update kernels of a step, *steps[i] += 1 and (NAdam)
// *mu_products[i] = fp32(mu_products[i] * mu_t), unless the step is skipped. A separate launch
// on the same stream, so it runs after every update block has read steps[i] (stream order);
// one thread per tensor, pointers in the kernel arguments.
// ---------------------------------------------------------------------------------------------

struct StepAdvanceTable {
  static constexpr int kMaxTensors = (kTableBytes - 16) / 16;
  float* steps[kMaxTensors];
  float* mu_products[kMaxTensors];  // used when kNAdam
  int32_t num_tensors;
};
static_assert(sizeof(StepAdvanceTable) <= kTableBytes,
              "StepAdvanceTable exceeds its share of the 4 KB kernel-parameter space");

struct StepAdvanceArgs {
  const float* step_values;  // NOTE: [Step state]
  double beta1;
  double momentum_decay;
};

constexpr int kStepAdvanceThreads = 256;

template <bool kNAdam>
__global__ void __launch_bounds__(kStepAdvanceThreads)
    advance_steps_kernel(const __grid_constant__ StepAdvanceTable table,
                         const StepAdvanceArgs args) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= table.num_tensors) return;
  if (args.step_values[kSkipIdx] != 0.f) return;  // NOTE: [Skipped step]
  float* const step = table.steps[i];
  const float old_step = *step;
  if (kNAdam) {
    const double t = static_cast<double>(old_step) + 1.0;
    float* const mu_product = table.mu_products[i];
    *mu_product = nadam_next_mu_product(*mu_product, nadam_mu(args.beta1, t, args.momentum_decay));
  }
  *step = old_step + 1.f;
}

// mu_products: null for Adam/SGD, else one pointer per step.
inline void advance_steps(const std::vector<float*>& steps, const std::vector<float*>* mu_products,
                          const StepAdvanceArgs& args, cudaStream_t stream) {
  StepAdvanceTable table{};
  auto launch = [&]() {
    const int blocks = (table.num_tensors + kStepAdvanceThreads - 1) / kStepAdvanceThreads;
    if (mu_products != nullptr) {
      PLAYBOOK_LAUNCH(advance_steps_kernel<true>, blocks, kStepAdvanceThreads, 0, stream)(table, args);
    } else {
      PLAYBOOK_LAUNCH(advance_steps_kernel<false>, blocks, kStepAdvanceThreads, 0, stream)(table, args);
    }
    PLAYBOOK_CUDA_CHECK(cudaGetLastError());
    table.num_tensors = 0;
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    if (table.num_tensors == StepAdvanceTable::kMaxTensors) launch();
    table.steps[table.num_tensors] = steps[i];
    table.mu_products[table.num_tensors] = mu_products != nullptr ? (*mu_products)[i] : nullptr;
    table.num_tensors += 1;
  }
  if (table.num_tensors > 0) launch();
}

}  // namespace detail
}  // namespace cuda
}  // namespace playbook
