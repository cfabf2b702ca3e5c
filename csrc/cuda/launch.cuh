// Every kernel launch of csrc/cuda goes through PLAYBOOK_LAUNCH, so that the same source runs on
// a GPU (nvcc: the launch is `kernel<<<grid, block, shmem, stream>>>(args...)`) and in the host
// launch emulator of the test suite (tests/cuda_emu: each CUDA thread a host thread, blocks one at
// a time in a shuffled order), which is how these kernels are tested on machines without a GPU.
//
//   PLAYBOOK_LAUNCH(my_kernel, grid, block, shmem, stream)(arg0, arg1);
//   PLAYBOOK_LAUNCH((templated_kernel<A, B>), grid, block, shmem, stream)(args...);  // commas: ()
//   PLAYBOOK_CUDA_CHECK(cudaGetLastError());
//
// Dynamic shared memory: declare it with PLAYBOOK_DYNAMIC_SHARED(float, buf); inside the kernel
// (`extern __shared__ float buf[];` under nvcc).
#pragma once

#if defined(PLAYBOOK_CUDA_EMULATOR)
// tests/cuda_emu/emu.h (force-included by the emulator build) defines the emulated launch.
#define PLAYBOOK_LAUNCH(kernel, grid, block, shmem, stream) \
  ::playbook_emu::make_launch(kernel, grid, block, shmem, stream, #kernel)
#define PLAYBOOK_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::playbook_emu::dynamic_shared_memory())
#else
#define PLAYBOOK_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#define PLAYBOOK_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif
