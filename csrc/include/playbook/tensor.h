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
int64_t dtype_size(DType dtype);

}  // namespace playbook
