#include "cpu/parallel.h"

#include <omp.h>

#include <atomic>

namespace playbook {
namespace cpu {

// NOTE: [CPU threads on OpenMP]
// The parallel loops run on OpenMP, i.e. on the same runtime and thread pool as torch's own CPU
// ops: torch's wheels load libgomp.so.1, and this extension's libgomp.so.1 dependency resolves to
// that already-loaded copy (one runtime per process; importing playbook loads torch first).
// A private pool would compete with torch's: after each torch op its OpenMP workers keep spinning
// for a while (GOMP_SPINCOUNT), so a kernel started right after a torch op -- every ghost batch
// norm after a convolution, every optimizer step after the backward -- shared the cores with
// them. Here torch's spinning workers pick up the items at once, and vice versa.
// Items are handed out dynamically; results never depend on which thread ran an item.
void parallel_for(int64_t num_items, int num_threads, const std::function<void(int64_t)>& fn) {
  if (num_items <= 0) return;
  int threads = num_threads < 1 ? 1 : num_threads;
  if (threads > num_items) threads = static_cast<int>(num_items);
  if (threads == 1 || omp_in_parallel()) {  // nested: run on the calling thread
    for (int64_t i = 0; i < num_items; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
  {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= num_items) break;
      fn(i);
    }
  }
}

void run_with_producer(int num_threads, const std::function<void()>& produce, const std::function<void()>& work) {
  if (num_threads <= 1 || omp_in_parallel()) {
    produce();
    work();
    return;
  }
#pragma omp parallel num_threads(num_threads)
  {
    if (omp_get_thread_num() == 0) produce();  // the calling thread (OpenMP's master)
    work();
  }
}

}  // namespace cpu
}  // namespace playbook
