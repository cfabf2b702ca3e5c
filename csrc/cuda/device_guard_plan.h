// What cuda::detail::DeviceGuard (csrc/cuda/common.cuh) does, as a pure function so that it can be
// tested without a GPU (tests/test_cuda_status.py, through playbook._C._device_guard_plan).
//
// NOTE: [Device guard without stray contexts]
// On a thread with no current CUDA context, cudaGetDevice reports device 0, and since CUDA 12
// cudaSetDevice(d) creates and binds device d's primary context at once. A guard that "restored"
// device 0 there would create a context on GPU 0 that nobody asked for (hundreds of MB on that GPU,
// per process). So the guard asks the driver whether the thread has a current context
// (cuCtxGetCurrent, reached through cudart's driver entry points: no link to libcuda), and when it
// has none, restores exactly that -- no current context -- instead of setting any device.
#pragma once

namespace playbook {
namespace cuda {
namespace detail {

enum class GuardRestore : int { kNothing = 0, kPreviousDevice = 1, kNoContext = 2 };

struct DeviceGuardPlan {
  bool set_device;       // cudaSetDevice(target) on entry
  GuardRestore restore;  // what the destructor does
};

// previous: cudaGetDevice on entry; context_known: the driver could be asked; had_context: the
// thread had a current context on entry; target: the device the guarded work runs on.
constexpr DeviceGuardPlan plan_device_guard(int previous, bool context_known, bool had_context,
                                            int target) {
  if (context_known && !had_context) {
    // Whatever becomes current in the scope (target's primary context) is unbound on exit.
    return DeviceGuardPlan{previous != target, GuardRestore::kNoContext};
  }
  return previous != target ? DeviceGuardPlan{true, GuardRestore::kPreviousDevice}
                            : DeviceGuardPlan{false, GuardRestore::kNothing};
}

}  // namespace detail
}  // namespace cuda
}  // namespace playbook
