// Run-time facts about the CUDA runtime this build links and the machine's driver and devices
// (playbook/cuda_status.h). Host code only; compiled when the CUDA kernels are.
#include "playbook/cuda_status.h"

#include <cuda_runtime_api.h>

#ifndef PLAYBOOK_CUDA_TOOLKIT_VERSION
#define PLAYBOOK_CUDA_TOOLKIT_VERSION ""  // CMake defines it from CMAKE_CUDA_COMPILER_VERSION
#endif

namespace playbook {
namespace cuda {

const char* toolkit_version() { return PLAYBOOK_CUDA_TOOLKIT_VERSION; }

RuntimeStatus runtime_status() {
  RuntimeStatus s;
  // Neither call needs a usable driver: cudaDriverGetVersion reports 0 when none is installed.
  if (cudaRuntimeGetVersion(&s.runtime_version) != cudaSuccess) s.runtime_version = 0;
  if (cudaDriverGetVersion(&s.driver_version) != cudaSuccess) s.driver_version = 0;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);  // initializes the driver, no context
  if (err != cudaSuccess) {
    s.error = std::string(cudaGetErrorName(err)) + " (" + std::to_string(static_cast<int>(err)) +
              "): " + cudaGetErrorString(err);
    count = 0;
  }
  for (int d = 0; d < count; ++d) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d) != cudaSuccess) {
      major = minor = 0;
    }
    s.capabilities.emplace_back(major, minor);
  }
  s.device_count = count;
  // A failed query sets the runtime's last error; clear it so that the next launch check
  // (PLAYBOOK_CUDA_CHECK(cudaGetLastError())) does not report it as the launch's own error.
  cudaGetLastError();
  return s;
}

}  // namespace cuda
}  // namespace playbook
