// Ghost batch norm on the CPU: work split, per-(ghost batch, channel) finalization and running
// stats (NOTE: [Ghost batch norm layout], NOTE: [Ghost batch norm numerics] in
// playbook/ghost_bn.h). The inner loops are in csrc/cpu/kernels/ghost_bn_kernel.cpp.
//
// NOTE: [Ghost batch norm work split]
// Work items never depend on the thread count. Contiguous layout: statistics and backward sums
// are one item per region (ghost batch x block of consecutive channels, NOTE: [Ghost batch norm
// regions] in kernels/ghost_bn_kernel.cpp), read in memory order while every channel still adds
// its planes in sample order; elementwise passes are groups of whole planes; the backward
// computes dx of each region right after its sums. Channels-last layout: the rows of each ghost
// batch are cut into blocks of kRowBlockElems / c rows (never crossing a ghost batch); each block
// sums into its own partial [2, c] buffer, and the partials of a ghost batch are merged in block
// order; a ghost batch of up to kFusedRowBytes of input is one item from its sums to its output
// (forward and backward), larger ones go window by window (whole ghost batches, all threads on one
// window: NOTE: [Ghost batch norm forward windows], [Ghost batch norm backward windows]). Which of
// these paths runs (and the region size, and streaming stores) may depend on the shape and the
// thread count, never the bits: every path performs the same operations in the same order for each
// (ghost batch, channel) and each element.
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/ghost_bn_kernels.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "playbook/check.h"
#include "playbook/ghost_bn.h"

namespace playbook {

void check_ghost_bn_shape(const GhostBNShape& sh) {
  PLAYBOOK_CHECK(sh.n >= 1, "ghost batch norm: batch size n=", sh.n, ", expected >= 1");
  PLAYBOOK_CHECK(sh.c >= 1, "ghost batch norm: channels c=", sh.c, ", expected >= 1");
  PLAYBOOK_CHECK(sh.s >= 1, "ghost batch norm: spatial size s=", sh.s, ", expected >= 1");
  PLAYBOOK_CHECK(sh.vbs >= 1, "Invalid virtual_batch_size: ", sh.vbs, " (expected an int >= 1)");
  PLAYBOOK_CHECK(sh.dtype == DType::kFloat32 || sh.dtype == DType::kBFloat16 || sh.dtype == DType::kFloat16,
                 "ghost batch norm: dtype code ", static_cast<int>(sh.dtype),
                 ", expected float32 (0), bfloat16 (1) or float16 (2)");
}

namespace cpu {

#include "playbook/ghost_bn_math.h"

namespace {

constexpr int64_t kRowBlockElems = 65536;   // elements per channels-last block (partials: 2c doubles each)
constexpr int64_t kItemElems = 16384;       // elements per elementwise work item (contiguous)
constexpr int64_t kMinParallelElems = 1 << 15;
// Contiguous-layout reductions: elements per sample and region (up to kMaxRegionChannels planes).
// Measured on this project's VM (2 threads, cold caches, kernels alone): 16384 instead of 4096
// makes the NCHW forward 1.2-1.45x faster at N=256 C=64 16x16 and N=512 C=32 32x32 (fp32 and
// bf16): the statistics pass reads whole samples (or 16 planes) in one sequential run.
constexpr int64_t kRegionRun = 16384;
constexpr int64_t kRegionItemsPerThread = 4;
// Fused contiguous passes (NOTE: [Ghost batch norm fused forward regions], the fused backward):
// regions read about kFusedRegionBytes of input (x in the forward, x and dy in the backward), the
// second read of the region coming from the last-level cache. Measured on this project's VM (32 MB
// L3, 1 MB L2 per core, 2 threads, cold caches, kernels alone, alternating in one process): 8 MB
// instead of the earlier 32768 elements (128 KB fp32) makes the NCHW backward 1.4-2.5x faster and
// the forward 1.2-1.4x at N=256 C=64 16x16 and N=512 C=32 32x32 (fp32 and bf16; N=128 C=256 8x8
// unchanged): a region reads each sample's planes as one sequential run of up to 64 planes
// instead of runs of 1-4 planes one sample apart, which the hardware prefetchers follow poorly;
// 16 MB per region measured slower for the fp32 backward (two threads' regions no longer fit in
// the cache).
constexpr int64_t kFusedRegionBytes = int64_t{8} << 20;
// Fused channels-last passes (one item per ghost batch, sums then output): the largest ghost batch,
// in bytes of input read (x in the forward, x and dy in the backward). Measured on this project's
// VM (2 threads, cold caches, kernels alone): ghost batches of 0.5M-4M elements, which an earlier
// 256K-element limit sent to the separate passes, run 1.05-1.5x faster fused (forward and
// backward; bf16 N=512 C=32 32x32 vbs=64 1.5x), the second read of a ghost batch coming from the
// last-level cache instead of memory; but the fp32 backward of N=512 C=32 32x32 vbs=64 (16 MB of
// x and dy per ghost batch, 32 MB for two threads' items: the whole L3) runs 1.15x faster in
// windows of one ghost batch shared by the threads (NOTE: [Ghost batch norm backward windows]).
constexpr int64_t kFusedRowBytes = int64_t{8} << 20;
constexpr int64_t kStreamBytes = int64_t{8} << 20;  // float32 outputs this large use streaming stores
// Windows (NOTE: [Ghost batch norm forward windows], [Ghost batch norm backward windows]): inputs
// (x; x and dy) above kWindowMinBytes, windows of about kWindowBytes. Measured on this project's VM (32 MB L3, 2
// threads, cold caches, kernels alone): fp32 N=512 C=32 32x32 vbs=64 forward 5.5 -> 4.8 ms with
// 2-8 MB windows; bf16 (its statistics pass is bound by the double sums, not the memory) and
// inputs that fit in the cache unchanged.
constexpr int64_t kWindowMinBytes = int64_t{16} << 20;
constexpr int64_t kWindowBytes = int64_t{8} << 20;

const GhostBNKernels& gbn_kernels() {
#ifdef PLAYBOOK_SIMD_X86
  const char* level = kernels().name;
  if (std::strcmp(level, "avx512") == 0) return avx512::ghost_bn_kernels();
  if (std::strcmp(level, "avx2") == 0) return avx2::ghost_bn_kernels();
#endif
  return portable::ghost_bn_kernels();
}

// Whether the output (y or dx) is written with streaming stores (NOTE: [Ghost batch norm streaming
// stores] in kernels/ghost_bn_kernel.cpp): float32 outputs of 8 MB or more. Measured on this
// project's VM (32 MB L3 shared by all its cores): forward and backward 1.1-1.3x faster from 8 MB
// to 67 MB. The price is that a consumer reading the output right away finds it in memory, not in
// the last-level cache; at these sizes, next to x (and dy), little of it would stay there.
bool stream_output(const GhostBNShape& sh) {
  return sh.dtype == DType::kFloat32 && sh.n * sh.c * sh.s * dtype_size(sh.dtype) >= kStreamBytes;
}

// Bytes of `tensors` inputs (x; x and dy) of one full ghost batch.
int64_t ghost_bytes(const GhostBNShape& sh, int64_t tensors) {
  return tensors * (sh.vbs < sh.n ? sh.vbs : sh.n) * sh.c * sh.s * dtype_size(sh.dtype);
}

// Ghost batches per window (NOTE: [Ghost batch norm forward windows], [Ghost batch norm backward
// windows]) over `tensors` inputs (x; x and dy): all of them (no windows) when the inputs are at
// most kWindowMinBytes, else as many whole ghost batches as fit in kWindowBytes (at least one).
int64_t window_ghosts(const GhostBNShape& sh, int64_t tensors = 1) {
  const int64_t G = sh.num_ghost();
  const int64_t esize = dtype_size(sh.dtype);
  if (tensors * sh.n * sh.c * sh.s * esize <= kWindowMinBytes) return G;
  const int64_t wg = kWindowBytes / ghost_bytes(sh, tensors);
  return wg < 1 ? 1 : wg;
}

int threads_for(const GhostBNShape& sh, int num_threads) {
  return sh.n * sh.c * sh.s < kMinParallelElems || num_threads < 1 ? 1 : num_threads;
}

const char* at(const void* base, int64_t index, DType dtype) {
  return static_cast<const char*>(base) + index * dtype_size(dtype);
}
char* at(void* base, int64_t index, DType dtype) {
  return static_cast<char*>(base) + index * dtype_size(dtype);
}

double load_one(const void* base, int64_t index, DType dtype) {
  const char* p = at(base, index, dtype);
  switch (dtype) {
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, p, sizeof(f));
      return f;
    }
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, p, sizeof(h));
      const uint32_t u = static_cast<uint32_t>(h) << 16;
      float f;
      std::memcpy(&f, &u, sizeof(f));
      return f;
    }
    case DType::kFloat16: {
      _Float16 h;
      std::memcpy(&h, p, sizeof(h));
      return static_cast<double>(h);
    }
  }
  return 0.0;
}

