// Global gradient norm on the GPU: sum of squares per tensor and in total, then the clip decision
// (NOTE: [Step pipeline], NOTE: [Step state] in playbook/optim.h). Mirrors csrc/cpu/norm.cpp.
//
// NOTE: [Deterministic two-kernel reduction]
// No floating-point atomics anywhere, so the sum of squares has the same bits on every run,
// whatever the grid size, the SM count or the order in which blocks are scheduled:
//   1. sumsq_chunk (multi_tensor_apply, one launch family per storage dtype): every chunk of
//      kChunkSize elements is reduced by ONE block. Thread j takes the kILP-element groups
//      j, j + kBlockSize, ... of the chunk in order, widening each element to double and adding
//      its square (exact in double, as on the CPU: NOTE: [Deterministic sum of squares]); the
//      vector and scalar load paths visit elements in the same order, so alignment does not
//      matter. The kBlockSize per-thread sums are combined by a fixed tree (warp shuffles with
//      offsets 16..1, then warp 0 over the per-warp sums). The chunk's double is written to
//      scratch[global chunk index], chunks numbered in tensor order then chunk order.
//   2. segment_sum (second kernel, same stream): one block of kReduceThreads per tensor adds the
//      tensor's chunk partials -- thread j takes partials j, j + kReduceThreads, ... in chunk
//      order, then the same fixed tree -- into scratch[num_chunks + i] and per_tensor_sumsq[i].
//      A last one-block launch of the same kernel adds the per-tensor sums, in the same fixed
//      order over tensor indices, into *total.
// Every reduction shape is a compile-time constant (kChunkSize, kBlockSize, kReduceThreads), so
// the result is a pure function of the input values. The grouping differs from the CPU's
// (16384-element chunks, 16 lanes), so the two paths agree to rounding, not bit for bit.
// Scratch: one double per chunk plus one per tensor (sumsq_scratch_bytes); the chunk -> scratch
// offsets are computed on the host and travel in the kernel arguments, never copied.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "playbook/check.h"
#include "playbook/optim.h"

#ifndef PLAYBOOK_CUDA_ARCHS
#define PLAYBOOK_CUDA_ARCHS "unknown"  // CMake defines it from CMAKE_CUDA_ARCHITECTURES
#endif

namespace playbook {
namespace cuda {

bool compiled() { return true; }
const char* archs() { return PLAYBOOK_CUDA_ARCHS; }

namespace detail {
namespace {

constexpr int kReduceThreads = 256;

// Sum of v over the kThreads threads of the block, in a fixed tree order; the result is valid in
// thread 0. Every thread of the block must call it (it synchronizes).
template <int kThreads>
__device__ __forceinline__ double block_sum(double v) {
  static_assert(kThreads % kWarpSize == 0 && kThreads / kWarpSize <= kWarpSize,
                "block_sum needs whole warps and at most 32 of them");
  constexpr int kWarps = kThreads / kWarpSize;
  __shared__ double warp_sums[kWarps];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double r = 0.0;
  if (warp == 0) {
    r = lane < kWarps ? warp_sums[lane] : 0.0;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
      r += __shfl_down_sync(0xffffffffu, r, offset);
    }
  }
  __syncthreads();  // warp_sums is reused by the block's next call
  return r;
}

// Lists: 0 = grad (T), 1 = this tensor's first slot in the chunk-partials scratch (double).
enum SumsqListIdx : int { kSumsqGradIdx = 0, kSumsqPartialIdx = 1, kSumsqDepth = 2 };

template <typename T>
struct SumsqFunctor {
  __device__ bool begin() { return true; }

