// Built instead of the .cu files when CUDA is not compiled in (PLAYBOOK_CUDA=OFF or no nvcc):
// every CUDA entry point raises a clear error; cuda::compiled() is false.
#include "playbook/check.h"
#include "playbook/cuda_status.h"
#include "playbook/ghost_bn.h"
#include "playbook/optim.h"

namespace playbook {
namespace cuda {
namespace {
[[noreturn]] void not_compiled(const char* what) {
  throw std::runtime_error(std::string("playbook was built without CUDA kernels (") + what +
                           "); rebuild with nvcc available or PLAYBOOK_CUDA=ON");
}
}  // namespace

bool compiled() { return false; }
const char* archs() { return ""; }
const char* toolkit_version() { return ""; }
RuntimeStatus runtime_status() {
  RuntimeStatus s;
  s.error = "playbook was built without CUDA kernels";
  return s;
}
int64_t sumsq_scratch_bytes(const std::vector<TensorDesc>&) { not_compiled("sumsq_scratch_bytes"); }
void sumsq(const std::vector<TensorDesc>&, double*, double*, void*, int64_t, int, void*) { not_compiled("sumsq"); }
void finalize_grad_norm(const double*, const ClipArgs&, const StepState&, int, void*) { not_compiled("finalize_grad_norm"); }
void adam_step(const AdamTensors&, const AdamHyper&, const float*, int, void*) { not_compiled("adam_step"); }
void nadam_step(const NAdamTensors&, const NAdamHyper&, const float*, int, void*) { not_compiled("nadam_step"); }
void sgd_step(const SGDTensors&, const SGDHyper&, const float*, int, void*) { not_compiled("sgd_step"); }

void ghost_bn_stats(const GhostBNShape&, const void*, double*, double*, void*) { not_compiled("ghost_bn_stats"); }
void ghost_bn_finalize(int64_t, int64_t, const double*, const double*, int64_t, int64_t, double, double, int64_t,
                       float*, float*, float*, float*, int, void*) { not_compiled("ghost_bn_finalize"); }
void ghost_bn_apply(const GhostBNShape&, const void*, void*, const float*, const float*, const float*, const float*,
                    void*) { not_compiled("ghost_bn_apply"); }
void ghost_bn_backward_reduce(const GhostBNShape&, const void*, const void*, const float*, double*, double*, void*) {
  not_compiled("ghost_bn_backward_reduce");
}
void ghost_bn_backward_apply(const GhostBNShape&, const void*, const void*, const float*, const float*, const float*,
                             const double*, const double*, int64_t, int64_t, float*, void*, void*) {
  not_compiled("ghost_bn_backward_apply");
}
void ghost_bn_param_grads(int64_t, int64_t, const double*, const double*, const float*, float*, float*, int, void*) {
  not_compiled("ghost_bn_param_grads");
}

}  // namespace cuda
}  // namespace playbook