// Channels-last blocks (NOTE: [Ghost batch norm work split]).
struct RowBlocks {
  int64_t rows_per_block, full_ghosts, blocks_per_full, last_rows, blocks_last;

  explicit RowBlocks(const GhostBNShape& sh) {
    rows_per_block = kRowBlockElems / sh.c < 1 ? 1 : kRowBlockElems / sh.c;
    full_ghosts = sh.n / sh.vbs;
    const int64_t full_rows = sh.vbs * sh.s;
    blocks_per_full = (full_rows + rows_per_block - 1) / rows_per_block;
    last_rows = (sh.n % sh.vbs) * sh.s;
    blocks_last = (last_rows + rows_per_block - 1) / rows_per_block;
  }
  int64_t total() const { return full_ghosts * blocks_per_full + blocks_last; }
  // Ghost batch, first row and row count of block b.
  void get(const GhostBNShape& sh, int64_t b, int64_t* g, int64_t* row0, int64_t* rows) const {
    int64_t local;
    int64_t ghost_rows;
    if (b < full_ghosts * blocks_per_full) {
      *g = b / blocks_per_full;
      local = b % blocks_per_full;
      ghost_rows = sh.vbs * sh.s;
    } else {
      *g = full_ghosts;
      local = b - full_ghosts * blocks_per_full;
      ghost_rows = last_rows;
    }
    const int64_t begin = local * rows_per_block;
    *row0 = *g * sh.vbs * sh.s + begin;
    *rows = ghost_rows - begin < rows_per_block ? ghost_rows - begin : rows_per_block;
  }
  // First block of ghost batch g and its block count.
  void range(int64_t g, int64_t* first, int64_t* count) const {
    *first = g * blocks_per_full;
    *count = g < full_ghosts ? blocks_per_full : blocks_last;
  }
};

// Channels per region (NOTE: [Ghost batch norm regions] in kernels/ghost_bn_kernel.cpp): enough
// for runs of about `run` elements per sample, at most kMaxRegionChannels. Results do not depend
// on it at all (every channel sums its planes in the same order), so callers may also reduce it
// for the thread count.
int64_t region_channels(const GhostBNShape& sh, int64_t run) {
  int64_t cb = (run + sh.s - 1) / sh.s;
  if (cb > kMaxRegionChannels) cb = kMaxRegionChannels;
  if (cb > sh.c) cb = sh.c;
  return cb < 1 ? 1 : cb;
}

