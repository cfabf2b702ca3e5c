// Shared helpers of the CUDA kernels: error checks, the device guard, launch constants and the
// storage <-> fp32 conversions. Included by every csrc/cuda/*.cu file; never by host-only code.
//
// NOTE: [CUDA numerics]
// Math is fp32 (opmath_t) whatever the storage dtype; bf16/fp16 are widened on load and rounded
// to nearest-even on store. The element formulas and per-tensor coefficients are the CPU
// kernels' own code (csrc/include/playbook/math/*.h, compiled for host and device; the CPU side
// with -ffp-contract=off) and the target is compiled with --fmad=false (CMakeLists.txt), so an
// update computes the same bits on both paths given the same coefficients (those come from double
// pow, where CUDA's libdevice and the host libm may differ in the last bit before the cast to
// fp32). tests/cuda_emu runs these kernels on the host and checks it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/device_guard_plan.h"
#include "cuda/launch.cuh"
#include "playbook/check.h"
#include "playbook/optim.h"
#include "playbook/tensor.h"

namespace playbook {
namespace cuda {
namespace detail {

using opmath_t = float;

constexpr int kBlockSize = 512;    // threads per block of the multi-tensor kernels
constexpr int kILP = 4;            // elements per thread per iteration (one 16/8-byte access)
constexpr int kChunkSize = 65536;  // elements per chunk: the unit of work of one block
constexpr int kBlocksPerSM = 4;    // grid = min(chunks, SMs * kBlocksPerSM), grid-stride beyond
constexpr int kWarpSize = 32;

static_assert(kChunkSize % (kBlockSize * kILP) == 0,
              "kChunkSize must be a multiple of kBlockSize * kILP so every vector access of a "
              "chunk stays aligned and inside the chunk");
static_assert(kBlockSize % kWarpSize == 0 && kBlockSize / kWarpSize <= kWarpSize,
              "block reductions assume whole warps and at most 32 warps per block");

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  // Any failed runtime call also becomes the runtime's last error; reset it (non-sticky errors)
  // so that the next launch check of a later call does not report this error as its own.
  cudaGetLastError();
  std::ostringstream os;
  os << "CUDA error " << cudaGetErrorName(err) << " (" << static_cast<int>(err)
     << "): " << cudaGetErrorString(err) << " in '" << expr << "' [" << file << ":" << line << "]";
  throw std::runtime_error(os.str());
}

}  // namespace detail
}  // namespace cuda
}  // namespace playbook

// Throws std::runtime_error (Python RuntimeError) with file:line when a CUDA call fails. After
// every launch: PLAYBOOK_CUDA_CHECK(cudaGetLastError()).
#define PLAYBOOK_CUDA_CHECK(expr)                                                        \
  do {                                                                                   \
    const cudaError_t playbook_cuda_err_ = (expr);                                       \
    if (playbook_cuda_err_ != cudaSuccess) {                                             \
      ::playbook::cuda::detail::throw_cuda_error(playbook_cuda_err_, #expr, __FILE__,    \
                                                 __LINE__);                              \
    }                                                                                    \
  } while (0)

namespace playbook {
namespace cuda {
namespace detail {

// Driver entry points (CUresult f(CUcontext*) / f(CUcontext)) through cudart, so that nothing links
// libcuda; null when the driver does not offer them.
using CtxGetCurrentFn = int (*)(void**);
using CtxSetCurrentFn = int (*)(void*);

inline void* driver_entry_point(const char* symbol) {
#if !defined(__NVCC__)
  (void)symbol;  // host-compiled builds of these sources (the launch emulator): no driver
  return nullptr;
#else
  void* fn = nullptr;
#if CUDART_VERSION >= 12000
  cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  const cudaError_t err = cudaGetDriverEntryPointByVersion(symbol, &fn, 12000, cudaEnableDefault, &status);
#else
  const cudaError_t err = cudaGetDriverEntryPoint(symbol, &fn, cudaEnableDefault, &status);
#endif
  const bool found = err == cudaSuccess && status == cudaDriverEntryPointSuccess && fn != nullptr;
#else
  const cudaError_t err = cudaGetDriverEntryPoint(symbol, &fn, cudaEnableDefault);
  const bool found = err == cudaSuccess && fn != nullptr;
#endif
  if (!found) {
    cudaGetLastError();  // not the caller's error
    return nullptr;
  }
  return fn;
#endif
}

// Makes `device` current for the scope and restores the thread's previous state afterwards,
// without creating a context on any other device (NOTE: [Device guard without stray contexts] in
// cuda/device_guard_plan.h).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    PLAYBOOK_CHECK(device >= 0, "expected a CUDA device ordinal >= 0, got device=", device);
    PLAYBOOK_CUDA_CHECK(cudaGetDevice(&previous_));
    static const CtxGetCurrentFn get_current =
        reinterpret_cast<CtxGetCurrentFn>(driver_entry_point("cuCtxGetCurrent"));
    void* ctx = nullptr;
    const bool known = get_current != nullptr && get_current(&ctx) == 0;
    plan_ = plan_device_guard(previous_, known, ctx != nullptr, device);
    if (plan_.set_device) PLAYBOOK_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {  // no throw from a destructor
    if (plan_.restore == GuardRestore::kPreviousDevice) {
      cudaSetDevice(previous_);
    } else if (plan_.restore == GuardRestore::kNoContext) {
      static const CtxSetCurrentFn set_current =
          reinterpret_cast<CtxSetCurrentFn>(driver_entry_point("cuCtxSetCurrent"));
      if (set_current != nullptr) set_current(nullptr);
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  DeviceGuardPlan plan_{false, GuardRestore::kNothing};
};

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Streaming multiprocessors of `device` (host query, no synchronization).
inline int sm_count(int device) {
  int sms = 0;
  PLAYBOOK_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms > 0 ? sms : 1;
}

// Every descriptor must live on `device` (check_tensor_list only checks they agree).
inline void check_on_device(const std::vector<TensorDesc>& tensors, int device, const char* what) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    PLAYBOOK_CHECK(tensors[i].device == device, what, " tensor ", i, " is on device ",
                   tensors[i].device, ", but the call is for CUDA device ", device);
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Runs f(TypeTag<T>{}) with T the storage type of `dtype` (float, __nv_bfloat16, __half).
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(TypeTag<float>{}); return;
    case DType::kBFloat16: f(TypeTag<__nv_bfloat16>{}); return;
    case DType::kFloat16: f(TypeTag<__half>{}); return;
  }
  PLAYBOOK_CHECK(false, "unsupported dtype code ", static_cast<int>(dtype));
}

// Indices of the tensors of each storage dtype, in list order (one launch family per dtype).
inline std::vector<std::vector<size_t>> group_by_dtype(const std::vector<TensorDesc>& tensors) {
  std::vector<std::vector<size_t>> groups(3);
  for (size_t i = 0; i < tensors.size(); ++i) {
    groups[static_cast<size_t>(tensors[i].dtype)].push_back(i);
  }
  return groups;
}
constexpr DType kGroupDTypes[3] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};

// NOTE: [All-or-nothing launches]
// A step launches one kernel family per storage dtype, then advances the steps. If the launch of
// the second family failed (no kernel image for this device, too many registers for the block
// size, a driver that cannot run the build), the first family's params would be updated with
// their steps not advanced. So when a call has more than one dtype group, for_each_dtype_group
// first runs every group in preflight mode: multi_tensor_apply then only checks that its kernel
// (and the step-advance kernels) can be launched on the current device (cudaFuncGetAttributes:
// image present, maxThreadsPerBlock >= the block size; cached per kernel and device) and launches
// nothing. A failure there throws before anything is written. With one group, the first launch
// is the first write, so no preflight is needed. What no preflight can catch: an asynchronous
// fault of an earlier kernel reported at a later launch -- the CUDA context is then unusable and
// the process must restart.
inline bool& launch_preflight() {
  thread_local bool on = false;
  return on;
}

// Calls f(TypeTag<T>{}, indices) once per storage dtype present in `tensors` (one launch family
// per dtype), with the indices of the tensors of that dtype in list order; with several dtypes,
// after a preflight pass (NOTE: [All-or-nothing launches]).
template <typename F>
void for_each_dtype_group(const std::vector<TensorDesc>& tensors, F&& f) {
  const std::vector<std::vector<size_t>> groups = group_by_dtype(tensors);
  int present = 0;
  for (const std::vector<size_t>& g : groups) present += g.empty() ? 0 : 1;
  auto run_all = [&]() {
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      if (groups[gi].empty()) continue;
      dispatch_dtype(kGroupDTypes[gi], [&](auto tag) { f(tag, groups[gi]); });
    }
  };
  if (present > 1) {
    struct Preflight {
      Preflight() { launch_preflight() = true; }
      ~Preflight() { launch_preflight() = false; }
    } preflight;
    run_all();
  }
  run_all();
}

// ---------------------------------------------------------------------------------------------
// Device side: storage <-> opmath conversions and kILP-wide loads/stores.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ opmath_t to_opmath(float x) { return x; }
__device__ __forceinline__ opmath_t to_opmath(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ opmath_t to_opmath(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_opmath(opmath_t x);
template <>
__device__ __forceinline__ float from_opmath<float>(opmath_t x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_opmath<__nv_bfloat16>(opmath_t x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_opmath<__half>(opmath_t x) { return __float2half_rn(x); }

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

// True when p can be accessed kILP elements of T at a time.
template <typename T>
__device__ __forceinline__ bool is_vector_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kILP) == 0;
}

// Elements [i, i + kILP) of x (i a multiple of kILP, x the chunk start); those at or past n read
// as 0. `aligned` (x aligned for kILP-wide access) takes one vector load for a full group.
template <typename T>
__device__ __forceinline__ void load_ilp(opmath_t (&out)[kILP], const T* x, int64_t i, int64_t n,
                                         bool aligned) {
  if (aligned && i + kILP <= n) {
    const AlignedVector<T, kILP> v = *reinterpret_cast<const AlignedVector<T, kILP>*>(x + i);
#pragma unroll
    for (int j = 0; j < kILP; ++j) out[j] = to_opmath(v.val[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kILP; ++j) out[j] = i + j < n ? to_opmath(x[i + j]) : opmath_t(0);
  }
}

// Stores elements [i, i + kILP) of x, skipping those at or past n.
template <typename T>
__device__ __forceinline__ void store_ilp(T* x, int64_t i, int64_t n, bool aligned,
                                          const opmath_t (&in)[kILP]) {
  if (aligned && i + kILP <= n) {
    AlignedVector<T, kILP> v;
#pragma unroll
    for (int j = 0; j < kILP; ++j) v.val[j] = from_opmath<T>(in[j]);
    *reinterpret_cast<AlignedVector<T, kILP>*>(x + i) = v;
  } else {
#pragma unroll
    for (int j = 0; j < kILP; ++j) {
      if (i + j < n) x[i + j] = from_opmath<T>(in[j]);
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace playbook
