// Host launch emulator: the launcher, the thread pool, the block/warp barriers and the CUDA
// runtime calls csrc/cuda makes, implemented on the host (see emu.h). Test-only.
#include "emu.h"

#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <random>
#include <thread>

namespace playbook_emu {

thread_local uint3 tls_thread_idx;
uint3 g_block_idx;
dim3 g_block_dim;
dim3 g_grid_dim;

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// A warp's exchange state, under its own mutex (warps of a block shuffle independently). The
// slots are double-buffered by the parity of the exchange, so one barrier per exchange suffices:
// a lane can only write the same parity again after every lane has passed the next exchange,
// i.e. has finished reading this one.
struct Warp {
  std::mutex m;
  int live = 0;
  int arrived = 0;
  uint64_t gen = 0;
  ShflMode mode[kWarpSize];
  unsigned char slot[2][kWarpSize][8];
  std::condition_variable cv;
};

struct State {
  std::mutex m;  // guards everything here
  std::condition_variable cv_done, cv_block;
  std::vector<std::thread> workers;
  // One condition variable per pool thread: a block wakes exactly the threads it uses.
  std::vector<std::unique_ptr<std::condition_variable>> worker_cv;
  bool shutdown = false;
  // The block being run.
  uint64_t work_gen = 0;
  int nthreads = 0;
  int done = 0;
  const std::function<void()>* body = nullptr;
  const char* name = "";
  int live = 0;
  int barrier_arrived = 0;
  uint64_t barrier_gen = 0;
  Warp warps[kMaxThreadsPerBlock / kWarpSize];
  std::vector<unsigned char> shmem;
  // Launch bookkeeping.
  std::mt19937_64 rng{static_cast<uint64_t>(env_int("PLAYBOOK_EMU_SEED", 12345))};
  int sms = env_int("PLAYBOOK_EMU_SMS", 4);
  int64_t launches = 0;
  int64_t blocks = 0;
  int timeout_s = env_int("PLAYBOOK_EMU_TIMEOUT", 300);

  ~State() {
    {
      std::lock_guard<std::mutex> lock(m);
      shutdown = true;
    }
    for (auto& cv : worker_cv) cv->notify_all();
    for (std::thread& t : workers) t.join();
  }
};

State& st() {
  static State s;
  return s;
}

thread_local int tls_worker = -1;    // pool index of this thread, -1 for others
thread_local int tls_device = 0;     // cudaSetDevice
cudaError_t g_last_error = cudaSuccess;

int linear_tid() {
  return static_cast<int>(tls_thread_idx.x + g_block_dim.x * (tls_thread_idx.y + g_block_dim.y * tls_thread_idx.z));
}

void require_in_kernel(const char* what) {
  if (tls_worker < 0) fail("%s called outside a kernel", what);
}

// Waits on cv until done() or the timeout (then aborts: a barrier that never completes).
template <typename Pred>
void wait_or_die(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Pred done,
                 const char* what) {
  State& s = st();
  if (!cv.wait_for(lock, std::chrono::seconds(s.timeout_s), done)) {
    fail("%s in kernel %s, block (%u,%u,%u), thread %d: no progress for %d s (a barrier not "
         "reached by every live thread?)",
         what, s.name, g_block_idx.x, g_block_idx.y, g_block_idx.z, linear_tid(), s.timeout_s);
  }
}

// Called with the lock held when a thread of the block returns from the kernel.
void thread_exit(int tid) {
  State& s = st();
  Warp& w = s.warps[tid / kWarpSize];
  {
    std::lock_guard<std::mutex> warp_lock(w.m);
    if (w.arrived > 0) {
      fail("kernel %s, block (%u,%u,%u): thread %d returned while %d lanes of its warp wait in "
           "a warp-synchronous call",
           s.name, g_block_idx.x, g_block_idx.y, g_block_idx.z, tid, w.arrived);
    }
    w.live -= 1;
  }
  s.live -= 1;
  if (s.barrier_arrived > 0 && s.barrier_arrived == s.live) {
    s.barrier_arrived = 0;
    s.barrier_gen += 1;
    s.cv_block.notify_all();
  }
}

// `seen`: the work generation when the thread was created (under the lock), so a block released
// before the thread first takes the lock is not missed.
void worker_main(int index, uint64_t seen) {
  State& s = st();
  tls_worker = index;
  std::unique_lock<std::mutex> lock(s.m);
  std::condition_variable& cv = *s.worker_cv[static_cast<size_t>(index)];
  for (;;) {
    cv.wait(lock, [&] { return s.shutdown || (s.work_gen != seen && index < s.nthreads); });
    if (s.shutdown) return;
    seen = s.work_gen;
    tls_thread_idx.x = static_cast<unsigned>(index) % g_block_dim.x;
    tls_thread_idx.y = (static_cast<unsigned>(index) / g_block_dim.x) % g_block_dim.y;
    tls_thread_idx.z = static_cast<unsigned>(index) / (g_block_dim.x * g_block_dim.y);
    const std::function<void()>* body = s.body;
    lock.unlock();
    try {
      (*body)();
    } catch (const std::exception& e) {
      fail("kernel %s threw (device code cannot): %s", s.name, e.what());
    }
    lock.lock();
    thread_exit(index);
    if (++s.done == s.nthreads) s.cv_done.notify_all();
  }
}

}  // namespace