// Channels per region of the fused contiguous passes, which read `tensors` inputs of the region
// (x; x and dy): about kFusedRegionBytes in all.
int64_t fused_region_channels(const GhostBNShape& sh, int64_t tensors) {
  const int64_t samples = sh.vbs < sh.n ? sh.vbs : sh.n;
  return region_channels(sh, kFusedRegionBytes / (tensors * dtype_size(sh.dtype) * samples));
}

// A region (NOTE: [Ghost batch norm regions]) of the contiguous layout: ghost batch g, channels
// [c0, c0 + nc); its planes start at element `first` (one sample apart: c * s), and its
// statistics at index i0 of the [G, C] buffers.
struct Region {
  int64_t g, c0, nc, first, planes, i0;
};

// Runs fn(region) for every region of (at most) cb channels, on up to `threads` threads.
template <typename Fn>
void for_each_region(const GhostBNShape& sh, int64_t cb, int threads, const Fn& fn) {
  const int64_t blocks = (sh.c + cb - 1) / cb;
  parallel_for(sh.num_ghost() * blocks, threads, [&](int64_t item) {
    const int64_t g = item / blocks;
    const int64_t c0 = item % blocks * cb;
    fn(Region{g, c0, sh.c - c0 < cb ? sh.c - c0 : cb, (g * sh.vbs * sh.c + c0) * sh.s, sh.ghost_samples(g),
              g * sh.c + c0});
  });
}

// Per (ghost batch, channel) double sums a, b over the input(s), by layout. `planes(g, c0, nc, a,
// b)` sums the planes of channels [c0, c0 + nc) of ghost batch g into a[0..nc), b[0..nc); `rows(row0,
// rows, g, a, b)` sums rows into per-channel partials.
template <typename Planes, typename Rows>
void reduce(const GhostBNShape& sh, int num_threads, double* out_a, double* out_b, const Planes& planes,
            const Rows& rows) {
  const int64_t G = sh.num_ghost();
  const int threads = threads_for(sh, num_threads);
  if (!sh.channels_last) {
    // Long runs (NOTE: [Ghost batch norm regions]), halved while there are fewer than
    // kRegionItemsPerThread items per thread (a single ghost batch, few channels).
    int64_t cb = region_channels(sh, kRegionRun);
    while (cb > 1 && G * ((sh.c + cb - 1) / cb) < kRegionItemsPerThread * threads) cb = (cb + 1) / 2;
    for_each_region(sh, cb, threads,
                    [&](const Region& r) { planes(r.g, r.c0, r.nc, out_a + r.i0, out_b + r.i0); });
    return;
  }
  const RowBlocks blocks(sh);
  std::vector<double> partial(static_cast<size_t>(blocks.total() * 2 * sh.c), 0.0);
  parallel_for(blocks.total(), threads, [&](int64_t blk) {
    int64_t g, row0, nrows;
    blocks.get(sh, blk, &g, &row0, &nrows);
    double* pa = partial.data() + blk * 2 * sh.c;
    rows(row0, nrows, g, pa, pa + sh.c);
  });
  for (int64_t g = 0; g < G; ++g) {
    int64_t first, count;
    blocks.range(g, &first, &count);
    double* a = out_a + g * sh.c;
    double* b = out_b + g * sh.c;
    for (int64_t j = 0; j < sh.c; ++j) a[j] = b[j] = 0.0;
    for (int64_t blk = first; blk < first + count; ++blk) {
      const double* pa = partial.data() + blk * 2 * sh.c;
      for (int64_t j = 0; j < sh.c; ++j) {
        a[j] += pa[j];
        b[j] += pa[sh.c + j];
      }
    }
  }
}

// The sums a, b [C] of ghost batch g from its row blocks, in block order, with the same operations
// as reduce() (each block summed into zeroed partials pa, pb [C], then added to the totals):
// `rows(row0, nrows)` sums one block into pa, pb. For the one-pass (fused) channels-last paths.
template <typename Rows>
void sum_ghost_rows(const GhostBNShape& sh, const RowBlocks& blocks, int64_t g, double* pa, double* pb, double* a,
                    double* b, const Rows& rows) {
  const int64_t C = sh.c;
  for (int64_t j = 0; j < C; ++j) a[j] = b[j] = 0.0;
  int64_t first, count;
  blocks.range(g, &first, &count);
  for (int64_t blk = first; blk < first + count; ++blk) {
    int64_t gg, row0, nrows;
    blocks.get(sh, blk, &gg, &row0, &nrows);
    for (int64_t j = 0; j < C; ++j) pa[j] = pb[j] = 0.0;
    rows(row0, nrows);
    for (int64_t j = 0; j < C; ++j) {
      a[j] += pa[j];
      b[j] += pb[j];
    }
  }
}

