#include "cpu/parallel.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace playbook {
namespace cpu {
namespace {

class ThreadPool {
 public:
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(int64_t num_items, int num_threads, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    const int extra = num_threads - 1;
    grow(extra);
    next_.store(0, std::memory_order_relaxed);
    num_items_ = num_items;
    fn_ = &fn;
    active_.store(extra, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      wanted_ = extra;
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleeping_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    drain();
    // Wait for the helpers to finish their last item (brief spin; items are short).
    while (active_.load(std::memory_order_acquire) > 0) std::this_thread::yield();
    fn_ = nullptr;
  }

 private:
  void grow(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { worker_loop(id); });
    }
  }

  void drain() {
    for (;;) {
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= num_items_) break;
      (*fn_)(i);
    }
  }

  // NOTE: [Spinning workers]
  // An optimizer step is two parallel regions back to back (norm, then update), each often only
  // tens of microseconds long: a worker spins briefly for the next region before it sleeps, so
  // the second region does not pay a futex wake-up.
  void worker_loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      for (int spin = 0; spin < kSpinIterations; ++spin) {
        if (generation_.load(std::memory_order_acquire) != seen) break;
        cpu_relax();
      }
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (generation_.load(std::memory_order_relaxed) == seen) {
          sleeping_.fetch_add(1, std::memory_order_acq_rel);
          cv_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
          sleeping_.fetch_sub(1, std::memory_order_acq_rel);
        }
        seen = generation_.load(std::memory_order_relaxed);
        if (stop_) return;
        if (id >= wanted_) continue;  // this region uses fewer threads
      }
      drain();
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  static constexpr int kSpinIterations = 2000;  // a few microseconds of pause instructions
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleeping_{0};
  int wanted_ = 0;
  bool stop_ = false;
  std::atomic<int64_t> next_{0};
  std::atomic<int> active_{0};
  int64_t num_items_ = 0;
  const std::function<void(int64_t)>* fn_ = nullptr;
};

ThreadPool* g_pool = nullptr;
std::once_flag g_atfork_once;

// After fork() only the forking thread exists in the child: forget (leak) the parent's pool so
// the child builds a fresh one on first use.
void reset_pool_in_child() { g_pool = nullptr; }

ThreadPool& pool() {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, reset_pool_in_child); });
  if (g_pool == nullptr) g_pool = new ThreadPool();  // intentionally leaked at exit
  return *g_pool;
}

}  // namespace

void parallel_for(int64_t num_items, int num_threads, const std::function<void(int64_t)>& fn) {
  if (num_items <= 0) return;
  int threads = num_threads < 1 ? 1 : num_threads;
  if (threads > num_items) threads = static_cast<int>(num_items);
  if (threads == 1) {
    for (int64_t i = 0; i < num_items; ++i) fn(i);
    return;
  }
  pool().run(num_items, threads, fn);
}

}  // namespace cpu
}  // namespace playbook
