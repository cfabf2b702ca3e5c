// Ghost batch norm on CUDA (NOTE: [Ghost batch norm layout] and NOTE: [Ghost batch norm
// numerics] in playbook/ghost_bn.h; formulas in playbook/ghost_bn_math.h, shared with the CPU).
//
// NOTE: [Ghost batch norm CUDA kernels]
// Reductions (statistics, backward sums) are one block per (ghost batch, channel) for the
// contiguous layout and one block per (ghost batch, 32-channel tile) for channels-last, where a
// warp's lanes read 32 consecutive channels of a row (coalesced). Each thread accumulates a fixed
// subset of the elements in a fixed order and the block combines the threads in a fixed tree, so
// results never depend on the block schedule; there are no atomics. Elementwise passes are
// grid-stride loops. Everything runs on the caller's stream (torch's current stream) with no host
// synchronization, and scratch ([3, G, C] floats for the backward coefficients) comes from the
// caller (torch's allocator): the whole step is graph-capturable. Given the same statistics, the
// elementwise results, the finalize step and the parameter grads are bit-identical to the CPU
// path (same formulas, no contraction: --fmad=false); the sums agree to rounding: double sums for
// fp32 input, and for 16-bit input float partials over runs of kFloatRun = 16 of a thread's
// elements added in double (ThreadSums; NOTE: [Ghost batch norm numerics]), grouped by thread
// rather than by the CPU's lanes, so the emulator test checks both paths' sums against a
// long-double reference within the float-block bound, not bit for bit.
#include <cmath>
#include <type_traits>

#include "cuda/common.cuh"
#include "playbook/ghost_bn.h"

