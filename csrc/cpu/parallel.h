// Parallel loops for the CPU kernels, on OpenMP (NOTE: [CPU threads on OpenMP] in parallel.cpp).
//
// NOTE: [CPU threads]
// The Python layer passes torch.get_num_threads() with every call, so playbook never runs more
// threads than torch is configured for, on the same OpenMP thread pool as torch's own CPU ops.
// Work is split into items (fixed-size chunks of tensors) whose results are stored per item, so
// every result is independent of the thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace playbook {
namespace cpu {

// Calls fn(item) for every item in [0, num_items), on up to num_threads threads (the calling
// thread included). Items are handed out dynamically; fn must not throw.
void parallel_for(int64_t num_items, int num_threads, const std::function<void(int64_t)>& fn);

// NOTE: [Producer thread]
// Runs produce() on the calling thread while up to num_threads - 1 other threads run work(); the
// calling thread runs work() too once produce() returns. produce() may call into Python (the caller
// holds the GIL; the other threads never touch Python); work() hands itself items and may wait for
// what produce() publishes, so produce() must always finish publishing (also when it fails).
// Neither may throw. With one thread (or inside a parallel region): produce(), then work().
void run_with_producer(int num_threads, const std::function<void()>& produce, const std::function<void()>& work);

}  // namespace cpu
}  // namespace playbook