void fail(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "playbook cuda emulator: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

void set_sm_count(int sms) {
  std::lock_guard<std::mutex> lock(st().m);
  st().sms = sms;
}
int sm_count() {
  std::lock_guard<std::mutex> lock(st().m);
  return st().sms;
}
void set_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(st().m);
  st().rng.seed(seed);
}
int64_t launches() {
  std::lock_guard<std::mutex> lock(st().m);
  return st().launches;
}
int64_t blocks_run() {
  std::lock_guard<std::mutex> lock(st().m);
  return st().blocks;
}
int g_pow_ulps = env_int("PLAYBOOK_EMU_POW_ULPS", 0);

std::mutex& atomic_mutex() {
  static std::mutex m;
  return m;
}

void* dynamic_shared_memory() {
  require_in_kernel("dynamic shared memory");
  return st().shmem.data();
}

void run_grid(dim3 grid, dim3 block, size_t shmem, size_t param_bytes, const char* name,
              const std::function<void()>& body) {
  State& s = st();
  if (tls_worker >= 0) fail("kernel %s launched from inside a kernel", name);
  std::unique_lock<std::mutex> lock(s.m);
  s.launches += 1;
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (param_bytes > kMaxParamBytes || shmem > 48 * 1024) {
    g_last_error = cudaErrorInvalidValue;
    return;
  }
  while (s.workers.size() < nthreads) {
    const int index = static_cast<int>(s.workers.size());
    s.worker_cv.push_back(std::make_unique<std::condition_variable>());
    s.workers.emplace_back(worker_main, index, s.work_gen);
  }
  const uint64_t nblocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t b = 0; b < nblocks; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), s.rng);

  s.name = name;
  s.body = &body;
  s.nthreads = static_cast<int>(nthreads);
  g_grid_dim = grid;
  g_block_dim = block;
  for (uint64_t b : order) {
    g_block_idx.x = static_cast<unsigned>(b % grid.x);
    g_block_idx.y = static_cast<unsigned>((b / grid.x) % grid.y);
    g_block_idx.z = static_cast<unsigned>(b / (static_cast<uint64_t>(grid.x) * grid.y));
    s.live = s.nthreads;
    s.barrier_arrived = 0;
    for (int w = 0; w * kWarpSize < s.nthreads; ++w) {
      s.warps[w].live = std::min(kWarpSize, s.nthreads - w * kWarpSize);
      s.warps[w].arrived = 0;
    }
    s.shmem.assign(shmem, 0xA5);
    s.done = 0;
    s.work_gen += 1;
    for (int i = 0; i < s.nthreads; ++i) s.worker_cv[static_cast<size_t>(i)]->notify_one();
    s.cv_done.wait(lock, [&] { return s.done == s.nthreads; });
    s.blocks += 1;
  }
  s.body = nullptr;
}