  __device__ void operator()(const TensorListMeta<kSumsqDepth>& meta, int tensor, int chunk) {
    const T* x = chunk_ptr<const T>(meta, kSumsqGradIdx, tensor, chunk);
    const int64_t n = chunk_numel(meta.numel[tensor], chunk);
    const bool aligned = is_vector_aligned<T>(x);
    double acc = 0.0;
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < n;
         i += static_cast<int64_t>(kBlockSize) * kILP) {
      opmath_t v[kILP];
      load_ilp(v, x, i, n, aligned);
#pragma unroll
      for (int j = 0; j < kILP; ++j) {
        const double d = static_cast<double>(v[j]);
        acc += d * d;  // exact product: fused or not, the same bits
      }
    }
    const double chunk_sum = block_sum<kBlockSize>(acc);
    if (threadIdx.x == 0) static_cast<double*>(meta.ptrs[kSumsqPartialIdx][tensor])[chunk] = chunk_sum;
  }
};

// Segments [begin[s], begin[s] + count[s]) of src, summed into out[first + s] (and out2[first + s]
// when out2 is not null). One block per segment.
struct SegmentTable {
  static constexpr int kMaxSegments = (kMaxKernelParamBytes - 64) / 16;
  int64_t begin[kMaxSegments];
  int64_t count[kMaxSegments];
  const double* src;
  double* out;
  double* out2;
  int64_t first;
  int32_t num_segments;
};
static_assert(sizeof(SegmentTable) <= kMaxKernelParamBytes,
              "SegmentTable must fit the 4 KB kernel-parameter space");

__global__ void __launch_bounds__(kReduceThreads)
    segment_sum_kernel(const __grid_constant__ SegmentTable table) {
  const int s = static_cast<int>(blockIdx.x);
  const double* src = table.src + table.begin[s];
  const int64_t n = table.count[s];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kReduceThreads) acc += src[i];
  const double sum = block_sum<kReduceThreads>(acc);
  if (threadIdx.x == 0) {
    table.out[table.first + s] = sum;
    if (table.out2 != nullptr) table.out2[table.first + s] = sum;
  }
}

void launch_segment_sum(const SegmentTable& table, cudaStream_t stream) {
  PLAYBOOK_LAUNCH(segment_sum_kernel, table.num_segments, kReduceThreads, 0, stream)(table);
  PLAYBOOK_CUDA_CHECK(cudaGetLastError());
}

struct FinalizeArgs {
  const double* total_sumsq;
  const float* grad_scale;
  float* found_inf;
  float* values;
  int64_t* counters;
  float* history;
  int64_t history_size;
  float max_norm;
  bool skip_nonfinite;
};

// Same statements as cpu::finalize_grad_norm; sqrt and '/' are correctly rounded on both.
__global__ void __launch_bounds__(1) finalize_grad_norm_kernel(const FinalizeArgs a) {
  const double scale = a.grad_scale != nullptr ? static_cast<double>(*a.grad_scale) : 1.0;
  const float norm = static_cast<float>(sqrt(*a.total_sumsq) / scale);
  const bool nonfinite = !isfinite(norm);
  const bool found = a.found_inf != nullptr && *a.found_inf != 0.f;
  const bool skip = (a.skip_nonfinite && nonfinite) || found;
  if (a.found_inf != nullptr && nonfinite) *a.found_inf = 1.f;
  const bool clipping = a.max_norm > 0.f && isfinite(a.max_norm) && norm > a.max_norm;
  const float clip = clipping ? a.max_norm / norm : 1.f;
  a.values[kNormIdx] = norm;
  a.values[kGradFactorIdx] = static_cast<float>(static_cast<double>(clip) / scale);
  a.values[kSkipIdx] = skip ? 1.f : 0.f;
  if (a.history_size > 0) {
    a.history[a.counters[kStepsSeenIdx] % a.history_size] = norm;
  }
  a.counters[kStepsSeenIdx] += 1;
  if (skip) {
    a.counters[kSkippedIdx] += 1;
  } else if (clipping) {
    a.counters[kClippedIdx] += 1;
  }
}

int64_t num_chunks(int64_t numel) { return (numel + kChunkSize - 1) / kChunkSize; }

}  // namespace
}  // namespace detail

int64_t sumsq_scratch_bytes(const std::vector<TensorDesc>& tensors) {
  check_tensor_list(tensors, "grad");
  int64_t slots = static_cast<int64_t>(tensors.size());  // per-tensor sums
  for (const TensorDesc& t : tensors) slots += detail::num_chunks(t.numel);
  return slots * static_cast<int64_t>(sizeof(double));
}

