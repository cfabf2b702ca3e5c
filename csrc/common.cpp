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

namespace {

bool known_dtype(DType d) { return d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16; }

// Everything check_tensor_list checks of tensor t of a list whose tensor 0 is on `device`, in one
// expression (the per-step fast path: the detailed checks below run only to name a failure).
bool tensor_ok(const TensorDesc& t, int32_t device, bool check_data) {
  return t.numel >= 0 && (!check_data || t.numel == 0 || t.data != nullptr) && known_dtype(t.dtype) &&
         t.device == device;
}

void check_tensor(const TensorDesc& t, size_t i, int32_t device, const char* what, bool check_data) {
  PLAYBOOK_CHECK(t.numel >= 0, what, " tensor ", i, " has numel=", t.numel, ", expected >= 0");
  PLAYBOOK_CHECK(!check_data || t.numel == 0 || t.data != nullptr, what, " tensor ", i, " has a null data pointer");
  PLAYBOOK_CHECK(known_dtype(t.dtype), what, " tensor ", i, " has dtype code ", static_cast<int>(t.dtype),
                 ", expected float32 (0), bfloat16 (1) or float16 (2)");
  PLAYBOOK_CHECK(t.device == device, what, " tensor ", i, " is on device ", t.device, ", but tensor 0 is on device ",
                 device, " (one call takes one device)");
}

}  // namespace

void check_tensor_list(const std::vector<TensorDesc>& tensors, const char* what, bool check_data) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensor_ok(tensors[i], tensors[0].device, check_data)) check_tensor(tensors[i], i, tensors[0].device, what, check_data);
  }
}

void check_param_grad_pairs(const std::vector<TensorDesc>& params, const std::vector<TensorDesc>& grads) {
  PLAYBOOK_CHECK(params.size() == grads.size(), "got ", params.size(), " params but ", grads.size(), " grads");
  if (params.empty()) return;
  const int32_t device = params[0].device;
  for (size_t i = 0; i < params.size(); ++i) {
    const TensorDesc& p = params[i];
    const TensorDesc& g = grads[i];
    if (tensor_ok(p, device, true) && tensor_ok(g, grads[0].device, true) && p.numel == g.numel &&
        p.dtype == g.dtype && p.device == g.device) {
      continue;
    }
    // The failure, named as the list checks name it: the params first, then the grads, then the pair.
    check_tensor_list(params, "param");
    check_tensor_list(grads, "grad");
    PLAYBOOK_CHECK(p.numel == g.numel, "grad tensor ", i, " has numel=", g.numel, ", but its param has numel=", p.numel);
    PLAYBOOK_CHECK(p.dtype == g.dtype, "grad tensor ", i, " has dtype=", dtype_name(g.dtype),
                   ", but its param has dtype=", dtype_name(p.dtype));
    PLAYBOOK_CHECK(p.device == g.device, "grad tensor ", i, " is on device ", g.device,
                   ", but its param is on device ", p.device);
  }
}

void check_state_list(const std::vector<float*>& state, size_t n, const char* what) {
  PLAYBOOK_CHECK(state.size() == n, "got ", state.size(), " ", what, " tensors for ", n, " params");
  for (size_t i = 0; i < n; ++i) {
    PLAYBOOK_CHECK(state[i] != nullptr, what, " tensor ", i, " has a null data pointer");
  }
}

}  // namespace playbook
