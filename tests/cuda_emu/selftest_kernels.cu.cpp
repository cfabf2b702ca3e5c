// Kernels that test the emulator itself (compiled like csrc/cuda/*.cu: emu.h force-included).
// family_emulator.cpp checks their results; emu_main.cpp's --expect-abort runs the misuse cases.
#include "cuda/launch.cuh"

namespace emu_selftest {

__global__ void shfl_kernel(int* out) {
  const int v = static_cast<int>(threadIdx.x) * 10;
  int* o = out + threadIdx.x * 4;
  o[0] = __shfl_down_sync(0xffffffffu, v, 3);
  o[1] = __shfl_up_sync(0xffffffffu, v, 5);
  o[2] = __shfl_xor_sync(0xffffffffu, v, 7);
  o[3] = __shfl_sync(0xffffffffu, v, 9);
}

__global__ void atomic_kernel(int* counter, double* sum, unsigned* max_id) {
  atomicAdd(counter, 1);
  atomicAdd(sum, 0.5);
  atomicMax(max_id, blockIdx.x * blockDim.x + threadIdx.x);
}

// Each block reverses its threads' ids through dynamic shared memory.
__global__ void shared_kernel(float* out) {
  PLAYBOOK_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] =
      buf[blockDim.x - 1 - threadIdx.x] + 1000.f * static_cast<float>(blockIdx.x);
}

__global__ void partial_mask_kernel(int* out) { out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, 1, 1); }

__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
}

// Launchers (host side).
void run_shfl(int* out) { PLAYBOOK_LAUNCH(shfl_kernel, 1, 64, 0, nullptr)(out); }
void run_atomic(int* counter, double* sum, unsigned* max_id) {
  PLAYBOOK_LAUNCH(atomic_kernel, 3, 96, 0, nullptr)(counter, sum, max_id);
}
void run_shared(float* out) { PLAYBOOK_LAUNCH(shared_kernel, 4, 64, 64 * sizeof(float), nullptr)(out); }
int run_zero_grid() {
  PLAYBOOK_LAUNCH(shfl_kernel, 0, 64, 0, nullptr)(nullptr);
  return static_cast<int>(cudaGetLastError());
}
void run_partial_mask(int* out) { PLAYBOOK_LAUNCH(partial_mask_kernel, 1, 32, 0, nullptr)(out); }
void run_exited_lane(int* out) { PLAYBOOK_LAUNCH(exited_lane_kernel, 1, 32, 0, nullptr)(out); }

}  // namespace emu_selftest