void block_barrier() {
  require_in_kernel("__syncthreads");
  State& s = st();
  std::unique_lock<std::mutex> lock(s.m);
  const uint64_t gen = s.barrier_gen;
  if (++s.barrier_arrived == s.live) {
    s.barrier_arrived = 0;
    s.barrier_gen += 1;
    s.cv_block.notify_all();
    return;
  }
  wait_or_die(s.cv_block, lock, [&] { return s.barrier_gen != gen; }, "__syncthreads");
}

void warp_exchange(unsigned mask, const void* in, void* out, size_t bytes, ShflMode mode, int arg,
                   int width, const char* name) {
  require_in_kernel(name);
  State& s = st();
  const int tid = linear_tid();
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  if (mask != 0xffffffffu) {
    fail("%s in kernel %s with mask 0x%08x: the emulator (and these kernels) need the full mask",
         name, s.name, mask);
  }
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0) {
    fail("%s in kernel %s: width %d is not a power of two <= 32", name, s.name, width);
  }
  Warp& w = s.warps[warp];
  std::unique_lock<std::mutex> lock(w.m);
  if ((warp + 1) * kWarpSize > s.nthreads) {
    fail("%s in kernel %s: warp %d of a %d-thread block is partial (%d lanes)", name, s.name, warp,
         s.nthreads, s.nthreads - warp * kWarpSize);
  }
  if (w.live != kWarpSize) {
    fail("%s in kernel %s, block (%u,%u,%u): only %d of 32 lanes of warp %d are alive", name,
         s.name, g_block_idx.x, g_block_idx.y, g_block_idx.z, w.live, warp);
  }
  // Every lane deposits its value, then waits for the other 31.
  const uint64_t gen = w.gen;
  const int parity = static_cast<int>(gen & 1u);
  std::memcpy(w.slot[parity][lane], in, bytes);
  w.mode[lane] = mode;
  if (++w.arrived == kWarpSize) {
    for (int l = 0; l < kWarpSize; ++l) {
      if (w.mode[l] != mode) {
        fail("kernel %s: lanes of warp %d meet in different warp-synchronous calls", s.name, warp);
      }
    }
    w.arrived = 0;
    w.gen += 1;
    w.cv.notify_all();
  } else {
    wait_or_die(w.cv, lock, [&] { return w.gen != gen; }, name);
  }
  // Read the source lane (CUDA semantics: out-of-segment sources return the lane's own value).
  const int base = lane / width * width;
  const int sub = lane % width;
  int src = lane;
  switch (mode) {
    case ShflMode::kIdx: src = base + ((arg % width) + width) % width; break;
    case ShflMode::kUp: src = sub - arg >= 0 ? lane - arg : lane; break;
    case ShflMode::kDown: src = sub + arg < width ? lane + arg : lane; break;
    case ShflMode::kXor: {
      const int x = lane ^ arg;
      src = x / width * width == base && x < kWarpSize ? x : lane;
      break;
    }
    case ShflMode::kSync: src = lane; break;
  }
  std::memcpy(out, w.slot[parity][src], bytes);
}

}  // namespace playbook_emu

// ---------------------------------------------------------------------------------------------
// The CUDA runtime API calls of csrc/cuda, on the host (declared by cuda_runtime_api.h).
// ---------------------------------------------------------------------------------------------
using playbook_emu::g_last_error;

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = playbook_emu::tls_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device != 0) return g_last_error = cudaErrorInvalidDevice;
  playbook_emu::tls_device = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = playbook_emu::sm_count(); return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }
const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaError (emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "emulated CUDA error";
  }
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t) {
  std::memset(dst, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t count) {
  std::memset(dst, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind,
                            cudaStream_t) {
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void*,
                                                          int block_size, size_t) {
  *num_blocks = block_size > 0 ? 2048 / block_size : 0;
  if (*num_blocks > 32) *num_blocks = 32;
  return cudaSuccess;
}
