// Argument checks and small helpers shared by the CPU and CUDA entry points.
#include <set>

#include "playbook/check.h"
#include "playbook/optim.h"
#include "playbook/tensor.h"

namespace playbook {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
    case DType::kFloat16: return 2;
  }
  return 0;
}

void check_tensor_list(const std::vector<TensorDesc>& tensors, const char* what, bool check_data) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorDesc& t = tensors[i];
    PLAYBOOK_CHECK(t.numel >= 0, what, " tensor ", i, " has numel=", t.numel, ", expected >= 0");
    PLAYBOOK_CHECK(!check_data || t.numel == 0 || t.data != nullptr, what, " tensor ", i, " has a null data pointer");
    PLAYBOOK_CHECK(t.dtype == DType::kFloat32 || t.dtype == DType::kBFloat16 || t.dtype == DType::kFloat16,
                   what, " tensor ", i, " has dtype code ", static_cast<int>(t.dtype),
                   ", expected float32 (0), bfloat16 (1) or float16 (2)");
    PLAYBOOK_CHECK(t.device == tensors[0].device, what, " tensor ", i, " is on device ", t.device,
                   ", but tensor 0 is on device ", tensors[0].device, " (one call takes one device)");
  }
}

void check_param_grad_pairs(const std::vector<TensorDesc>& params, const std::vector<TensorDesc>& grads) {
  PLAYBOOK_CHECK(params.size() == grads.size(), "got ", params.size(), " params but ", grads.size(), " grads");
  check_tensor_list(params, "param");
  check_tensor_list(grads, "grad");
  for (size_t i = 0; i < params.size(); ++i) {
    PLAYBOOK_CHECK(params[i].numel == grads[i].numel, "grad tensor ", i, " has numel=", grads[i].numel,
                   ", but its param has numel=", params[i].numel);
    PLAYBOOK_CHECK(params[i].dtype == grads[i].dtype, "grad tensor ", i, " has dtype=", dtype_name(grads[i].dtype),
                   ", but its param has dtype=", dtype_name(params[i].dtype));
    PLAYBOOK_CHECK(params[i].device == grads[i].device, "grad tensor ", i, " is on device ", grads[i].device,
                   ", but its param is on device ", params[i].device);
  }
}

void check_state_list(const std::vector<float*>& state, size_t n, const char* what) {
  PLAYBOOK_CHECK(state.size() == n, "got ", state.size(), " ", what, " tensors for ", n, " params");
  for (size_t i = 0; i < n; ++i) {
    PLAYBOOK_CHECK(state[i] != nullptr, what, " tensor ", i, " has a null data pointer");
  }
}

}  // namespace playbook
