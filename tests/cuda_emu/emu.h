// Host launch emulator: force-included (-include emu.h) into every csrc/cuda/*.cu file when the
// test build compiles them with the host C++ compiler against the CUDA toolkit's headers.
// Test-only: never part of the wheel. See README.md in this folder.
//
// What it maps (the CUDA subset the kernels use):
//   threadIdx / blockIdx / blockDim / gridDim / warpSize
//       threadIdx is thread-local (each CUDA thread of a block is a host thread); the others are
//       set by the launcher for the block being run.
//   kernel launches (PLAYBOOK_LAUNCH in csrc/cuda/launch.cuh)
//       the blocks of a grid run one at a time, in a shuffled order (seed: PLAYBOOK_EMU_SEED);
//       the threads of a block run concurrently on a pool of host threads; every launch is
//       complete when the launching call returns (stream order is trivially respected). The
//       kernel arguments are copied once per launch and each thread gets its own copy, as the
//       kernel-parameter bank gives. A bad configuration (0 blocks, > 1024 threads, > 4 KB of
//       arguments) sets the error cudaGetLastError() returns, as the runtime does.
//   __syncthreads()           a barrier of the block's live threads (a thread that returned no
//                             longer counts); a barrier nobody completes aborts after a timeout.
//   __shfl_{down,up,xor,}_sync, __syncwarp
//                             a barrier of the 32 lanes of the warp plus the exchange; aborts
//                             unless the mask is 0xffffffff and all 32 lanes are alive and arrive.
//   __shared__                `static` storage: one copy, used by one block at a time. Dynamic
//                             shared memory: PLAYBOOK_DYNAMIC_SHARED (filled with 0xA5 bytes at
//                             every block, so reading it before writing gives garbage).
//   atomicAdd/Sub/Max/Min/Exch/CAS on int, unsigned, unsigned long long, float, double: under one
//                             global mutex (truly atomic among the concurrent threads of a block).
//   __float_as_uint & co., __ldg, __threadfence: their host equivalents.
//   pow in playbook::cuda: glibc pow, or, when PLAYBOOK_EMU_POW_ULPS=k, pow moved k ulps up (to
//                             test how a libdevice/glibc pow difference propagates).
// The CUDA runtime calls the sources make (cudaGetDevice, cudaDeviceGetAttribute,
// cudaGetLastError, cudaMemsetAsync, ...) are implemented on the host in emu_runtime.cpp; the
// simulated SM count is PLAYBOOK_EMU_SMS (default 4), or playbook_emu::set_sm_count().
#pragma once

#if defined(__CUDACC__)
#error "tests/cuda_emu/emu.h is for the host compiler, not nvcc"
#endif

#define PLAYBOOK_CUDA_EMULATOR 1

// Before the CUDA headers, which define these only when not already defined.
#define __shared__ static

// Every standard header the kernels might use comes first, so nothing below can change them.
#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <device_launch_parameters.h>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace playbook_emu {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxParamBytes = 4096;

extern thread_local uint3 tls_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

// Simulated device (cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)).
void set_sm_count(int sms);
int sm_count();
// Seed of the block order of the next launches.
void set_seed(uint64_t seed);
// Launches so far, blocks run so far (tests check that work happened).
int64_t launches();
int64_t blocks_run();

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Runs body() on every thread of every block (see the header comment). Sets the sticky-free
// "last error" instead of running when the configuration is invalid.
void run_grid(dim3 grid, dim3 block, size_t shmem, size_t param_bytes, const char* name,
              const std::function<void()>& body);
void* dynamic_shared_memory();

void block_barrier();
// Warp exchange: `bytes` (<= 8) of `in` from this lane, result (per mode) into `out`.
enum class ShflMode { kIdx, kUp, kDown, kXor, kSync };
void warp_exchange(unsigned mask, const void* in, void* out, size_t bytes, ShflMode mode, int arg,
                   int width, const char* name);

std::mutex& atomic_mutex();

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t shmem;
  const char* name;

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    // The kernel-parameter copy: converted to the parameter types once, at the launch.
    const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    constexpr size_t bytes = (size_t{0} + ... + sizeof(std::decay_t<P>));
    auto* k = kernel;
    run_grid(grid, block, shmem, bytes, name, [&params, k]() {
      // Each thread: its own by-value copy of every argument (the kernel takes them by value).
      std::apply([k](const auto&... a) { k(a...); }, params);
    });
  }
};

template <typename... P>
Launch<P...> make_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shmem,
                         cudaStream_t /*stream: every emulated launch completes in order*/,
                         const char* name) {
  return Launch<P...>{kernel, grid, block, shmem, name};
}

