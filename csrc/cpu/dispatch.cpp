// Run-time choice of the CPU kernel level (NOTE: [SIMD dispatch] in csrc/cpu/kernels.h).
#include <atomic>
#include <cstring>

#include "cpu/kernels.h"
#include "playbook/optim.h"

namespace playbook {
namespace cpu {
namespace {

#define PLAYBOOK_KERNEL_TABLE(isa) \
  KernelTable { #isa, isa::sumsq_kernel, isa::adam_kernel, isa::nadam_kernel, isa::sgd_kernel }

const KernelTable kPortable = PLAYBOOK_KERNEL_TABLE(portable);
#ifdef PLAYBOOK_SIMD_X86
const KernelTable kAvx2 = PLAYBOOK_KERNEL_TABLE(avx2);
const KernelTable kAvx512 = PLAYBOOK_KERNEL_TABLE(avx512);
#endif

bool supported(const KernelTable* table) {
#ifdef PLAYBOOK_SIMD_X86
  __builtin_cpu_init();
  if (table == &kAvx512) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }
  if (table == &kAvx2) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }
#endif
  return table == &kPortable;
}

const KernelTable* best() {
#ifdef PLAYBOOK_SIMD_X86
  if (supported(&kAvx512)) return &kAvx512;
  if (supported(&kAvx2)) return &kAvx2;
#endif
  return &kPortable;
}

std::atomic<const KernelTable*> g_table{nullptr};

}  // namespace

const KernelTable& kernels() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = best();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

const char* simd_level() { return kernels().name; }

bool set_simd_level(const char* level) {
  const KernelTable* candidates[] = {
      &kPortable,
#ifdef PLAYBOOK_SIMD_X86
      &kAvx2, &kAvx512,
#endif
  };
  if (std::strcmp(level, "auto") == 0) {
    g_table.store(best(), std::memory_order_release);
    return true;
  }
  for (const KernelTable* t : candidates) {
    if (std::strcmp(t->name, level) == 0 && supported(t)) {
      g_table.store(t, std::memory_order_release);
      return true;
    }
  }
  return false;
}

}  // namespace cpu
}  // namespace playbook