namespace playbook {
namespace cuda {

#include "playbook/ghost_bn_math.h"

namespace {

using detail::from_opmath;
using detail::to_opmath;

constexpr int kReduceThreads = 256;  // contiguous reductions: threads per (ghost batch, channel)
constexpr int kTileC = 32;           // channels-last reductions: channels per block (one warp row)
constexpr int kTileRows = 8;         // channels-last reductions: rows in flight per block
constexpr int kApplyThreads = 256;
constexpr int kFinalizeThreads = 128;

static_assert(kReduceThreads == kTileC * kTileRows, "both reductions use the same shared buffers");
constexpr int kFloatRun = 16;        // 16-bit input: elements per float partial of a thread

// The running sums of one thread. fp32 input: double, as on the CPU. 16-bit input: float partials
// over kFloatRun of the thread's elements (in its order), each added to the double sums, and the
// last partial at done() (the CPU's NOTE: [Ghost batch norm float blocks], with this kernel's own
// grouping).
template <typename T>
struct ThreadSums {
  static constexpr bool kFloat = !std::is_same<T, float>::value;
  double a = 0.0, b = 0.0;
  float fa = 0.f, fb = 0.f;
  int k = 0;
  __device__ __forceinline__ void flush() {
    a += static_cast<double>(fa);
    b += static_cast<double>(fb);
    fa = fb = 0.f;
    k = 0;
  }
  __device__ __forceinline__ void stats(float x, double shift) {
    if constexpr (kFloat) {
      gbn_stats_add(x, static_cast<float>(shift), &fa, &fb);  // shift: a 16-bit value, exact in float
      if (++k == kFloatRun) flush();
    } else {
      gbn_stats_add(static_cast<double>(x), shift, &a, &b);
    }
  }
  __device__ __forceinline__ void backward(float dy, float x, float hi, float lo) {
    if constexpr (kFloat) {
      gbn_backward_add(dy, x, hi, lo, &fa, &fb);
      if (++k == kFloatRun) flush();
    } else {
      gbn_backward_add(static_cast<double>(dy), static_cast<double>(x), static_cast<double>(hi),
                       static_cast<double>(lo), &a, &b);
    }
  }
  __device__ __forceinline__ void done() {
    if constexpr (kFloat) flush();
  }
};

// Fixed-order tree over the block's kReduceThreads partial pairs (a, b) in shared memory.
__device__ void block_sum2(double* sa, double* sb, int tid) {
  for (int width = kReduceThreads / 2; width > 0; width /= 2) {
    __syncthreads();
    if (tid < width) {
      sa[tid] += sa[tid + width];
      sb[tid] += sb[tid + width];
    }
  }
  __syncthreads();
}

// ---- statistics -------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    stats_planes_kernel(const T* x, GhostBNShape sh, double* mean, double* m2) {
  __shared__ double sa[kReduceThreads];
  __shared__ double sb[kReduceThreads];
  const int64_t i = blockIdx.x;  // g * C + c
  const int64_t g = i / sh.c;
  const int64_t c = i % sh.c;
  const int tid = threadIdx.x;
  const int64_t first = (g * sh.vbs * sh.c + c) * sh.s;
  const int64_t planes = sh.ghost_samples(g);
  const double shift = static_cast<double>(to_opmath(x[first]));
  ThreadSums<T> t;
  for (int64_t p = 0; p < planes; ++p) {
    const T* plane = x + first + p * sh.c * sh.s;
    for (int64_t e = tid; e < sh.s; e += kReduceThreads) t.stats(to_opmath(plane[e]), shift);
  }
  t.done();
  sa[tid] = t.a;
  sb[tid] = t.b;
  block_sum2(sa, sb, tid);
  if (tid == 0) gbn_moments(shift, sa[0], sb[0], static_cast<double>(planes * sh.s), &mean[i], &m2[i]);
}

// Channels-last tile reduction (both kernels below): thread (lane, row) holds a partial pair of
// channel column `lane`; the thread of row 0 adds the kTileRows pairs of its column in row order.
// Returns true on the threads that hold a column total. Every thread of the block calls it.
__device__ inline bool tile_column_sum(double a, double b, double* sa, double* sb, double* ta, double* tb) {
  const int tid = threadIdx.x;
  sa[tid] = a;
  sb[tid] = b;
  __syncthreads();
  if (tid >= kTileC) return false;
  *ta = sa[tid];
  *tb = sb[tid];
  for (int k = 1; k < kTileRows; ++k) {
    *ta += sa[k * kTileC + tid];
    *tb += sb[k * kTileC + tid];
  }
  return true;
}

// Channels-last: block = (g, tile of kTileC channels); thread (lane, row) sums rows row,
// row + kTileRows, ... of channel tile * kTileC + lane.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    stats_rows_kernel(const T* x, GhostBNShape sh, int64_t tiles, double* mean, double* m2) {
  __shared__ double sa[kReduceThreads];
  __shared__ double sb[kReduceThreads];
  const int64_t g = blockIdx.x / tiles;
  const int64_t c = (blockIdx.x % tiles) * kTileC + threadIdx.x % kTileC;
  const int row = threadIdx.x / kTileC;
  const int64_t rows = sh.ghost_samples(g) * sh.s;
  const T* base = x + g * sh.vbs * sh.s * sh.c;
  ThreadSums<T> t;
  double shift = 0.0;
  if (c < sh.c) {
    shift = static_cast<double>(to_opmath(base[c]));
    for (int64_t r = row; r < rows; r += kTileRows) t.stats(to_opmath(base[r * sh.c + c]), shift);
  }
  t.done();
  double a, b;
  if (tile_column_sum(t.a, t.b, sa, sb, &a, &b) && c < sh.c) {
    gbn_moments(shift, a, b, static_cast<double>(rows), &mean[g * sh.c + c], &m2[g * sh.c + c]);
  }
}

// ---- finalize ---------------------------------------------------------------------------------

__global__ void finalize_kernel(int64_t G, int64_t C, const double* mean, const double* m2, int64_t count,
                                int64_t count_last, double eps, double momentum, int64_t tracked,
                                float* running_mean, float* running_var, float* save_mean, float* save_invstd) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t i = g * C + c;
    const double m = static_cast<double>(g + 1 < G ? count : count_last);
    gbn_save(mean[i], m2[i], m, eps, &save_mean[i], &save_mean[G * C + i], &save_invstd[i]);
  }
  if (running_mean == nullptr) return;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t i = g * C + c;
    const double m = static_cast<double>(g + 1 < G ? count : count_last);
    const double f = gbn_ema_factor(momentum, tracked, g);
    running_mean[c] = gbn_ema(running_mean[c], mean[i], f);
    running_var[c] = gbn_ema(running_var[c], gbn_unbiased(m2[i], m), f);
  }
}

// ---- elementwise ------------------------------------------------------------------------------

// (ghost batch, channel) index of element e.
__device__ __forceinline__ int64_t gc_index(const GhostBNShape& sh, int64_t e) {
  const int64_t c = sh.channels_last ? e % sh.c : (e / sh.s) % sh.c;
  const int64_t n = e / (sh.s * sh.c);
  return (n / sh.vbs) * sh.c + c;
}

template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    apply_kernel(const T* x, T* y, GhostBNShape sh, const float* save_mean, const float* save_invstd,
                 const float* weight, const float* bias) {
  const int64_t numel = sh.n * sh.c * sh.s;
  const int64_t gc_total = sh.num_ghost() * sh.c;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += stride) {
    const int64_t i = gc_index(sh, e);
    const int64_t c = i % sh.c;
    const float alpha = weight != nullptr ? save_invstd[i] * weight[c] : save_invstd[i];
    const float beta = bias != nullptr ? bias[c] : 0.f;
    y[e] = from_opmath<T>(gbn_normalize(to_opmath(x[e]), save_mean[i], save_mean[gc_total + i], alpha, beta));
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    bwd_planes_kernel(const T* dy, const T* x, GhostBNShape sh, const float* save_mean, double* sdy,
                      double* sdyx) {
  __shared__ double sa[kReduceThreads];
  __shared__ double sb[kReduceThreads];
  const int64_t i = blockIdx.x;
  const int64_t g = i / sh.c;
  const int64_t c = i % sh.c;
  const int tid = threadIdx.x;
  const int64_t first = (g * sh.vbs * sh.c + c) * sh.s;
  const int64_t planes = sh.ghost_samples(g);
  const float hi = save_mean[i];
  const float lo = save_mean[sh.num_ghost() * sh.c + i];
  ThreadSums<T> t;
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t off = first + p * sh.c * sh.s;
    for (int64_t e = tid; e < sh.s; e += kReduceThreads) t.backward(to_opmath(dy[off + e]), to_opmath(x[off + e]), hi, lo);
  }
  t.done();
  sa[tid] = t.a;
  sb[tid] = t.b;
  block_sum2(sa, sb, tid);
  if (tid == 0) {
    sdy[i] = sa[0];
    sdyx[i] = sb[0];
  }
}

template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    bwd_rows_kernel(const T* dy, const T* x, GhostBNShape sh, int64_t tiles, const float* save_mean, double* sdy,
                    double* sdyx) {
  __shared__ double sa[kReduceThreads];
  __shared__ double sb[kReduceThreads];
  const int64_t g = blockIdx.x / tiles;
  const int64_t c = (blockIdx.x % tiles) * kTileC + threadIdx.x % kTileC;
  const int row = threadIdx.x / kTileC;
  const int64_t rows = sh.ghost_samples(g) * sh.s;
  const int64_t base = g * sh.vbs * sh.s * sh.c;
  ThreadSums<T> t;
  if (c < sh.c) {
    const float hi = save_mean[g * sh.c + c];
    const float lo = save_mean[(sh.num_ghost() + g) * sh.c + c];
    for (int64_t r = row; r < rows; r += kTileRows) {
      const int64_t e = base + r * sh.c + c;
      t.backward(to_opmath(dy[e]), to_opmath(x[e]), hi, lo);
    }
  }
  t.done();
  double ta, tb;
  if (tile_column_sum(t.a, t.b, sa, sb, &ta, &tb) && c < sh.c) {
    sdy[g * sh.c + c] = ta;
    sdyx[g * sh.c + c] = tb;
  }
}

