#pragma once
#if defined(__CUDACC__)
#define PLAYBOOK_HOST_DEVICE __host__ __device__
#else
#define PLAYBOOK_HOST_DEVICE
#endif
