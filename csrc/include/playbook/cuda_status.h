// playbook/cuda_status.h: what the CUDA build is and what the machine offers, for the run-time
// check in python/playbook/_cuda.py (NOTE: [CUDA toolkit choice] in cmake/PlaybookCUDA.cmake).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace playbook {
namespace cuda {

// Version of the toolkit (nvcc) the kernels were built with, e.g. "13.0.88"; "" without CUDA.
const char* toolkit_version();

struct RuntimeStatus {
  int runtime_version = 0;  // cudaRuntimeGetVersion of the linked (static) cudart, e.g. 13000
  int driver_version = 0;   // cudaDriverGetVersion: CUDA version the driver supports; 0 = no driver
  int device_count = 0;     // devices this runtime can use (0 when the query failed)
  std::string error;        // why the device query failed ("" when it did not)
  std::vector<std::pair<int, int>> capabilities;  // compute capability of each device
};

// Host queries only: no context is created and the runtime's last error is left cleared.
RuntimeStatus runtime_status();

}  // namespace cuda
}  // namespace playbook