// Runs fn over the elementwise work items: for contiguous, runs of consecutive planes of one sample
// (p0, count, g, c0: planes p0.. of ghost batch g, channels c0..); for channels-last, the row
// blocks (row0, rows, g).
template <typename Planes, typename Rows>
void elementwise(const GhostBNShape& sh, int num_threads, const Planes& planes, const Rows& rows) {
  const int threads = threads_for(sh, num_threads);
  const bool stream = stream_output(sh);
  void (*fence)() = gbn_kernels().fence;
  if (!sh.channels_last) {
    const int64_t per_item = kItemElems / sh.s < 1 ? 1 : kItemElems / sh.s;
    const int64_t num_planes = sh.n * sh.c;
    parallel_for((num_planes + per_item - 1) / per_item, threads, [&](int64_t item) {
      const int64_t p0 = item * per_item;
      const int64_t p1 = p0 + per_item < num_planes ? p0 + per_item : num_planes;
      for (int64_t p = p0; p < p1;) {
        const int64_t c0 = p % sh.c;
        const int64_t count = p1 - p < sh.c - c0 ? p1 - p : sh.c - c0;
        planes(p, count, (p / sh.c) / sh.vbs, c0);
        p += count;
      }
      if (stream) fence();
    });
    return;
  }
  const RowBlocks blocks(sh);
  parallel_for(blocks.total(), threads, [&](int64_t blk) {
    int64_t g, row0, nrows;
    blocks.get(sh, blk, &g, &row0, &nrows);
    rows(row0, nrows, g);
    if (stream) fence();
  });
}

// out[j] = element index + j, for j < n (exact widening to double).
void load_run(const void* base, int64_t index, int64_t n, DType dtype, double* out) {
  switch (dtype) {
    case DType::kFloat32: {
      const float* p = static_cast<const float*>(base) + index;
      for (int64_t j = 0; j < n; ++j) out[j] = p[j];
      return;
    }
    default:
      for (int64_t j = 0; j < n; ++j) out[j] = load_one(base, index + j, dtype);
  }
}

// Shift K of (ghost batch g, channel c): its first element (NOTE: [Ghost batch norm numerics]).
double first_of(const GhostBNShape& sh, const void* x, int64_t g, int64_t c) {
  const int64_t first = sh.channels_last ? g * sh.vbs * sh.s * sh.c + c : (g * sh.vbs * sh.c + c) * sh.s;
  return load_one(x, first, sh.dtype);
}

// The running-stat EMA, once per ghost batch in order (the second half of ghost_bn_finalize).
void update_running(int64_t G, int64_t C, const double* mean, const double* m2, int64_t count, int64_t count_last,
                    double momentum, int64_t num_batches_tracked, float* running_mean, float* running_var) {
  for (int64_t g = 0; g < G; ++g) {
    const double m = static_cast<double>(g + 1 < G ? count : count_last);
    const double f = gbn_ema_factor(momentum, num_batches_tracked, g);
    gbn_kernels().ema(C, f, m, mean + g * C, m2 + g * C, running_mean, running_var);
  }
}

}  // namespace

void ghost_bn_stats(const GhostBNShape& sh, const void* x, double* mean, double* m2, int num_threads) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(x != nullptr && mean != nullptr && m2 != nullptr, "ghost_bn_stats: null pointer");
  const GhostBNKernels& k = gbn_kernels();
  const int64_t G = sh.num_ghost();
  const int64_t C = sh.c;
  // Shift K per (ghost batch, channel): its first element.
  std::vector<double> shift(static_cast<size_t>(G * C));
  for (int64_t g = 0; g < G; ++g) {
    if (sh.channels_last) {
      load_run(x, g * sh.vbs * sh.s * C, C, sh.dtype, shift.data() + g * C);
    } else {
      for (int64_t c = 0; c < C; ++c) shift[g * C + c] = first_of(sh, x, g, c);
    }
  }
  reduce(
      sh, num_threads, mean, m2,
      [&](int64_t g, int64_t c0, int64_t nc, double* a, double* b) {
        k.stats_region(at(x, (g * sh.vbs * C + c0) * sh.s, sh.dtype), C * sh.s, sh.ghost_samples(g), nc, sh.s,
                       sh.dtype, shift.data() + g * C + c0, a, b);
      },
      [&](int64_t row0, int64_t rows, int64_t g, double* a, double* b) {
        k.stats_rows(at(x, row0 * C, sh.dtype), rows, C, sh.dtype, shift.data() + g * C, a, b);
      });
  for (int64_t g = 0; g < G; ++g) {
    k.moments(C, static_cast<double>(sh.ghost_count(g)), shift.data() + g * C, mean + g * C, m2 + g * C);
  }
}

void ghost_bn_finalize(int64_t G, int64_t C, const double* mean, const double* m2, int64_t count, int64_t count_last,
                       double eps, double momentum, int64_t num_batches_tracked, float* running_mean,
                       float* running_var, float* save_mean, float* save_invstd) {
  PLAYBOOK_CHECK(G >= 1 && C >= 1, "ghost_bn_finalize: G=", G, " C=", C);
  PLAYBOOK_CHECK((running_mean == nullptr) == (running_var == nullptr),
                 "ghost_bn_finalize: running_mean and running_var must both be given or both be null");
  PLAYBOOK_CHECK(count >= 1 && count_last >= 1, "ghost_bn_finalize: counts ", count, ", ", count_last,
                 ", expected >= 1");
  const GhostBNKernels& k = gbn_kernels();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t i = g * C;
    k.save_stats(C, static_cast<double>(g + 1 < G ? count : count_last), eps, mean + i, m2 + i, nullptr, nullptr,
                 save_mean + i, save_mean + G * C + i, save_invstd + i, nullptr, nullptr);
  }
  if (running_mean == nullptr) return;
  update_running(G, C, mean, m2, count, count_last, momentum, num_batches_tracked, running_mean, running_var);
}

