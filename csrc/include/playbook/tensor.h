// playbook/tensor.h: the non-owning tensor descriptor that crosses the Python/C++ boundary.
//
// The core never sees a torch::Tensor: python/playbook/_tensors.py turns each torch tensor into a
// (data_ptr, numel, dtype code, device index) tuple, and csrc/bindings.cpp into a TensorDesc.
#pragma once

#include <cstdint>

namespace playbook {

// Storage dtypes the kernels accept. Values are the codes used by python/playbook/_tensors.py.
enum class DType : int32_t {
  kFloat32 = 0,
  kBFloat16 = 1,
  kFloat16 = 2,
};

constexpr int32_t kCPUDevice = -1;  // TensorDesc::device for host memory

struct TensorDesc {
  void* data = nullptr;    // first element; contiguous, numel elements of dtype
  int64_t numel = 0;
  DType dtype = DType::kFloat32;
  int32_t device = kCPUDevice;  // CUDA device ordinal, or kCPUDevice
};

const char* dtype_name(DType dtype);

// Bytes per element (inline: the drivers compute chunk addresses with it for every chunk; static,
// so the per-ISA kernel files that include this header emit no shared symbol: NOTE: [SIMD dispatch]).
static inline int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
    case DType::kFloat16: return 2;
  }
  return 0;
}

}  // namespace playbook