void sumsq(const std::vector<TensorDesc>& tensors, double* per_tensor_sumsq, double* total,
           void* scratch, int64_t scratch_bytes, int device, void* stream) {
  using namespace detail;
  check_tensor_list(tensors, "grad");
  check_on_device(tensors, device, "grad");
  PLAYBOOK_CHECK(total != nullptr, "sumsq needs an output pointer for the total");
  const int64_t needed = sumsq_scratch_bytes(tensors);
  PLAYBOOK_CHECK(scratch_bytes >= needed, "sumsq got scratch_bytes=", scratch_bytes,
                 ", but these ", tensors.size(), " tensors need ", needed,
                 " (cuda::sumsq_scratch_bytes)");
  PLAYBOOK_CHECK(needed == 0 || scratch != nullptr, "sumsq got a null scratch pointer");
  PLAYBOOK_CHECK(reinterpret_cast<uintptr_t>(scratch) % alignof(double) == 0,
                 "sumsq scratch must be 8-byte aligned, got address ", scratch);

  DeviceGuard guard(device);
  const cudaStream_t s = as_stream(stream);
  if (tensors.empty()) {
    // Nothing to launch, but the total of no tensors is 0 (as on the CPU).
    PLAYBOOK_CUDA_CHECK(cudaMemsetAsync(total, 0, sizeof(double), s));
    return;
  }

  // Global chunk numbering: tensor order, then chunk order.
  const size_t n = tensors.size();
  double* partials = static_cast<double*>(scratch);
  std::vector<int64_t> chunk_offset(n + 1, 0);
  for (size_t i = 0; i < n; ++i) chunk_offset[i + 1] = chunk_offset[i] + num_chunks(tensors[i].numel);
  double* per_tensor = partials + chunk_offset[n];

  // 1. Chunk partials, one launch family per storage dtype.
  const int sms = sm_count(device);
  for_each_dtype_group(tensors, [&](auto tag, const std::vector<size_t>& idx) {
    using T = typename decltype(tag)::type;
    std::vector<std::array<void*, kSumsqDepth>> rows;
    std::vector<int64_t> numels;
    rows.reserve(idx.size());
    numels.reserve(idx.size());
    for (size_t i : idx) {
      rows.push_back({tensors[i].data, static_cast<void*>(partials + chunk_offset[i])});
      numels.push_back(tensors[i].numel);
    }
    multi_tensor_apply<kSumsqDepth>(rows, numels, SumsqFunctor<T>{}, sms, s);
  });

  // 2. Per-tensor sums (tensors without elements get 0: an empty segment).
  SegmentTable table{};
  table.src = partials;
  table.out = per_tensor;
  table.out2 = per_tensor_sumsq;
  for (size_t i = 0; i < n; ++i) {
    if (table.num_segments == SegmentTable::kMaxSegments) {
      launch_segment_sum(table, s);
      table.first += table.num_segments;
      table.num_segments = 0;
    }
    table.begin[table.num_segments] = chunk_offset[i];
    table.count[table.num_segments] = chunk_offset[i + 1] - chunk_offset[i];
    table.num_segments += 1;
  }
  launch_segment_sum(table, s);

  // 3. The total over tensors.
  SegmentTable total_table{};
  total_table.src = per_tensor;
  total_table.out = total;
  total_table.out2 = nullptr;
  total_table.first = 0;
  total_table.begin[0] = 0;
  total_table.count[0] = static_cast<int64_t>(n);
  total_table.num_segments = 1;
  launch_segment_sum(total_table, s);
}

void finalize_grad_norm(const double* total_sumsq, const ClipArgs& args, const StepState& state,
                        int device, void* stream) {
  using namespace detail;
  PLAYBOOK_CHECK(total_sumsq != nullptr && state.values != nullptr && state.counters != nullptr,
                 "finalize_grad_norm needs the total, values and counters buffers");
  PLAYBOOK_CHECK(state.history_size >= 0, "finalize_grad_norm: history_size=", state.history_size,
                 ", expected >= 0");
  PLAYBOOK_CHECK(state.history_size == 0 || state.history != nullptr,
                 "finalize_grad_norm: history_size=", state.history_size, " but no history buffer");
  DeviceGuard guard(device);
  FinalizeArgs a{};
  a.total_sumsq = total_sumsq;
  a.grad_scale = args.grad_scale;
  a.found_inf = args.found_inf;
  a.values = state.values;
  a.counters = state.counters;
  a.history = state.history;
  a.history_size = state.history_size;
  a.max_norm = args.max_norm;
  a.skip_nonfinite = args.skip_nonfinite;
  PLAYBOOK_LAUNCH(finalize_grad_norm_kernel, 1, 1, 0, as_stream(stream))(a);
  PLAYBOOK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace playbook