namespace {

// ghost_bn_apply with the two halves of the saved mean given apart (hi, lo: [G, C] each; a window
// of ghost batches points into the whole batch's [2, G, C]) and the choice of streaming stores
// given (a window of a larger batch streams as the whole batch does).
void apply_impl(const GhostBNShape& sh, const void* x, void* y, const float* hi, const float* lo,
                const float* save_invstd, const float* weight, const float* bias, int num_threads, bool stream) {
  const GhostBNKernels& k = gbn_kernels();
  const int64_t G = sh.num_ghost();
  const int64_t C = sh.c;
  std::vector<float> alpha(static_cast<size_t>(G * C));
  std::vector<float> beta(static_cast<size_t>(G * C));
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = g * C + c;
      alpha[i] = weight != nullptr ? save_invstd[i] * weight[c] : save_invstd[i];
      beta[i] = bias != nullptr ? bias[c] : 0.f;
    }
  }
  elementwise(
      sh, num_threads,
      [&](int64_t p, int64_t count, int64_t g, int64_t c0) {
        const int64_t i = g * C + c0;
        k.apply_planes(at(x, p * sh.s, sh.dtype), at(y, p * sh.s, sh.dtype), count, sh.s, sh.dtype, hi + i, lo + i,
                       alpha.data() + i, beta.data() + i, stream);
      },
      [&](int64_t row0, int64_t rows, int64_t g) {
        k.apply_rows(at(x, row0 * C, sh.dtype), at(y, row0 * C, sh.dtype), rows, C, sh.dtype, hi + g * C, lo + g * C,
                     alpha.data() + g * C, beta.data() + g * C, stream);
      });
}

}  // namespace

void ghost_bn_apply(const GhostBNShape& sh, const void* x, void* y, const float* save_mean,
                    const float* save_invstd, const float* weight, const float* bias, int num_threads) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(x != nullptr && y != nullptr && save_mean != nullptr && save_invstd != nullptr,
                 "ghost_bn_apply: null pointer");
  const int64_t GC = sh.num_ghost() * sh.c;
  apply_impl(sh, x, y, save_mean, save_mean + GC, save_invstd, weight, bias, num_threads, stream_output(sh));
}

namespace {

// ghost_bn_backward_reduce with the two halves of the saved mean given apart (hi, lo: [G, C] each;
// a window of ghost batches points into the whole batch's [2, G, C]).
void backward_reduce_impl(const GhostBNShape& sh, const void* dy, const void* x, const float* hi, const float* lo,
                          double* sdy, double* sdyx, int num_threads) {
  const GhostBNKernels& k = gbn_kernels();
  const int64_t C = sh.c;
  reduce(
      sh, num_threads, sdy, sdyx,
      [&](int64_t g, int64_t c0, int64_t nc, double* a, double* b) {
        const int64_t off = (g * sh.vbs * C + c0) * sh.s;
        k.bwd_reduce_region(at(dy, off, sh.dtype), at(x, off, sh.dtype), C * sh.s, sh.ghost_samples(g), nc, sh.s,
                            sh.dtype, hi + g * C + c0, lo + g * C + c0, a, b);
      },
      [&](int64_t row0, int64_t rows, int64_t g, double* a, double* b) {
        k.bwd_reduce_rows(at(dy, row0 * C, sh.dtype), at(x, row0 * C, sh.dtype), rows, C, sh.dtype, hi + g * C,
                          lo + g * C, a, b);
      });
}

// ghost_bn_backward_apply with hi, lo apart (as backward_reduce_impl) and the choice of streaming
// stores given (a window streams as the whole batch does).
void backward_apply_impl(const GhostBNShape& sh, const void* dy, const void* x, const float* hi, const float* lo,
                         const float* save_invstd, const float* weight, const double* sdy, const double* sdyx,
                         int64_t count, int64_t count_last, void* dx, int num_threads, bool stream) {
  const GhostBNKernels& k = gbn_kernels();
  const int64_t G = sh.num_ghost();
  const int64_t C = sh.c;
  std::vector<float> mdy(static_cast<size_t>(G * C));
  std::vector<float> kk(static_cast<size_t>(G * C));
  std::vector<float> a(static_cast<size_t>(G * C));
  for (int64_t g = 0; g < G; ++g) {
    const int64_t i = g * C;
    k.grad_coefs(C, static_cast<double>(g + 1 < G ? count : count_last), sdy + i, sdyx + i, save_invstd + i, weight,
                 mdy.data() + i, kk.data() + i, a.data() + i);
  }
  elementwise(
      sh, num_threads,
      [&](int64_t p, int64_t count, int64_t g, int64_t c0) {
        const int64_t i = g * C + c0;
        const int64_t off = p * sh.s;
        k.bwd_apply_planes(at(dy, off, sh.dtype), at(x, off, sh.dtype), at(dx, off, sh.dtype), count, sh.s, sh.dtype,
                           hi + i, lo + i, mdy.data() + i, kk.data() + i, a.data() + i, stream);
      },
      [&](int64_t row0, int64_t rows, int64_t g) {
        const int64_t off = row0 * C;
        k.bwd_apply_rows(at(dy, off, sh.dtype), at(x, off, sh.dtype), at(dx, off, sh.dtype), rows, C, sh.dtype,
                         hi + g * C, lo + g * C, mdy.data() + g * C, kk.data() + g * C, a.data() + g * C, stream);
      });
}

}  // namespace

void ghost_bn_backward_reduce(const GhostBNShape& sh, const void* dy, const void* x, const float* save_mean,
                              double* sdy, double* sdyx, int num_threads) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(dy != nullptr && x != nullptr && save_mean != nullptr && sdy != nullptr && sdyx != nullptr,
                 "ghost_bn_backward_reduce: null pointer");
  const int64_t GC = sh.num_ghost() * sh.c;
  backward_reduce_impl(sh, dy, x, save_mean, save_mean + GC, sdy, sdyx, num_threads);
}

