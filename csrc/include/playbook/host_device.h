// playbook/host_device.h: one macro for functions compiled for both the host and the device.
//
// Under nvcc PLAYBOOK_HOST_DEVICE is `__host__ __device__`; in the host launch emulator
// (tests/cuda_emu, which defines PLAYBOOK_CUDA_EMULATOR) and in plain C++ it is empty, so a
// per-element formula written once in a header is the same code in the CPU kernels, the CUDA
// functors and the emulator.
#pragma once

#if defined(__CUDACC__)
#define PLAYBOOK_HOST_DEVICE __host__ __device__
#else
#define PLAYBOOK_HOST_DEVICE
#endif