__global__ void grad_coefs_kernel(int64_t G, int64_t C, const double* sdy, const double* sdyx, const float* save_invstd,
                                  const float* weight, int64_t count, int64_t count_last, float* coefs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= G * C) return;
  const int64_t g = i / C;
  const double m = static_cast<double>(g + 1 < G ? count : count_last);
  gbn_grad_coefs(sdy[i], sdyx[i], save_invstd[i], weight != nullptr ? weight[i % C] : 1.f, m, &coefs[i],
                 &coefs[G * C + i], &coefs[2 * G * C + i]);
}

template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    bwd_apply_kernel(const T* dy, const T* x, T* dx, GhostBNShape sh, const float* save_mean, const float* coefs) {
  const int64_t numel = sh.n * sh.c * sh.s;
  const int64_t gc_total = sh.num_ghost() * sh.c;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += stride) {
    const int64_t i = gc_index(sh, e);
    dx[e] = from_opmath<T>(gbn_grad_input(to_opmath(dy[e]), to_opmath(x[e]), save_mean[i], save_mean[gc_total + i],
                                          coefs[i], coefs[gc_total + i], coefs[2 * gc_total + i]));
  }
}

__global__ void param_grads_kernel(int64_t G, int64_t C, const double* sdy, const double* sdyx,
                                   const float* save_invstd, float* grad_weight, float* grad_bias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  gbn_param_grad(G, C, c, sdy, sdyx, save_invstd, grad_weight, grad_bias);
}

// ---- host side --------------------------------------------------------------------------------

unsigned grid_for(int64_t blocks, const char* what) {
  PLAYBOOK_CHECK(blocks >= 1 && blocks <= 0x7fffffff, "ghost batch norm: ", what, " needs ", blocks,
                 " blocks, expected 1 to 2^31-1");
  return static_cast<unsigned>(blocks);
}

unsigned apply_grid(const GhostBNShape& sh, int device) {
  const int64_t blocks = (sh.n * sh.c * sh.s + kApplyThreads - 1) / kApplyThreads;
  const int64_t cap = static_cast<int64_t>(detail::sm_count(device)) * 8;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

void check_device(const GhostBNShape& sh) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(sh.device >= 0, "cuda ghost batch norm got device ", sh.device);
}

}  // namespace

void ghost_bn_stats(const GhostBNShape& sh, const void* x, double* mean, double* m2, void* stream) {
  check_device(sh);
  detail::DeviceGuard guard(sh.device);
  const cudaStream_t s = detail::as_stream(stream);
  detail::dispatch_dtype(sh.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (sh.channels_last) {
      const int64_t tiles = (sh.c + kTileC - 1) / kTileC;
      PLAYBOOK_LAUNCH(stats_rows_kernel<T>, grid_for(sh.num_ghost() * tiles, "stats"), kReduceThreads, 0, s)(
          static_cast<const T*>(x), sh, tiles, mean, m2);
    } else {
      PLAYBOOK_LAUNCH(stats_planes_kernel<T>, grid_for(sh.num_ghost() * sh.c, "stats"), kReduceThreads, 0, s)(
          static_cast<const T*>(x), sh, mean, m2);
    }
    PLAYBOOK_CUDA_CHECK(cudaGetLastError());
  });
}

void ghost_bn_finalize(int64_t G, int64_t C, const double* mean, const double* m2, int64_t count, int64_t count_last,
                       double eps, double momentum, int64_t num_batches_tracked, float* running_mean,
                       float* running_var, float* save_mean, float* save_invstd, int device, void* stream) {
  PLAYBOOK_CHECK(G >= 1 && C >= 1 && count >= 1 && count_last >= 1, "ghost_bn_finalize: G=", G, " C=", C,
                 " counts ", count, ", ", count_last);
  PLAYBOOK_CHECK((running_mean == nullptr) == (running_var == nullptr),
                 "ghost_bn_finalize: running_mean and running_var must both be given or both be null");
  detail::DeviceGuard guard(device);
  PLAYBOOK_LAUNCH(finalize_kernel, grid_for((C + kFinalizeThreads - 1) / kFinalizeThreads, "finalize"),
                  kFinalizeThreads, 0, detail::as_stream(stream))(G, C, mean, m2, count, count_last, eps, momentum,
                                                                  num_batches_tracked, running_mean, running_var,
                                                                  save_mean, save_invstd);
  PLAYBOOK_CUDA_CHECK(cudaGetLastError());
}