void ghost_bn_backward_apply(const GhostBNShape& sh, const void* dy, const void* x, const float* save_mean,
                             const float* save_invstd, const float* weight, const double* sdy,
                             const double* sdyx, int64_t count, int64_t count_last, void* dx,
                             int num_threads) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(dy != nullptr && x != nullptr && dx != nullptr && save_mean != nullptr &&
                     save_invstd != nullptr && sdy != nullptr && sdyx != nullptr && count >= 1 && count_last >= 1,
                 "ghost_bn_backward_apply: null pointer");
  const int64_t GC = sh.num_ghost() * sh.c;
  backward_apply_impl(sh, dy, x, save_mean, save_mean + GC, save_invstd, weight, sdy, sdyx, count, count_last, dx,
                      num_threads, stream_output(sh));
}

namespace {

// Two [n] double arrays the caller did not provide (null pointers: one allocation less in Python),
// backed by `storage`; left alone when the caller passed them.
void own_pair_if_null(std::vector<double>* storage, int64_t n, double** first, double** second) {
  if (*first != nullptr) return;
  storage->resize(static_cast<size_t>(2 * n));
  *first = storage->data();
  *second = *first + n;
}

}  // namespace

void ghost_bn_forward_train(const GhostBNShape& sh, const void* x, void* y, const float* weight, const float* bias,
                            double eps, double momentum, int64_t num_batches_tracked, float* running_mean,
                            float* running_var, double* mean, double* m2, float* save_mean, float* save_invstd,
                            int num_threads) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(x != nullptr && y != nullptr && (mean == nullptr) == (m2 == nullptr) && save_mean != nullptr &&
                     save_invstd != nullptr,
                 "ghost_bn_forward_train: null pointer");
  PLAYBOOK_CHECK((running_mean == nullptr) == (running_var == nullptr),
                 "ghost_bn_forward_train: running_mean and running_var must both be given or both be null");
  const int64_t G = sh.num_ghost();
  const int64_t C = sh.c;
  std::vector<double> scratch;
  own_pair_if_null(&scratch, G * C, &mean, &m2);
  const bool stream = stream_output(sh);
  // NOTE: [Ghost batch norm forward passes]: the contiguous layout is normalized region by region
  // right after each region's statistics (NOTE: [Ghost batch norm fused forward regions]; per
  // (ghost batch, channel) it measured 2x slower: its planes sit C*s elements apart, a power of two
  // in the usual shapes, so they alias in the caches), unless there are too few regions per
  // thread. Channels-last ghost batches of up to kFusedRowBytes of x (with at least two per
  // thread) are normalized right after their statistics: 1d (4096, 1024) about 1.2x faster
  // forward. Otherwise two passes (statistics, then output), in windows for large inputs (either
  // layout).
  const int threads = threads_for(sh, num_threads);
  const int64_t fcb = fused_region_channels(sh, 1);
  const int64_t fblocks = (C + fcb - 1) / fcb;
  if (!sh.channels_last && G * fblocks >= kRegionItemsPerThread * threads) {
    // NOTE: [Ghost batch norm fused forward regions]: one item per region (ghost batch x block of
    // channels reading about kFusedRegionBytes of x) from its sums (the same shifts and
    // per-channel order as ghost_bn_stats) through its saved statistics (as ghost_bn_finalize) to
    // its output (as ghost_bn_apply), the second read of x coming from the cache: the same bits as
    // the three passes. Measured on this project's VM (forward kernel alone, 2 threads, cold
    // caches, alternating with the passes below in one process): with regions of 32768 elements
    // (128 KB fp32), fp32 N=512 C=32 32x32 vbs=64 1.6-1.9x faster than the windows, N=128 C=256
    // 8x8 vbs=16 1.3-1.5x, N=256 C=64 16x16 vbs=32 unchanged; the regions of kFusedRegionBytes
    // are 1.2-1.4x faster again at N=256 and N=512, now also for 16-bit input above
    // kWindowMinBytes (bf16 N=512: 3.9 -> 3.1 ms), which the small regions ran slower than the
    // windows. With fewer items than kRegionItemsPerThread per thread (one ghost batch and few
    // channels) the passes below keep both threads busy.
    const GhostBNKernels& k = gbn_kernels();
    for_each_region(sh, fcb, threads, [&](const Region& r) {
      const auto [g, c0, nc, first, planes, i0] = r;
      double shift[kMaxRegionChannels];
      for (int64_t j = 0; j < nc; ++j) shift[j] = first_of(sh, x, g, c0 + j);
      k.stats_region(at(x, first, sh.dtype), C * sh.s, planes, nc, sh.s, sh.dtype, shift, mean + i0, m2 + i0);
      const double m = static_cast<double>(planes * sh.s);
      float alpha[kMaxRegionChannels], beta[kMaxRegionChannels];
      k.moments(nc, m, shift, mean + i0, m2 + i0);
      k.save_stats(nc, m, eps, mean + i0, m2 + i0, weight != nullptr ? weight + c0 : nullptr,
                   bias != nullptr ? bias + c0 : nullptr, save_mean + i0, save_mean + G * C + i0, save_invstd + i0, alpha,
                   beta);
      for (int64_t p = 0; p < planes; ++p) {
        const int64_t off = first + p * C * sh.s;
        k.apply_planes(at(x, off, sh.dtype), at(y, off, sh.dtype), nc, sh.s, sh.dtype, save_mean + i0,
                       save_mean + G * C + i0, alpha, beta, stream);
      }
      if (stream) k.fence();
    });
    if (running_mean != nullptr) {
      update_running(G, C, mean, m2, sh.ghost_count(0), sh.ghost_count(G - 1), momentum, num_batches_tracked,
                     running_mean, running_var);
    }
    return;
  }
  const bool rows_fused = sh.channels_last && G >= 2 * threads && ghost_bytes(sh, 1) <= kFusedRowBytes;
  const int64_t wg = window_ghosts(sh);
  if (!rows_fused && wg < G) {
    // NOTE: [Ghost batch norm forward windows]: an input larger than the last-level cache is
    // normalized window by window (whole ghost batches, about kWindowBytes of input), the
    // window's statistics, saved statistics and output in turn, so that the second read of x comes
    // from the cache. A window is the same computation on a smaller batch of whole ghost batches
    // (the same regions, shifts and sums per (ghost batch, channel), the same per-element
    // normalization): the same bits as the three passes over the whole batch.
    const GhostBNKernels& k = gbn_kernels();
    for (int64_t g0 = 0; g0 < G; g0 += wg) {
      const int64_t gw = G - g0 < wg ? G - g0 : wg;
      GhostBNShape sub = sh;
      sub.n = (g0 + gw) * sh.vbs < sh.n ? gw * sh.vbs : sh.n - g0 * sh.vbs;
      const int64_t off = g0 * sh.vbs * C * sh.s;
      ghost_bn_stats(sub, at(x, off, sh.dtype), mean + g0 * C, m2 + g0 * C, num_threads);
      const int64_t i0 = g0 * C;
      for (int64_t g = 0; g < gw; ++g) {
        const int64_t i = i0 + g * C;
        k.save_stats(C, static_cast<double>(sub.ghost_count(g)), eps, mean + i, m2 + i, nullptr, nullptr, save_mean + i,
                     save_mean + G * C + i, save_invstd + i, nullptr, nullptr);
      }
      apply_impl(sub, at(x, off, sh.dtype), at(y, off, sh.dtype), save_mean + i0, save_mean + G * C + i0,
                 save_invstd + i0, weight, bias, num_threads, stream);
    }
    if (running_mean != nullptr) {
      update_running(G, C, mean, m2, sh.ghost_count(0), sh.ghost_count(G - 1), momentum, num_batches_tracked,
                     running_mean, running_var);
    }
    return;
  }
  if (!rows_fused) {
    ghost_bn_stats(sh, x, mean, m2, num_threads);
    ghost_bn_finalize(G, C, mean, m2, sh.ghost_count(0), sh.ghost_count(G - 1), eps, momentum, num_batches_tracked,
                      running_mean, running_var, save_mean, save_invstd);
    ghost_bn_apply(sh, x, y, save_mean, save_invstd, weight, bias, num_threads);
    return;
  }
  const GhostBNKernels& k = gbn_kernels();
  // One item per ghost batch, on a region still in the cache: its row blocks summed and merged exactly as ghost_bn_stats does, the
  // saved statistics as ghost_bn_finalize, the rows as ghost_bn_apply (the same bits).
  const RowBlocks blocks(sh);
  parallel_for(G, threads, [&](int64_t g) {
    std::vector<double> buf(static_cast<size_t>(5 * C));
    double* shift = buf.data();
    double* pa = shift + C;
    double* pb = pa + C;
    float* alpha = reinterpret_cast<float*>(pb + C);
    float* beta = alpha + C;
    load_run(x, g * sh.vbs * sh.s * C, C, sh.dtype, shift);  // first_of(sh, x, g, c), c < C
    sum_ghost_rows(sh, blocks, g, pa, pb, mean + g * C, m2 + g * C, [&](int64_t row0, int64_t nrows) {
      k.stats_rows(at(x, row0 * C, sh.dtype), nrows, C, sh.dtype, shift, pa, pb);
    });
    const double m = static_cast<double>(sh.ghost_count(g));
    const int64_t i = g * C;
    k.moments(C, m, shift, mean + i, m2 + i);
    k.save_stats(C, m, eps, mean + i, m2 + i, weight, bias, save_mean + i, save_mean + G * C + i, save_invstd + i, alpha,
                 beta);
    const int64_t row0 = g * sh.vbs * sh.s;
    k.apply_rows(at(x, row0 * C, sh.dtype), at(y, row0 * C, sh.dtype), sh.ghost_samples(g) * sh.s, C, sh.dtype,
                 save_mean + g * C, save_mean + (G + g) * C, alpha, beta, stream);
    if (stream) k.fence();
  });
  if (running_mean != nullptr) {
    update_running(G, C, mean, m2, sh.ghost_count(0), sh.ghost_count(G - 1), momentum, num_batches_tracked,
                   running_mean, running_var);
  }
}