// pow as seen by the kernels (see the header comment).
extern int g_pow_ulps;
inline double pow(double x, double y) {
  double r = std::pow(x, y);
  for (int i = 0; i < g_pow_ulps; ++i) r = std::nextafter(r, HUGE_VAL);
  return r;
}
inline float pow(float x, float y) { return std::pow(x, y); }
inline double pow(double x, int y) { return playbook_emu::pow(x, static_cast<double>(y)); }

template <typename T>
inline T shfl(unsigned mask, T var, ShflMode mode, int arg, int width, const char* name) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "emulated shuffles move at most 8 bytes of a trivially copyable type");
  T out;
  warp_exchange(mask, &var, &out, sizeof(T), mode, arg, width, name);
  return out;
}

template <typename T, typename F>
inline T atomic_update(T* address, F f) {
  std::lock_guard<std::mutex> lock(atomic_mutex());
  const T old = *address;
  *address = f(old);
  return old;
}

}  // namespace playbook_emu

// Device code calls these unqualified, as CUDA's math headers allow.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// Kernels in namespace playbook::cuda see the emulator's pow before ::pow.
namespace playbook {
namespace cuda {
using ::playbook_emu::pow;
}  // namespace cuda
}  // namespace playbook

#define threadIdx (::playbook_emu::tls_thread_idx)
#define blockIdx (::playbook_emu::g_block_idx)
#define blockDim (::playbook_emu::g_block_dim)
#define gridDim (::playbook_emu::g_grid_dim)
#define warpSize (::playbook_emu::kWarpSize)

inline void __syncthreads() { ::playbook_emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  int dummy = 0;
  ::playbook_emu::warp_exchange(mask, &dummy, &dummy, sizeof(dummy),
                                ::playbook_emu::ShflMode::kSync, 0, 32, "__syncwarp");
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::playbook_emu::shfl(mask, var, ::playbook_emu::ShflMode::kIdx, src_lane, width,
                              "__shfl_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::playbook_emu::shfl(mask, var, ::playbook_emu::ShflMode::kUp, static_cast<int>(delta),
                              width, "__shfl_up_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::playbook_emu::shfl(mask, var, ::playbook_emu::ShflMode::kDown, static_cast<int>(delta),
                              width, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::playbook_emu::shfl(mask, var, ::playbook_emu::ShflMode::kXor, lane_mask, width,
                              "__shfl_xor_sync");
}

inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
inline int __float_as_int(float x) { return static_cast<int>(__float_as_uint(x)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }
inline long long __double_as_longlong(double x) {
  long long u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline double __longlong_as_double(long long u) {
  double x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

#define PLAYBOOK_EMU_ATOMICS(T)                                                                  \
  inline T atomicAdd(T* a, T v) {                                                                \
    return ::playbook_emu::atomic_update(a, [v](T o) { return static_cast<T>(o + v); });         \
  }                                                                                              \
  inline T atomicSub(T* a, T v) {                                                                \
    return ::playbook_emu::atomic_update(a, [v](T o) { return static_cast<T>(o - v); });         \
  }                                                                                              \
  inline T atomicExch(T* a, T v) {                                                               \
    return ::playbook_emu::atomic_update(a, [v](T) { return v; });                               \
  }                                                                                              \
  inline T atomicMax(T* a, T v) {                                                                \
    return ::playbook_emu::atomic_update(a, [v](T o) { return o < v ? v : o; });                 \
  }                                                                                              \
  inline T atomicMin(T* a, T v) {                                                                \
    return ::playbook_emu::atomic_update(a, [v](T o) { return v < o ? v : o; });                 \
  }
PLAYBOOK_EMU_ATOMICS(int)
PLAYBOOK_EMU_ATOMICS(unsigned)
PLAYBOOK_EMU_ATOMICS(unsigned long long)
#undef PLAYBOOK_EMU_ATOMICS
inline float atomicAdd(float* a, float v) {
  return ::playbook_emu::atomic_update(a, [v](float o) { return o + v; });
}
inline double atomicAdd(double* a, double v) {
  return ::playbook_emu::atomic_update(a, [v](double o) { return o + v; });
}
inline float atomicExch(float* a, float v) {
  return ::playbook_emu::atomic_update(a, [v](float) { return v; });
}
template <typename T>
inline T atomicCAS(T* a, T compare, T v) {
  return ::playbook_emu::atomic_update(a, [compare, v](T o) { return o == compare ? v : o; });
}