void ghost_bn_apply(const GhostBNShape& sh, const void* x, void* y, const float* save_mean, const float* save_invstd,
                    const float* weight, const float* bias, void* stream) {
  check_device(sh);
  detail::DeviceGuard guard(sh.device);
  detail::dispatch_dtype(sh.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    PLAYBOOK_LAUNCH(apply_kernel<T>, apply_grid(sh, sh.device), kApplyThreads, 0, detail::as_stream(stream))(
        static_cast<const T*>(x), static_cast<T*>(y), sh, save_mean, save_invstd, weight, bias);
    PLAYBOOK_CUDA_CHECK(cudaGetLastError());
  });
}

void ghost_bn_backward_reduce(const GhostBNShape& sh, const void* dy, const void* x, const float* save_mean,
                              double* sdy, double* sdyx, void* stream) {
  check_device(sh);
  detail::DeviceGuard guard(sh.device);
  const cudaStream_t s = detail::as_stream(stream);
  detail::dispatch_dtype(sh.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (sh.channels_last) {
      const int64_t tiles = (sh.c + kTileC - 1) / kTileC;
      PLAYBOOK_LAUNCH(bwd_rows_kernel<T>, grid_for(sh.num_ghost() * tiles, "backward"), kReduceThreads, 0, s)(
          static_cast<const T*>(dy), static_cast<const T*>(x), sh, tiles, save_mean, sdy, sdyx);
    } else {
      PLAYBOOK_LAUNCH(bwd_planes_kernel<T>, grid_for(sh.num_ghost() * sh.c, "backward"), kReduceThreads, 0, s)(
          static_cast<const T*>(dy), static_cast<const T*>(x), sh, save_mean, sdy, sdyx);
    }
    PLAYBOOK_CUDA_CHECK(cudaGetLastError());
  });
}

void ghost_bn_backward_apply(const GhostBNShape& sh, const void* dy, const void* x, const float* save_mean,
                             const float* save_invstd, const float* weight, const double* sdy, const double* sdyx,
                             int64_t count, int64_t count_last, float* coefs, void* dx, void* stream) {
  check_device(sh);
  PLAYBOOK_CHECK(coefs != nullptr && count >= 1 && count_last >= 1,
                 "ghost_bn_backward_apply: needs a [3, G, C] float scratch and counts >= 1");
  detail::DeviceGuard guard(sh.device);
  const cudaStream_t s = detail::as_stream(stream);
  const int64_t gc = sh.num_ghost() * sh.c;
  PLAYBOOK_LAUNCH(grad_coefs_kernel, grid_for((gc + kApplyThreads - 1) / kApplyThreads, "backward"), kApplyThreads,
                  0, s)(sh.num_ghost(), sh.c, sdy, sdyx, save_invstd, weight, count, count_last, coefs);
  PLAYBOOK_CUDA_CHECK(cudaGetLastError());
  detail::dispatch_dtype(sh.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    PLAYBOOK_LAUNCH(bwd_apply_kernel<T>, apply_grid(sh, sh.device), kApplyThreads, 0, s)(
        static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dx), sh, save_mean,
        static_cast<const float*>(coefs));
    PLAYBOOK_CUDA_CHECK(cudaGetLastError());
  });
}

void ghost_bn_param_grads(int64_t G, int64_t C, const double* sdy, const double* sdyx, const float* save_invstd,
                          float* grad_weight, float* grad_bias, int device, void* stream) {
  detail::DeviceGuard guard(device);
  PLAYBOOK_LAUNCH(param_grads_kernel, grid_for((C + kFinalizeThreads - 1) / kFinalizeThreads, "param grads"),
                  kFinalizeThreads, 0, detail::as_stream(stream))(G, C, sdy, sdyx, save_invstd, grad_weight,
                                                                  grad_bias);
  PLAYBOOK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace playbook