void ghost_bn_backward_train(const GhostBNShape& sh, const void* dy, const void* x, const float* save_mean,
                             const float* save_invstd, const float* weight, double* sdy, double* sdyx, void* dx,
                             float* grad_weight, float* grad_bias, int num_threads) {
  check_ghost_bn_shape(sh);
  PLAYBOOK_CHECK(dy != nullptr && x != nullptr && save_mean != nullptr && save_invstd != nullptr &&
                     (sdy == nullptr) == (sdyx == nullptr),
                 "ghost_bn_backward_train: null pointer");
  const int64_t G = sh.num_ghost();
  const int64_t C = sh.c;
  std::vector<double> scratch;
  own_pair_if_null(&scratch, G * C, &sdy, &sdyx);
  const bool stream = stream_output(sh);
  const int threads = threads_for(sh, num_threads);
  if (sh.channels_last && dx != nullptr && G >= 2 * threads && ghost_bytes(sh, 2) <= kFusedRowBytes) {
    // One item per cached ghost batch (as in the forward): its row blocks summed and merged
    // exactly as ghost_bn_backward_reduce does, then dx as ghost_bn_backward_apply (the same bits).
    const GhostBNKernels& k = gbn_kernels();
    const RowBlocks blocks(sh);
    parallel_for(G, threads, [&](int64_t g) {
      std::vector<double> buf(static_cast<size_t>(4 * C));
      double* pa = buf.data();
      double* pb = pa + C;
      float* mdy = reinterpret_cast<float*>(pb + C);
      float* kk = mdy + C;
      float* a = kk + C;
      const float* hi = save_mean + g * C;
      const float* lo = save_mean + (G + g) * C;
      sum_ghost_rows(sh, blocks, g, pa, pb, sdy + g * C, sdyx + g * C, [&](int64_t row0, int64_t nrows) {
        k.bwd_reduce_rows(at(dy, row0 * C, sh.dtype), at(x, row0 * C, sh.dtype), nrows, C, sh.dtype, hi, lo, pa, pb);
      });
      const int64_t i = g * C;
      k.grad_coefs(C, static_cast<double>(sh.ghost_count(g)), sdy + i, sdyx + i, save_invstd + i, weight, mdy, kk, a);
      const int64_t off = g * sh.vbs * sh.s * C;
      k.bwd_apply_rows(at(dy, off, sh.dtype), at(x, off, sh.dtype), at(dx, off, sh.dtype), sh.ghost_samples(g) * sh.s,
                       C, sh.dtype, hi, lo, mdy, kk, a, stream);
      if (stream) k.fence();
    });
  } else if (dx == nullptr) {
    backward_reduce_impl(sh, dy, x, save_mean, save_mean + G * C, sdy, sdyx, num_threads);
  } else if (sh.channels_last) {
    // NOTE: [Ghost batch norm backward windows]: the sums of a window of whole ghost batches (about
    // kWindowBytes of x and dy, at least one ghost batch), then its dx, all threads on one window,
    // so that the second read of x and dy comes from the cache; the same blocks, sums and
    // per-element operations as the two passes over the whole batch (the same bits).
    const int64_t wg = window_ghosts(sh, 2);
    for (int64_t g0 = 0; g0 < G; g0 += wg) {
      const int64_t gw = G - g0 < wg ? G - g0 : wg;
      GhostBNShape sub = sh;
      sub.n = (g0 + gw) * sh.vbs < sh.n ? gw * sh.vbs : sh.n - g0 * sh.vbs;
      const int64_t off = g0 * sh.vbs * C * sh.s;
      const int64_t i0 = g0 * C;
      backward_reduce_impl(sub, at(dy, off, sh.dtype), at(x, off, sh.dtype), save_mean + i0, save_mean + G * C + i0,
                           sdy + i0, sdyx + i0, num_threads);
      backward_apply_impl(sub, at(dy, off, sh.dtype), at(x, off, sh.dtype), save_mean + i0, save_mean + G * C + i0,
                          save_invstd + i0, weight, sdy + i0, sdyx + i0, sub.ghost_count(0), sub.ghost_count(gw - 1),
                          at(dx, off, sh.dtype), num_threads, stream);
    }
  } else {
    // One item per region (g, channels [c0, c0 + nc), reading about kFusedRegionBytes of x and
    // dy): its sums, then dx over the same region while it is still in the cache (NOTE: [Ghost
    // batch norm regions]).
    const GhostBNKernels& k = gbn_kernels();
    const int64_t cb = fused_region_channels(sh, 2);
    for_each_region(sh, cb, threads, [&](const Region& r) {
      const auto [g, c0, nc, first, planes, i0] = r;
      k.bwd_reduce_region(at(dy, first, sh.dtype), at(x, first, sh.dtype), C * sh.s, planes, nc, sh.s, sh.dtype,
                          save_mean + i0, save_mean + G * C + i0, sdy + i0, sdyx + i0);
      float mdy[kMaxRegionChannels], kk[kMaxRegionChannels], a[kMaxRegionChannels];
      k.grad_coefs(nc, static_cast<double>(planes * sh.s), sdy + i0, sdyx + i0, save_invstd + i0,
                   weight != nullptr ? weight + c0 : nullptr, mdy, kk, a);
      for (int64_t p = 0; p < planes; ++p) {
        const int64_t off = first + p * C * sh.s;
        k.bwd_apply_planes(at(dy, off, sh.dtype), at(x, off, sh.dtype), at(dx, off, sh.dtype), nc, sh.s, sh.dtype,
                           save_mean + i0, save_mean + G * C + i0, mdy, kk, a, stream);
      }
      if (stream) k.fence();
    });
  }
  if (grad_weight != nullptr || grad_bias != nullptr) {
    ghost_bn_param_grads(G, C, sdy, sdyx, save_invstd, grad_weight, grad_bias);
  }
}

void ghost_bn_param_grads(int64_t G, int64_t C, const double* sdy, const double* sdyx, const float* save_invstd,
                          float* grad_weight, float* grad_bias) {
  // gbn_param_grad's sums (each channel adds its ghost batches in order, in double), walked ghost
  // batch by ghost batch so that the [G, C] arrays are read in memory order: the same bits.
  std::vector<double> gw(static_cast<size_t>(C), 0.0), gb(static_cast<size_t>(C), 0.0);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t c = 0; c < C; ++c) {
      gw[c] += sdyx[g * C + c] * static_cast<double>(save_invstd[g * C + c]);
      gb[c] += sdy[g * C + c];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    if (grad_weight != nullptr) grad_weight[c] = static_cast<float>(gw[c]);
    if (grad_bias != nullptr) grad_bias[c] = static_cast<float>(gb[c]);
  }
}

}  // namespace cpu
}  // namespace playbook
