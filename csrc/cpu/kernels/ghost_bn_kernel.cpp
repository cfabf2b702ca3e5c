// Ghost batch norm inner loops, compiled once per SIMD level (NOTE: [SIMD dispatch] in
// csrc/cpu/kernels.h; numerics in NOTE: [Ghost batch norm numerics], playbook/ghost_bn.h).
//
// Loops are plain C++ over float arrays that the compiler vectorizes, or GCC vector types with the
// same operations per lane; 16-bit data is widened in registers (bfloat16 at the AVX-512 level,
// NOTE: [Ghost batch norm bf16 vectors]) or into fp32 blocks first (NOTE: [16-bit blocks]).
// float32 input: plane sums keep kLanes independent double accumulators per channel (element i of
// a plane goes to lane i % kLanes; blocks are multiples of kLanes) that are combined in a fixed
// pairwise order; row sums accumulate per channel in row order. 16-bit input: float partials over
// short fixed blocks, added in double (NOTE: [Ghost batch norm float blocks]). With
// -ffp-contract=off every level therefore produces the same bits.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__F16C__) || defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/ghost_bn_kernels.h"

namespace playbook {
namespace cpu {
namespace PLAYBOOK_CPU_ISA {

#include "cpu/kernels/kernel_utils.h"
#include "playbook/ghost_bn_math.h"

namespace {

constexpr int kLanes = 16;
// bf16 reductions widen the data in registers at the AVX-512 level (NOTE: [Ghost batch norm bf16
// vectors]); elsewhere the fp32 blocks measured faster.
#ifdef __AVX512F__
constexpr bool kDirectBf16Reduce = true;
#else
constexpr bool kDirectBf16Reduce = false;
#endif
static_assert(kLanes == 16 && kBlock % kLanes == 0, "blocks must keep element i in lane i % kLanes");

// Read access to n elements as floats: float data directly, 16-bit data through a block buffer.
static inline const float* in_f32(const float* src, float*, int64_t) { return src; }
template <typename T>
static inline const float* in_f32(const T* src, float* buf, int64_t n) {
  load_block(buf, src, n);
  return buf;
}
// Write access: float outputs are written in place, 16-bit outputs through a block buffer.
static inline float* out_f32(float* dst, float*) { return dst; }
template <typename T>
static inline float* out_f32(T*, float* buf) { return buf; }
static inline void flush(float*, const float*, int64_t) {}
template <typename T>
static inline void flush(T* dst, const float* buf, int64_t n) {
  store_block(dst, buf, n);
}

static inline double combine(double* acc) {
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

// ---- statistics -------------------------------------------------------------------------------

// NOTE: [Ghost batch norm lanes]
// The plane sums keep kLanes = 16 double lanes as two 8-wide GCC vectors (lanes 0-7, 8-15): the
// compiler lowers them to whatever the level has (2 x SSE2, 1 x AVX2 pair, 1 x AVX-512) with the
// same operations per lane, so every level rounds identically; plain loops over 16 scalars were
// vectorized poorly (scalar conversions) and ran 5x slower.
typedef float V8f __attribute__((vector_size(32)));
typedef double V8d __attribute__((vector_size(64)));

static inline V8d load8(const float* p) {
#ifdef __AVX512F__
  // One conversion instruction (GCC splits the generic conversion into halves); exact either way.
  return reinterpret_cast<V8d>(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#else
  V8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, V8d);
#endif
}
static inline V8d load_lanes(const double* p) {
  V8d v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
static inline void store_lanes(double* p, V8d v) { __builtin_memcpy(p, &v, sizeof(v)); }
static inline V8d splat8(double v) { return V8d{v, v, v, v, v, v, v, v}; }

// NOTE: [Ghost batch norm bf16 vectors]
// bfloat16 data is widened in registers instead of through the fp32 block buffers: the reductions
// widen 8 values at a time to doubles (a 16-bit shift, exact); the elementwise passes take 32 at a
// time as even/odd float vectors and round them with StoreAs<Bf16>'s formula (NOTE: [Ghost batch
// norm bf16 pairs]). The bits are those of the block path, which fp16 still takes.
typedef uint16_t V8h __attribute__((vector_size(16)));
typedef uint32_t V8u __attribute__((vector_size(32)));
typedef float V16f __attribute__((vector_size(64)));

static inline V8f load8f(const float* p) {
  V8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
static inline V8f load8f(const Bf16* p) {
  V8h h;
  __builtin_memcpy(&h, p, sizeof(h));
  const V8u u = __builtin_convertvector(h, V8u) << 16;
  V8f v;
  __builtin_memcpy(&v, &u, sizeof(v));
  return v;
}

static inline V16f splat16(float v) { return V16f{} + v; }

// NOTE: [Ghost batch norm streaming stores]
// float32 outputs much larger than the caches (the driver decides: kStreamBytes in
// csrc/cpu/ghost_bn.cpp) are written with non-temporal stores where the level has them (AVX2,
// AVX-512): the same values from the same operations per element (a scalar head up to 32-byte
// alignment, 8 floats per store, a scalar tail), without first reading every output line into
// the cache. The driver calls fence() after each work item that streamed. (bfloat16 outputs
// measured no faster streamed: their passes are bound by the conversions, not the memory.)
#if defined(__AVX2__)
constexpr bool kHaveStream = true;
static inline void stream8(float* p, V8f v) { _mm256_stream_ps(p, reinterpret_cast<__m256>(v)); }
static inline void fence() { _mm_sfence(); }
#else
constexpr bool kHaveStream = false;
static inline void stream8(float* p, V8f v) { __builtin_memcpy(p, &v, sizeof(v)); }
static inline void fence() {}
#endif
static inline bool aligned32(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 31u) == 0; }
static inline V8f splat8f(float v) { return V8f{} + v; }

// y = normalize(x) over n floats with streaming stores.
static inline void apply_stream(float* y, const float* x, int64_t n, float hi, float lo, float alpha, float beta) {
  int64_t i = 0;
  for (; i < n && !aligned32(y + i); ++i) y[i] = gbn_normalize(x[i], hi, lo, alpha, beta);
  const V8f vhi = splat8f(hi), vlo = splat8f(lo), va = splat8f(alpha), vb = splat8f(beta);
  for (; i + 8 <= n; i += 8) stream8(y + i, gbn_normalize(load8f(x + i), vhi, vlo, va, vb));
  for (; i < n; ++i) y[i] = gbn_normalize(x[i], hi, lo, alpha, beta);
}
static inline void apply_stream_vec(float* y, const float* x, int64_t n, const float* hi, const float* lo,
                                    const float* alpha, const float* beta) {
  int64_t j = 0;
  for (; j < n && !aligned32(y + j); ++j) y[j] = gbn_normalize(x[j], hi[j], lo[j], alpha[j], beta[j]);
  for (; j + 8 <= n; j += 8) {
    stream8(y + j, gbn_normalize(load8f(x + j), load8f(hi + j), load8f(lo + j), load8f(alpha + j), load8f(beta + j)));
  }
  for (; j < n; ++j) y[j] = gbn_normalize(x[j], hi[j], lo[j], alpha[j], beta[j]);
}
static inline void bwd_apply_stream(float* dx, const float* dy, const float* x, int64_t n, float hi, float lo,
                                    float mdy, float k, float a) {
  int64_t i = 0;
  for (; i < n && !aligned32(dx + i); ++i) dx[i] = gbn_grad_input(dy[i], x[i], hi, lo, mdy, k, a);
  const V8f vhi = splat8f(hi), vlo = splat8f(lo), vm = splat8f(mdy), vk = splat8f(k), va = splat8f(a);
  for (; i + 8 <= n; i += 8) stream8(dx + i, gbn_grad_input(load8f(dy + i), load8f(x + i), vhi, vlo, vm, vk, va));
  for (; i < n; ++i) dx[i] = gbn_grad_input(dy[i], x[i], hi, lo, mdy, k, a);
}
static inline void bwd_apply_stream_vec(float* dx, const float* dy, const float* x, int64_t n, const float* hi,
                                        const float* lo, const float* mdy, const float* k, const float* a) {
  int64_t j = 0;
  for (; j < n && !aligned32(dx + j); ++j) dx[j] = gbn_grad_input(dy[j], x[j], hi[j], lo[j], mdy[j], k[j], a[j]);
  for (; j + 8 <= n; j += 8) {
    stream8(dx + j, gbn_grad_input(load8f(dy + j), load8f(x + j), load8f(hi + j), load8f(lo + j), load8f(mdy + j),
                                   load8f(k + j), load8f(a + j)));
  }
  for (; j < n; ++j) dx[j] = gbn_grad_input(dy[j], x[j], hi[j], lo[j], mdy[j], k[j], a[j]);
}

template <typename T>
static inline void stats_lanes(double* __restrict a1, double* __restrict a2, const T* __restrict x,
                               int64_t n, double shift) {
  int64_t i = 0;
  V8d s1a = load_lanes(a1), s1b = load_lanes(a1 + 8), s2a = load_lanes(a2), s2b = load_lanes(a2 + 8);
  const V8d sh = splat8(shift);
  for (; i + kLanes <= n; i += kLanes) {
    gbn_stats_add(load8(x + i), sh, &s1a, &s2a);
    gbn_stats_add(load8(x + i + 8), sh, &s1b, &s2b);
  }
  store_lanes(a1, s1a), store_lanes(a1 + 8, s1b), store_lanes(a2, s2a), store_lanes(a2 + 8, s2b);
  for (int j = 0; i + j < n; ++j) gbn_stats_add(static_cast<double>(to_float(x[i + j])), shift, &a1[j], &a2[j]);
}

// Adds one plane of s float elements to the lanes a1, a2 (element i to lane i % kLanes).
static inline void stats_plane_lanes(double* a1, double* a2, const float* plane, int64_t s, double shift) {
  stats_lanes(a1, a2, plane, s, shift);
}

// Prefetches the n elements at p (the next sample's run of a region) into the caches when the
// run is short (a few KB: the hardware prefetchers ramp up too late on such runs; longer runs
// measured slightly slower prefetched).
template <typename T>
static inline void prefetch_run(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  if (bytes > 8192) return;
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
}

// NOTE: [Ghost batch norm regions]
// A region is num_samples samples x num_channels consecutive channels of the contiguous layout,
// walked in memory order (sample by sample, each sample's planes of the region in channel order):
// each channel keeps its own lanes and adds its planes in sample order, exactly as a walk over
// that channel's planes alone would (the same bits), while the memory is read as runs of
// num_channels * s elements instead of single planes C * s elements apart (which the hardware
// prefetchers follow poorly when s is small; NCHW statistics and backward sums 1.2-1.8x faster).
template <typename T>
void stats_region_t(const T* x, int64_t sample_stride, int64_t num_samples, int64_t num_channels, int64_t s,
                    const double* shift, double* s1, double* s2) {
  double a1[kMaxRegionChannels][kLanes];  // zeroed for the channels in use only
  double a2[kMaxRegionChannels][kLanes];
  for (int64_t j = 0; j < num_channels; ++j) {
    for (int l = 0; l < kLanes; ++l) a1[j][l] = a2[j][l] = 0.0;
  }
  for (int64_t n = 0; n < num_samples; ++n) {
    const T* sample = x + n * sample_stride;
    if (n + 1 < num_samples) prefetch_run(sample + sample_stride, num_channels * s);
    for (int64_t j = 0; j < num_channels; ++j) stats_plane_lanes(a1[j], a2[j], sample + j * s, s, shift[j]);
  }
  for (int64_t j = 0; j < num_channels; ++j) {
    s1[j] = 0.0 + combine(a1[j]);
    s2[j] = 0.0 + combine(a2[j]);
  }
}

// NOTE: [Ghost batch norm row strips]
// Row sums take kStripRows rows at a time and, for each run of 8 channels, keep the 8 channels'
// double sums in registers down those rows (loaded and stored once per strip instead of once per
// row). Each channel still adds its rows in row order, so the bits are those of the row-by-row
// loop; the tail channels (c % 8) take that loop. float32 data (16-bit data: NOTE: [Ghost batch
// norm float blocks]).
constexpr int64_t kStripRows = 8;

// Prefetches, in each of the nr rows (c elements apart) of a strip, the cache line kStripAhead
// bytes past p: a 16-bit strip reads 2 x kFRows rows side by side, more streams than the hardware
// prefetchers follow when the rows are long (measured: the loads stalled on the last-level cache;
// 1d (4096, 1024) bf16 backward 1.4x faster). The float32 strips (kStripRows rows) measured 1.1x
// faster without it (1d (4096, 1024) fp32 forward and backward, 1 thread, cold caches), so only the
// 16-bit row sums use it.
constexpr int64_t kStripAhead = 512;
template <typename T>
static inline void prefetch_strip(const T* p, int64_t nr, int64_t c) {
  const char* b = reinterpret_cast<const char*>(p) + kStripAhead;
  const int64_t row_bytes = c * static_cast<int64_t>(sizeof(T));
  if (row_bytes < 1024) return;  // short rows: the strip is one sequential run
  for (int64_t r = 0; r < nr; ++r) __builtin_prefetch(b + r * row_bytes);
}

template <typename T>
void stats_rows_strips(const T* x, int64_t num_rows, int64_t c, const double* shift, double* s1, double* s2) {
  const int64_t c8 = c / 8 * 8;
  for (int64_t r0 = 0; r0 < num_rows; r0 += kStripRows) {
    const int64_t nr = num_rows - r0 < kStripRows ? num_rows - r0 : kStripRows;
    const T* strip = x + r0 * c;
    int64_t j = 0;
    for (; j + 32 <= c8; j += 32) {  // four independent chains per row
      V8d a1[4], a2[4], sh[4];
      for (int q = 0; q < 4; ++q) {
        a1[q] = load_lanes(s1 + j + 8 * q), a2[q] = load_lanes(s2 + j + 8 * q), sh[q] = load_lanes(shift + j + 8 * q);
      }
      for (int64_t r = 0; r < nr; ++r) {
        for (int q = 0; q < 4; ++q) gbn_stats_add(load8(strip + r * c + j + 8 * q), sh[q], &a1[q], &a2[q]);
      }
      for (int q = 0; q < 4; ++q) store_lanes(s1 + j + 8 * q, a1[q]), store_lanes(s2 + j + 8 * q, a2[q]);
    }
    for (; j < c8; j += 8) {
      V8d a1 = load_lanes(s1 + j), a2 = load_lanes(s2 + j);
      const V8d sh = load_lanes(shift + j);
      for (int64_t r = 0; r < nr; ++r) gbn_stats_add(load8(strip + r * c + j), sh, &a1, &a2);
      store_lanes(s1 + j, a1), store_lanes(s2 + j, a2);
    }
    for (int64_t r = 0; r < nr; ++r) {
      for (int64_t j = c8; j < c; ++j) {
        gbn_stats_add(static_cast<double>(to_float(strip[r * c + j])), shift[j], &s1[j], &s2[j]);
      }
    }
  }
}

void stats_rows_t(const float* x, int64_t num_rows, int64_t c, const double* shift, double* s1, double* s2) {
  stats_rows_strips(x, num_rows, c, shift, s1, s2);
}

// ---- normalize --------------------------------------------------------------------------------

static inline void apply_scalar(float* __restrict y, const float* __restrict x, int64_t n, float hi, float lo,
                                float alpha, float beta) {
  for (int64_t i = 0; i < n; ++i) y[i] = gbn_normalize(x[i], hi, lo, alpha, beta);
}

template <typename T>
void apply_plane_t(const T* x, T* y, int64_t s, float hi, float lo, float alpha, float beta, bool stream) {
  if constexpr (std::is_same<T, float>::value) {
    if (stream && kHaveStream) return apply_stream(y, x, s, hi, lo, alpha, beta);
  }
  float xb[kBlock];
  float yb[kBlock];
  for (int64_t b = 0; b < s; b += kBlock) {
    const int64_t len = s - b < kBlock ? s - b : kBlock;
    float* out = out_f32(y + b, yb);
    apply_scalar(out, in_f32(x + b, xb, len), len, hi, lo, alpha, beta);
    flush(y + b, out, len);
  }
}

static inline void apply_vec(float* __restrict y, const float* __restrict x, int64_t n,
                             const float* __restrict hi, const float* __restrict lo,
                             const float* __restrict alpha, const float* __restrict beta) {
  for (int64_t j = 0; j < n; ++j) y[j] = gbn_normalize(x[j], hi[j], lo[j], alpha[j], beta[j]);
}

// NOTE: [Ghost batch norm short rows]
// float32 rows of c = 16, 32, 48 or 64 channels at the AVX-512 level keep the per-channel
// coefficients in registers for the whole call instead of loading them again for every row (the
// row loops were bound by those loads: 4 coefficient vectors per vector of data in the forward, 5
// in the backward). The same operations per element: the same bits.
#ifdef __AVX512F__
static inline V16f ld16(const float* p) {
  V16f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
// 16 floats at p (32-byte aligned when streaming).
static inline void put16(float* p, V16f v, bool stream) {
  if (stream) {
    _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
  } else {
    __builtin_memcpy(p, &v, sizeof(v));
  }
}
template <int NC>
void apply_rows_reg(const float* x, float* y, int64_t num_rows, const float* hi, const float* lo, const float* alpha,
                    const float* beta, bool stream) {
  V16f h[NC], l[NC], a[NC], b[NC];
  for (int q = 0; q < NC; ++q) h[q] = ld16(hi + 16 * q), l[q] = ld16(lo + 16 * q), a[q] = ld16(alpha + 16 * q), b[q] = ld16(beta + 16 * q);
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int q = 0; q < NC; ++q) {
      const int64_t o = r * 16 * NC + 16 * q;
      put16(y + o, gbn_normalize(ld16(x + o), h[q], l[q], a[q], b[q]), stream);
    }
  }
}
template <int NC>
void bwd_apply_rows_reg(const float* dy, const float* x, float* dx, int64_t num_rows, const float* hi, const float* lo,
                        const float* mdy, const float* k, const float* a, bool stream) {
  V16f h[NC], l[NC], m[NC], kk[NC], aa[NC];
  for (int q = 0; q < NC; ++q) {
    h[q] = ld16(hi + 16 * q), l[q] = ld16(lo + 16 * q), m[q] = ld16(mdy + 16 * q), kk[q] = ld16(k + 16 * q);
    aa[q] = ld16(a + 16 * q);
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int q = 0; q < NC; ++q) {
      const int64_t o = r * 16 * NC + 16 * q;
      put16(dx + o, gbn_grad_input(ld16(dy + o), ld16(x + o), h[q], l[q], m[q], kk[q], aa[q]), stream);
    }
  }
}
// Whether rows of c channels take the register paths (streaming stores need 64-byte aligned rows).
static inline bool rows_in_regs(int64_t c, const float* out, bool stream) {
  return c % 16 == 0 && c <= 64 && (!stream || (reinterpret_cast<uintptr_t>(out) & 63u) == 0);
}
#define PLAYBOOK_GBN_ROWS_REG(fn, c, ...)     \
  switch ((c) / 16) {                          \
    case 1: return fn<1>(__VA_ARGS__);         \
    case 2: return fn<2>(__VA_ARGS__);         \
    case 3: return fn<3>(__VA_ARGS__);         \
    default: return fn<4>(__VA_ARGS__);        \
  }
#endif

template <typename T>
void apply_rows_t(const T* x, T* y, int64_t num_rows, int64_t c, const float* hi, const float* lo,
                  const float* alpha, const float* beta, bool stream) {
  if constexpr (std::is_same<T, float>::value) {
#ifdef __AVX512F__
    if (rows_in_regs(c, y, stream)) {
      PLAYBOOK_GBN_ROWS_REG(apply_rows_reg, c, x, y, num_rows, hi, lo, alpha, beta, stream)
    }
#endif
    if (stream && kHaveStream) {
      for (int64_t r = 0; r < num_rows; ++r) apply_stream_vec(y + r * c, x + r * c, c, hi, lo, alpha, beta);
      return;
    }
  }
  float xb[kBlock];
  float yb[kBlock];
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t b = 0; b < c; b += kBlock) {
      const int64_t len = c - b < kBlock ? c - b : kBlock;
      T* yr = y + r * c + b;
      float* out = out_f32(yr, yb);
      apply_vec(out, in_f32(x + r * c + b, xb, len), len, hi + b, lo + b, alpha + b, beta + b);
      flush(yr, out, len);
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <typename T>
static inline void bwd_lanes(double* __restrict a1, double* __restrict a2, const T* __restrict dy,
                             const T* __restrict x, int64_t n, double hi, double lo) {
  int64_t i = 0;
  V8d s1a = load_lanes(a1), s1b = load_lanes(a1 + 8), s2a = load_lanes(a2), s2b = load_lanes(a2 + 8);
  const V8d vhi = splat8(hi);
  const V8d vlo = splat8(lo);
  for (; i + kLanes <= n; i += kLanes) {
    gbn_backward_add(load8(dy + i), load8(x + i), vhi, vlo, &s1a, &s2a);
    gbn_backward_add(load8(dy + i + 8), load8(x + i + 8), vhi, vlo, &s1b, &s2b);
  }
  store_lanes(a1, s1a), store_lanes(a1 + 8, s1b), store_lanes(a2, s2a), store_lanes(a2 + 8, s2b);
  for (int j = 0; i + j < n; ++j) {
    gbn_backward_add(static_cast<double>(to_float(dy[i + j])), static_cast<double>(to_float(x[i + j])), hi, lo,
                     &a1[j], &a2[j]);
  }
}

static inline void bwd_plane_lanes(double* a1, double* a2, const float* dy, const float* x, int64_t s, float hi,
                                   float lo) {
  bwd_lanes(a1, a2, dy, x, s, static_cast<double>(hi), static_cast<double>(lo));
}

// The backward sums over a region (NOTE: [Ghost batch norm regions]).
template <typename T>
void bwd_reduce_region_t(const T* dy, const T* x, int64_t sample_stride, int64_t num_samples, int64_t num_channels,
                         int64_t s, const float* hi, const float* lo, double* sdy, double* sdyx) {
  double a1[kMaxRegionChannels][kLanes];  // zeroed for the channels in use only
  double a2[kMaxRegionChannels][kLanes];
  for (int64_t j = 0; j < num_channels; ++j) {
    for (int l = 0; l < kLanes; ++l) a1[j][l] = a2[j][l] = 0.0;
  }
  for (int64_t n = 0; n < num_samples; ++n) {
    const int64_t off = n * sample_stride;
    if (n + 1 < num_samples) {
      prefetch_run(dy + off + sample_stride, num_channels * s);
      prefetch_run(x + off + sample_stride, num_channels * s);
    }
    for (int64_t j = 0; j < num_channels; ++j) {
      bwd_plane_lanes(a1[j], a2[j], dy + off + j * s, x + off + j * s, s, hi[j], lo[j]);
    }
  }
  for (int64_t j = 0; j < num_channels; ++j) {
    sdy[j] = 0.0 + combine(a1[j]);
    sdyx[j] = 0.0 + combine(a2[j]);
  }
}

static inline V8d load8d(const float* p) { return load8(p); }

// The backward row sums by strips (NOTE: [Ghost batch norm row strips]).
template <typename T>
void bwd_reduce_rows_strips(const T* dy, const T* x, int64_t num_rows, int64_t c, const float* hi, const float* lo,
                            double* sdy, double* sdyx) {
  const int64_t c8 = c / 8 * 8;
  for (int64_t r0 = 0; r0 < num_rows; r0 += kStripRows) {
    const int64_t nr = num_rows - r0 < kStripRows ? num_rows - r0 : kStripRows;
    const int64_t base = r0 * c;
    int64_t j = 0;
    for (; j + 32 <= c8; j += 32) {  // four independent chains per row
      V8d a1[4], a2[4], vhi[4], vlo[4];
      for (int q = 0; q < 4; ++q) {
        a1[q] = load_lanes(sdy + j + 8 * q), a2[q] = load_lanes(sdyx + j + 8 * q);
        vhi[q] = load8d(hi + j + 8 * q), vlo[q] = load8d(lo + j + 8 * q);
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t off = base + r * c + j;
        for (int q = 0; q < 4; ++q) {
          gbn_backward_add(load8(dy + off + 8 * q), load8(x + off + 8 * q), vhi[q], vlo[q], &a1[q], &a2[q]);
        }
      }
      for (int q = 0; q < 4; ++q) store_lanes(sdy + j + 8 * q, a1[q]), store_lanes(sdyx + j + 8 * q, a2[q]);
    }
    for (; j < c8; j += 8) {
      V8d a1 = load_lanes(sdy + j), a2 = load_lanes(sdyx + j);
      const V8d vhi = load8d(hi + j), vlo = load8d(lo + j);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t off = base + r * c + j;
        gbn_backward_add(load8(dy + off), load8(x + off), vhi, vlo, &a1, &a2);
      }
      store_lanes(sdy + j, a1), store_lanes(sdyx + j, a2);
    }
    for (int64_t r = 0; r < nr; ++r) {
      for (int64_t j = c8; j < c; ++j) {
        const int64_t off = base + r * c + j;
        gbn_backward_add(static_cast<double>(to_float(dy[off])), static_cast<double>(to_float(x[off])),
                         static_cast<double>(hi[j]), static_cast<double>(lo[j]), &sdy[j], &sdyx[j]);
      }
    }
  }
}

void bwd_reduce_rows_t(const float* dy, const float* x, int64_t num_rows, int64_t c, const float* hi,
                       const float* lo, double* sdy, double* sdyx) {
  bwd_reduce_rows_strips(dy, x, num_rows, c, hi, lo, sdy, sdyx);
}

static inline void bwd_apply_scalar(float* __restrict dx, const float* __restrict dy,
                                    const float* __restrict x, int64_t n, float hi, float lo, float mdy,
                                    float k, float a) {
  for (int64_t i = 0; i < n; ++i) dx[i] = gbn_grad_input(dy[i], x[i], hi, lo, mdy, k, a);
}

template <typename T>
void bwd_apply_plane_t(const T* dy, const T* x, T* dx, int64_t s, float hi, float lo, float mdy, float k,
                       float a, bool stream) {
  if constexpr (std::is_same<T, float>::value) {
    if (stream && kHaveStream) return bwd_apply_stream(dx, dy, x, s, hi, lo, mdy, k, a);
  }
  float gb[kBlock];
  float xb[kBlock];
  float ob[kBlock];
  for (int64_t b = 0; b < s; b += kBlock) {
    const int64_t len = s - b < kBlock ? s - b : kBlock;
    float* out = out_f32(dx + b, ob);
    bwd_apply_scalar(out, in_f32(dy + b, gb, len), in_f32(x + b, xb, len), len, hi, lo, mdy, k, a);
    flush(dx + b, out, len);
  }
}

static inline void bwd_apply_vec(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                                 int64_t n, const float* __restrict hi, const float* __restrict lo,
                                 const float* __restrict mdy, const float* __restrict k,
                                 const float* __restrict a) {
  for (int64_t j = 0; j < n; ++j) dx[j] = gbn_grad_input(dy[j], x[j], hi[j], lo[j], mdy[j], k[j], a[j]);
}

template <typename T>
void bwd_apply_rows_t(const T* dy, const T* x, T* dx, int64_t num_rows, int64_t c, const float* hi,
                      const float* lo, const float* mdy, const float* k, const float* a, bool stream) {
  if constexpr (std::is_same<T, float>::value) {
#ifdef __AVX512F__
    if (rows_in_regs(c, dx, stream)) {
      PLAYBOOK_GBN_ROWS_REG(bwd_apply_rows_reg, c, dy, x, dx, num_rows, hi, lo, mdy, k, a, stream)
    }
#endif
    if (stream && kHaveStream) {
      for (int64_t r = 0; r < num_rows; ++r) {
        bwd_apply_stream_vec(dx + r * c, dy + r * c, x + r * c, c, hi, lo, mdy, k, a);
      }
      return;
    }
  }
  float gb[kBlock];
  float xb[kBlock];
  float ob[kBlock];
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t b = 0; b < c; b += kBlock) {
      const int64_t len = c - b < kBlock ? c - b : kBlock;
      const int64_t off = r * c + b;
      float* out = out_f32(dx + off, ob);
      bwd_apply_vec(out, in_f32(dy + off, gb, len), in_f32(x + off, xb, len), len, hi + b, lo + b, mdy + b,
                    k + b, a + b);
      flush(dx + off, out, len);
    }
  }
}

// ---- bfloat16 overloads (NOTE: [Ghost batch norm bf16 pairs]) -----------------------------------
// AVX-512 level only: at the AVX2 level the 16-lane generic vectors measured 2x slower than the
// fp32 blocks, which the other levels keep.
#ifdef __AVX512F__

// NOTE: [Ghost batch norm bf16 pairs]
// The elementwise passes take 32 bfloat16 values (one 64-byte load) at a time as two float
// vectors: the even elements (each 32-bit lane shifted left by 16) and the odd ones (the high
// halves masked), one instruction each and exact. Each element is computed in its own lane with
// the same operations as the scalar code, rounded with StoreAs<Bf16>'s integer formula (round to
// nearest even; NaN to 0x7fc0) keeping the 16 result bits in the high half, and the two vectors
// are re-interleaved with one shift and one ternary-logic instruction: the bits of the scalar code
// (and of the earlier 16-lane widening, whose generic vector code cost about twice the
// instructions). A tail shorter than 32 uses masked loads and stores (lanes past the end compute
// on zeros and are not stored). Per-channel coefficients (channels-last rows) are split into the
// same even/odd vectors once per call.
static inline __m512i bf16_high_mask() { return _mm512_set1_epi32(static_cast<int>(0xffff0000u)); }
static inline __mmask32 tail_mask32(int64_t n) { return _cvtu32_mask32((1u << n) - 1u); }  // 0 < n < 32

static inline void widen32(__m512i v, V16f* even, V16f* odd) {
  *even = reinterpret_cast<V16f>(_mm512_slli_epi32(v, 16));
  *odd = reinterpret_cast<V16f>(_mm512_and_si512(v, bf16_high_mask()));
}
// StoreAs<Bf16>::from per lane, the 16 result bits in the high half of the lane.
static inline __m512i round_bf16_high(V16f f) {
  const __m512 fv = reinterpret_cast<__m512>(f);
  const __m512i u = _mm512_castps_si512(fv);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i t = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  return _mm512_mask_mov_epi32(t, _mm512_cmp_ps_mask(fv, fv, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc00000));
}
// The 32 rounded values of widen32's even/odd vectors, in element order.
static inline __m512i narrow32(V16f even, V16f odd) {
  // A | (B & C): the even results moved to the low halves, the odd results' high halves.
  return _mm512_ternarylogic_epi32(_mm512_srli_epi32(round_bf16_high(even), 16), round_bf16_high(odd),
                                   bf16_high_mask(), 0xF8);
}
static inline __m512i load32(const Bf16* p) { return _mm512_loadu_si512(p); }
static inline __m512i load32(const Bf16* p, __mmask32 k) { return _mm512_maskz_loadu_epi16(k, p); }
static inline void store32(Bf16* p, __m512i v) { _mm512_storeu_si512(p, v); }
static inline void store32(Bf16* p, __m512i v, __mmask32 k) { _mm512_mask_storeu_epi16(p, k, v); }

// Per-channel float coefficients p[0..c) as even/odd vectors per 32-channel chunk:
// out[2q] = p[32q + 0, 2, .., 30], out[2q + 1] = p[32q + 1, 3, .., 31] (zeros past c).
static inline void split_pairs(const float* p, int64_t c, V16f* out) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t j = 0, q = 0; j < c; j += 32, ++q) {
    const int64_t n = c - j;
    const __mmask16 k0 = n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
    const __mmask16 k1 = n >= 32 ? static_cast<__mmask16>(0xffff)
                                 : n <= 16 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << (n - 16)) - 1u);
    const __m512 a = _mm512_maskz_loadu_ps(k0, p + j);
    const __m512 b = _mm512_maskz_loadu_ps(k1, p + j + 16);
    out[2 * q] = reinterpret_cast<V16f>(_mm512_permutex2var_ps(a, ie, b));
    out[2 * q + 1] = reinterpret_cast<V16f>(_mm512_permutex2var_ps(a, io, b));
  }
}

// Scratch for split_pairs of `count` coefficient arrays of c channels: on the stack up to 1024
// channels, else on the heap.
class PairBuffer {
 public:
  PairBuffer(int64_t c, int count) {
    const int64_t n = (c + 31) / 32 * 2 * count;
    if (n > kStack) {
      heap_.resize(static_cast<size_t>(n));
      data_ = heap_.data();
    } else {
      data_ = stack_;
    }
  }
  V16f* data() { return data_; }

 private:
  static constexpr int64_t kStack = 1024 / 32 * 2 * 5;
  V16f stack_[kStack];
  std::vector<V16f> heap_;
  V16f* data_;
};

void apply_plane_t(const Bf16* x, Bf16* y, int64_t s, float hi, float lo, float alpha, float beta, bool) {
  const V16f vhi = splat16(hi), vlo = splat16(lo), va = splat16(alpha), vb = splat16(beta);
  V16f e, o;
  int64_t i = 0;
  for (; i + 32 <= s; i += 32) {
    widen32(load32(x + i), &e, &o);
    store32(y + i, narrow32(gbn_normalize(e, vhi, vlo, va, vb), gbn_normalize(o, vhi, vlo, va, vb)));
  }
  if (i < s) {
    const __mmask32 k = tail_mask32(s - i);
    widen32(load32(x + i, k), &e, &o);
    store32(y + i, narrow32(gbn_normalize(e, vhi, vlo, va, vb), gbn_normalize(o, vhi, vlo, va, vb)), k);
  }
}

void apply_rows_t(const Bf16* x, Bf16* y, int64_t num_rows, int64_t c, const float* hi, const float* lo,
                  const float* alpha, const float* beta, bool) {
  const int64_t chunks = (c + 31) / 32;
  PairBuffer buf(c, 4);
  V16f* ph = buf.data();
  V16f* pl = ph + 2 * chunks;
  V16f* pa = pl + 2 * chunks;
  V16f* pb = pa + 2 * chunks;
  split_pairs(hi, c, ph), split_pairs(lo, c, pl), split_pairs(alpha, c, pa), split_pairs(beta, c, pb);
  const int64_t c32 = c / 32 * 32;
  const __mmask32 kt = c32 < c ? tail_mask32(c - c32) : 0;
  V16f e, o;
  for (int64_t r = 0; r < num_rows; ++r) {
    const Bf16* xr = x + r * c;
    Bf16* yr = y + r * c;
    int64_t q = 0;
    for (; 32 * q < c32; ++q) {
      widen32(load32(xr + 32 * q), &e, &o);
      store32(yr + 32 * q, narrow32(gbn_normalize(e, ph[2 * q], pl[2 * q], pa[2 * q], pb[2 * q]),
                                    gbn_normalize(o, ph[2 * q + 1], pl[2 * q + 1], pa[2 * q + 1], pb[2 * q + 1])));
    }
    if (kt) {
      widen32(load32(xr + c32, kt), &e, &o);
      store32(yr + c32,
              narrow32(gbn_normalize(e, ph[2 * q], pl[2 * q], pa[2 * q], pb[2 * q]),
                       gbn_normalize(o, ph[2 * q + 1], pl[2 * q + 1], pa[2 * q + 1], pb[2 * q + 1])),
              kt);
    }
  }
}

void bwd_apply_plane_t(const Bf16* dy, const Bf16* x, Bf16* dx, int64_t s, float hi, float lo, float mdy, float k,
                       float a, bool) {
  const V16f vhi = splat16(hi), vlo = splat16(lo), vm = splat16(mdy), vk = splat16(k), va = splat16(a);
  V16f ge, go, xe, xo;
  int64_t i = 0;
  for (; i + 32 <= s; i += 32) {
    widen32(load32(dy + i), &ge, &go);
    widen32(load32(x + i), &xe, &xo);
    store32(dx + i, narrow32(gbn_grad_input(ge, xe, vhi, vlo, vm, vk, va), gbn_grad_input(go, xo, vhi, vlo, vm, vk, va)));
  }
  if (i < s) {
    const __mmask32 t = tail_mask32(s - i);
    widen32(load32(dy + i, t), &ge, &go);
    widen32(load32(x + i, t), &xe, &xo);
    store32(dx + i, narrow32(gbn_grad_input(ge, xe, vhi, vlo, vm, vk, va), gbn_grad_input(go, xo, vhi, vlo, vm, vk, va)),
            t);
  }
}

void bwd_apply_rows_t(const Bf16* dy, const Bf16* x, Bf16* dx, int64_t num_rows, int64_t c, const float* hi,
                      const float* lo, const float* mdy, const float* k, const float* a, bool) {
  const int64_t chunks = (c + 31) / 32;
  PairBuffer buf(c, 5);
  V16f* ph = buf.data();
  V16f* pl = ph + 2 * chunks;
  V16f* pm = pl + 2 * chunks;
  V16f* pk = pm + 2 * chunks;
  V16f* pa = pk + 2 * chunks;
  split_pairs(hi, c, ph), split_pairs(lo, c, pl), split_pairs(mdy, c, pm), split_pairs(k, c, pk);
  split_pairs(a, c, pa);
  const int64_t c32 = c / 32 * 32;
  const __mmask32 kt = c32 < c ? tail_mask32(c - c32) : 0;
  V16f ge, go, xe, xo;
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t off = r * c;
    int64_t q = 0;
    for (; 32 * q < c32; ++q) {
      const int64_t j = off + 32 * q;
      widen32(load32(dy + j), &ge, &go);
      widen32(load32(x + j), &xe, &xo);
      store32(dx + j, narrow32(gbn_grad_input(ge, xe, ph[2 * q], pl[2 * q], pm[2 * q], pk[2 * q], pa[2 * q]),
                               gbn_grad_input(go, xo, ph[2 * q + 1], pl[2 * q + 1], pm[2 * q + 1], pk[2 * q + 1],
                                              pa[2 * q + 1])));
    }
    if (kt) {
      const int64_t j = off + c32;
      widen32(load32(dy + j, kt), &ge, &go);
      widen32(load32(x + j, kt), &xe, &xo);
      store32(dx + j,
              narrow32(gbn_grad_input(ge, xe, ph[2 * q], pl[2 * q], pm[2 * q], pk[2 * q], pa[2 * q]),
                       gbn_grad_input(go, xo, ph[2 * q + 1], pl[2 * q + 1], pm[2 * q + 1], pk[2 * q + 1], pa[2 * q + 1])),
              kt);
    }
  }
}
#endif  // __AVX512F__

// ---- 16-bit reductions: float blocks (NOTE: [Ghost batch norm float blocks]) -------------------

// NOTE: [Ghost batch norm float blocks]
// For bfloat16 and float16 input the sums run in float over short fixed blocks, each block's
// partial sums then added in double (the double chains cost about 2.5x the instructions of the
// float ones and bound these passes; fp32 input keeps the all-double sums). Planes (contiguous
// layout): kFLanes = 32 float lanes per channel, element i of a plane to lane i % 32; a block is
// the elements of kPlanesPerBlock(s) = min(16, 512 / s) consecutive planes of the (ghost batch,
// channel) counted from its first sample (s < 512), or a run of up to 512 elements of one plane
// (s >= 512): at most 32 elements per lane and block. At the end of each block the 32 float lanes
// are added to 32 double lanes (then set to 0), and at the end the double lanes are combined
// pairwise (16, 8, 4, 2, 1 apart). Rows (channels-last): per channel, a float partial over each
// run of kFRows = 16 consecutive rows of a row block, added to the channel's double sum. Every
// operation is per lane (or per channel) in a fixed order, so every SIMD level and thread count
// gives the same bits. The float terms are x - K (exact for 16-bit data unless the exponents of x
// and K differ by more than 15 (bfloat16) / 12 (float16)) and its square, and dy and
// dy * ((x - hi) - lo): each block sum is within 32 * 2^-24 of the sum of the absolute terms
// (NOTE: [Ghost batch norm numerics]).
constexpr int kFLanes = 32;
constexpr int64_t kFBlockElems = 512;
constexpr int64_t kFRows = 16;
static_assert(kBlock == kFBlockElems, "a 16-bit block buffer holds one float block of a plane");

static inline int64_t planes_per_block(int64_t s) {
  if (s >= kFBlockElems) return 1;
  const int64_t q = kFBlockElems / s;
  return q < 16 ? q : 16;
}

static inline V16f load16f(const float* p) {
  V16f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
static inline void store16f(float* p, V16f v) { __builtin_memcpy(p, &v, sizeof(v)); }

// 16 values as floats: float data directly; bfloat16 at the AVX-512 level widened in registers.
#ifdef __AVX512F__
static inline V16f widen16(const Bf16* p) {
  const __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
  return reinterpret_cast<V16f>(_mm512_castsi512_ps(u));
}
#endif
static inline V16f widen16(const float* p) { return load16f(p); }

// Adds the n elements at x (a run of one plane starting at a multiple of 32) to the float lanes
// f1, f2: element i to lane i % 32.
template <typename T>
static inline void f32_stats_run(float* __restrict f1, float* __restrict f2, const T* __restrict x, int64_t n,
                                 float shift) {
  V16f a0 = load16f(f1), a1 = load16f(f1 + 16), b0 = load16f(f2), b1 = load16f(f2 + 16);
  const V16f sh = splat16(shift);
  int64_t i = 0;
  for (; i + kFLanes <= n; i += kFLanes) {
    gbn_stats_add(widen16(x + i), sh, &a0, &b0);
    gbn_stats_add(widen16(x + i + 16), sh, &a1, &b1);
  }
  store16f(f1, a0), store16f(f1 + 16, a1), store16f(f2, b0), store16f(f2 + 16, b1);
  for (int l = 0; i + l < n; ++l) gbn_stats_add(to_float(x[i + l]), shift, &f1[l], &f2[l]);
}

template <typename T>
static inline void f32_bwd_run(float* __restrict f1, float* __restrict f2, const T* __restrict dy,
                               const T* __restrict x, int64_t n, float hi, float lo) {
  V16f a0 = load16f(f1), a1 = load16f(f1 + 16), b0 = load16f(f2), b1 = load16f(f2 + 16);
  const V16f vhi = splat16(hi), vlo = splat16(lo);
  int64_t i = 0;
  for (; i + kFLanes <= n; i += kFLanes) {
    gbn_backward_add(widen16(dy + i), widen16(x + i), vhi, vlo, &a0, &b0);
    gbn_backward_add(widen16(dy + i + 16), widen16(x + i + 16), vhi, vlo, &a1, &b1);
  }
  store16f(f1, a0), store16f(f1 + 16, a1), store16f(f2, b0), store16f(f2 + 16, b1);
  for (int l = 0; i + l < n; ++l) gbn_backward_add(to_float(dy[i + l]), to_float(x[i + l]), hi, lo, &f1[l], &f2[l]);
}

// d[l] += f[l], f[l] = 0 for the 32 lanes.
static inline void flush_lanes(double* __restrict d, float* __restrict f) {
  for (int l = 0; l < kFLanes; ++l) {
    d[l] += static_cast<double>(f[l]);
    f[l] = 0.f;
  }
}

static inline double combine32(double* acc) {
  for (int width = kFLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

// Whether bfloat16 is widened in registers here (else through the fp32 block buffer).
template <typename T>
constexpr bool kWidenInRegs = kDirectBf16Reduce && std::is_same<T, Bf16>::value;

// The two region sums of 16-bit data (NOTE: [Ghost batch norm regions], [Ghost batch norm float
// blocks]): per channel, kFLanes float lanes flushed into double lanes after every kFBlockElems
// elements of a plane but the last, and at the end of each block of planes (planes_per_block);
// run(n, j, b, len, f1, f2) adds elements [b, b + len) of sample n's plane j to the float lanes,
// prefetch(n) warms sample n. out1/out2 get the double lanes combined in their fixed order.
template <typename Prefetch, typename Run>
static inline void region_sums_f32(int64_t num_samples, int64_t num_channels, int64_t s, const Prefetch& prefetch,
                                   const Run& run, double* out1, double* out2) {
  double d1[kMaxRegionChannels][kFLanes];  // zeroed for the num_channels in use only (a region may be
  double d2[kMaxRegionChannels][kFLanes];  // a few planes: clearing all 48 KB measured as a cost)
  float f1[kMaxRegionChannels][kFLanes];
  float f2[kMaxRegionChannels][kFLanes];
  for (int64_t j = 0; j < num_channels; ++j) {
    for (int l = 0; l < kFLanes; ++l) d1[j][l] = d2[j][l] = 0.0, f1[j][l] = f2[j][l] = 0.f;
  }
  const int64_t q = planes_per_block(s);
  for (int64_t n = 0; n < num_samples; ++n) {
    if (n + 1 < num_samples) prefetch(n + 1);
    const bool block_end = (n + 1) % q == 0 || n + 1 == num_samples;
    for (int64_t j = 0; j < num_channels; ++j) {
      for (int64_t b = 0; b < s; b += kFBlockElems) {
        const int64_t len = s - b < kFBlockElems ? s - b : kFBlockElems;
        run(n, j, b, len, f1[j], f2[j]);
        if (b + kFBlockElems < s) flush_lanes(d1[j], f1[j]), flush_lanes(d2[j], f2[j]);
      }
      if (block_end) flush_lanes(d1[j], f1[j]), flush_lanes(d2[j], f2[j]);
    }
  }
  for (int64_t j = 0; j < num_channels; ++j) {
    out1[j] = 0.0 + combine32(d1[j]);
    out2[j] = 0.0 + combine32(d2[j]);
  }
}

// Region statistics of 16-bit data: shifted sums of x.
template <typename T>
void stats_region_f32(const T* x, int64_t sample_stride, int64_t num_samples, int64_t num_channels, int64_t s,
                      const double* shift, double* s1, double* s2) {
  float buf[kBlock];
  region_sums_f32(
      num_samples, num_channels, s,
      [&](int64_t n) { prefetch_run(x + n * sample_stride, num_channels * s); },
      [&](int64_t n, int64_t j, int64_t b, int64_t len, float* f1, float* f2) {
        const T* plane = x + n * sample_stride + j * s;
        const float sh = static_cast<float>(shift[j]);
        if constexpr (kWidenInRegs<T>) {
          f32_stats_run(f1, f2, plane + b, len, sh);
        } else {
          f32_stats_run(f1, f2, in_f32(plane + b, buf, len), len, sh);
        }
      },
      s1, s2);
}

// Region sums of the backward for 16-bit data: sum(dy) and sum(dy * (x - mean)).
template <typename T>
void bwd_reduce_region_f32(const T* dy, const T* x, int64_t sample_stride, int64_t num_samples,
                           int64_t num_channels, int64_t s, const float* hi, const float* lo, double* sdy,
                           double* sdyx) {
  float gb[kBlock];
  float xb[kBlock];
  region_sums_f32(
      num_samples, num_channels, s,
      [&](int64_t n) {
        prefetch_run(dy + n * sample_stride, num_channels * s);
        prefetch_run(x + n * sample_stride, num_channels * s);
      },
      [&](int64_t n, int64_t j, int64_t b, int64_t len, float* f1, float* f2) {
        const T* gp = dy + n * sample_stride + j * s;
        const T* xp = x + n * sample_stride + j * s;
        if constexpr (kWidenInRegs<T>) {
          f32_bwd_run(f1, f2, gp + b, xp + b, len, hi[j], lo[j]);
        } else {
          f32_bwd_run(f1, f2, in_f32(gp + b, gb, len), in_f32(xp + b, xb, len), len, hi[j], lo[j]);
        }
      },
      sdy, sdyx);
}

// Adds the four 16-lane float partials of a 32-channel group (a: channels j..j+31 of the first
// sum, b: of the second) to the double sums, lane by lane.
static inline void add_group32(double* s1, double* s2, V16f a0, V16f a1, V16f b0, V16f b1) {
  float t[4][16];
  store16f(t[0], a0), store16f(t[1], a1), store16f(t[2], b0), store16f(t[3], b1);
  for (int l = 0; l < 16; ++l) {
    s1[l] += static_cast<double>(t[0][l]);
    s1[16 + l] += static_cast<double>(t[1][l]);
    s2[l] += static_cast<double>(t[2][l]);
    s2[16 + l] += static_cast<double>(t[3][l]);
  }
}

// Row statistics of 16-bit data: per channel, float partials over runs of kFRows rows added to
// s1, s2 (NOTE: [Ghost batch norm float blocks]). Channels in groups of 32 with the partials in
// registers; the last c % 32 channels one by one (the same operations per channel).
template <typename T>
void stats_rows_f32(const T* x, int64_t num_rows, int64_t c, const double* shift, double* s1, double* s2) {
  const int64_t c32 = c / 32 * 32;
  float sh[32];
  float buf[32];
  for (int64_t r0 = 0; r0 < num_rows; r0 += kFRows) {
    const int64_t nr = num_rows - r0 < kFRows ? num_rows - r0 : kFRows;
    const T* strip = x + r0 * c;
    for (int64_t j = 0; j < c32; j += 32) {
      prefetch_strip(strip + j, nr, c);
      for (int l = 0; l < 32; ++l) sh[l] = static_cast<float>(shift[j + l]);
      V16f a0{}, a1{}, b0{}, b1{};
      const V16f h0 = load16f(sh), h1 = load16f(sh + 16);
      for (int64_t r = 0; r < nr; ++r) {
        const T* p = strip + r * c + j;
        if constexpr (kWidenInRegs<T>) {
          gbn_stats_add(widen16(p), h0, &a0, &b0);
          gbn_stats_add(widen16(p + 16), h1, &a1, &b1);
        } else {
          const float* f = in_f32(p, buf, 32);
          gbn_stats_add(load16f(f), h0, &a0, &b0);
          gbn_stats_add(load16f(f + 16), h1, &a1, &b1);
        }
      }
      add_group32(s1 + j, s2 + j, a0, a1, b0, b1);
    }
    for (int64_t j = c32; j < c; ++j) {
      const float shf = static_cast<float>(shift[j]);
      float a = 0.f, b = 0.f;
      for (int64_t r = 0; r < nr; ++r) gbn_stats_add(to_float(strip[r * c + j]), shf, &a, &b);
      s1[j] += static_cast<double>(a);
      s2[j] += static_cast<double>(b);
    }
  }
}

template <typename T>
void bwd_reduce_rows_f32(const T* dy, const T* x, int64_t num_rows, int64_t c, const float* hi, const float* lo,
                         double* sdy, double* sdyx) {
  const int64_t c32 = c / 32 * 32;
  float gb[32];
  float xb[32];
  for (int64_t r0 = 0; r0 < num_rows; r0 += kFRows) {
    const int64_t nr = num_rows - r0 < kFRows ? num_rows - r0 : kFRows;
    const int64_t base = r0 * c;
    for (int64_t j = 0; j < c32; j += 32) {
      prefetch_strip(dy + base + j, nr, c);
      prefetch_strip(x + base + j, nr, c);
      V16f a0{}, a1{}, b0{}, b1{};
      const V16f h0 = load16f(hi + j), h1 = load16f(hi + j + 16), l0 = load16f(lo + j), l1 = load16f(lo + j + 16);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t off = base + r * c + j;
        if constexpr (kWidenInRegs<T>) {
          gbn_backward_add(widen16(dy + off), widen16(x + off), h0, l0, &a0, &b0);
          gbn_backward_add(widen16(dy + off + 16), widen16(x + off + 16), h1, l1, &a1, &b1);
        } else {
          const float* g = in_f32(dy + off, gb, 32);
          const float* f = in_f32(x + off, xb, 32);
          gbn_backward_add(load16f(g), load16f(f), h0, l0, &a0, &b0);
          gbn_backward_add(load16f(g + 16), load16f(f + 16), h1, l1, &a1, &b1);
        }
      }
      add_group32(sdy + j, sdyx + j, a0, a1, b0, b1);
    }
    for (int64_t j = c32; j < c; ++j) {
      float a = 0.f, b = 0.f;
      for (int64_t r = 0; r < nr; ++r) {
        gbn_backward_add(to_float(dy[base + r * c + j]), to_float(x[base + r * c + j]), hi[j], lo[j], &a, &b);
      }
      sdy[j] += static_cast<double>(a);
      sdyx[j] += static_cast<double>(b);
    }
  }
}

// ---- per (ghost batch, channel) formulas ------------------------------------------------------

// NOTE: [Ghost batch norm vector finalization]
// The per-(ghost batch, channel) formulas of playbook/ghost_bn_math.h (gbn_moments, gbn_save with
// the normalize coefficients, gbn_grad_coefs, gbn_ema) over runs of channels, 8 channels at a time
// in double vectors at the AVX2 and AVX-512 levels, the tail (and the portable level) with the
// scalar formulas. Each lane performs the scalar formula's operations in its order; division and
// square root are correctly rounded in every lane and the conversions to float round to nearest
// like the scalar casts, so the bits are those of the scalar formulas. Measured on this project's
// VM: the scalar formulas (four divisions and a square root per pair in the forward) cost about
// 5 ns per pair, which the 1d shape (4096, 1024) vbs=64 (64K pairs of 64 elements) paid in every
// forward (~0.35 ms of one thread) and, for its two divisions, backward.
#if defined(__AVX2__)
constexpr bool kVecFinalize = true;
static inline V8d sqrt8(V8d v) {
#if defined(__AVX512F__)
  return reinterpret_cast<V8d>(_mm512_sqrt_pd(reinterpret_cast<__m512d>(v)));
#else
  __m256d h[2];
  __builtin_memcpy(h, &v, sizeof(v));
  h[0] = _mm256_sqrt_pd(h[0]);
  h[1] = _mm256_sqrt_pd(h[1]);
  __builtin_memcpy(&v, h, sizeof(v));
  return v;
#endif
}
#else
constexpr bool kVecFinalize = false;
static inline V8d sqrt8(V8d v) {
  for (int l = 0; l < 8; ++l) v[l] = sqrt(v[l]);
  return v;
}
#endif
static inline void store8f(float* p, V8f v) { __builtin_memcpy(p, &v, sizeof(v)); }
static inline V8d widen8(V8f v) { return __builtin_convertvector(v, V8d); }
static inline V8f narrow8(V8d v) { return __builtin_convertvector(v, V8f); }

// gbn_moments per channel j < n of m elements: s1[j], s2[j] (shifted sums) -> mean, m2 in place.
void moments(int64_t n, double m, const double* shift, double* s1, double* s2) {
  int64_t j = 0;
  if constexpr (kVecFinalize) {
    const V8d vm = splat8(m), zero = splat8(0.0);
    for (; j + 8 <= n; j += 8) {
      const V8d a = load_lanes(s1 + j), b = load_lanes(s2 + j);
      V8d d = b - a * a / vm;
      d = d < zero ? zero : d;  // rounding; NaN stays NaN
      store_lanes(s1 + j, load_lanes(shift + j) + a / vm);
      store_lanes(s2 + j, d);
    }
  }
  for (; j < n; ++j) gbn_moments(shift[j], s1[j], s2[j], m, &s1[j], &s2[j]);
}

// gbn_save per channel j < n of m elements, and when alpha is not null the normalize coefficients
// alpha = invstd * weight (invstd without weight), beta = bias (0 without).
void save_stats(int64_t n, double m, double eps, const double* mean, const double* m2, const float* weight,
                const float* bias, float* hi, float* lo, float* invstd, float* alpha, float* beta) {
  int64_t j = 0;
  if constexpr (kVecFinalize) {
    const V8d vm = splat8(m), veps = splat8(eps), one = splat8(1.0);
    for (; j + 8 <= n; j += 8) {
      const V8d mu = load_lanes(mean + j);
      const V8f h = narrow8(mu);
      const V8f is = narrow8(one / sqrt8(load_lanes(m2 + j) / vm + veps));
      store8f(hi + j, h);
      store8f(lo + j, narrow8(mu - widen8(h)));
      store8f(invstd + j, is);
      if (alpha != nullptr) {
        store8f(alpha + j, weight != nullptr ? is * load8f(weight + j) : is);
        store8f(beta + j, bias != nullptr ? load8f(bias + j) : V8f{});
      }
    }
  }
  for (; j < n; ++j) {
    gbn_save(mean[j], m2[j], m, eps, &hi[j], &lo[j], &invstd[j]);
    if (alpha != nullptr) {
      alpha[j] = weight != nullptr ? invstd[j] * weight[j] : invstd[j];
      beta[j] = bias != nullptr ? bias[j] : 0.f;
    }
  }
}

// gbn_grad_coefs per channel j < n of m elements (weight null: 1).
void grad_coefs(int64_t n, double m, const double* sdy, const double* sdyx, const float* invstd, const float* weight,
                float* mdy, float* k, float* a) {
  int64_t j = 0;
  if constexpr (kVecFinalize) {
    const V8d vm = splat8(m), one = splat8(1.0);
    for (; j + 8 <= n; j += 8) {
      const V8d is = widen8(load8f(invstd + j));
      store8f(mdy + j, narrow8(load_lanes(sdy + j) / vm));
      store8f(k + j, narrow8(is * is * load_lanes(sdyx + j) / vm));
      store8f(a + j, narrow8(is * (weight != nullptr ? widen8(load8f(weight + j)) : one)));
    }
  }
  for (; j < n; ++j) gbn_grad_coefs(sdy[j], sdyx[j], invstd[j], weight != nullptr ? weight[j] : 1.f, m, &mdy[j], &k[j], &a[j]);
}

// One ghost batch's running-stat EMA with factor f (gbn_ema of the mean and of gbn_unbiased(m2, m))
// per channel j < n.
void ema(int64_t n, double f, double m, const double* mean, const double* m2, float* running_mean,
         float* running_var) {
  int64_t j = 0;
  if constexpr (kVecFinalize) {
    const V8d vf = splat8(f), vg = splat8(1.0 - f), vm1 = splat8(m - 1.0);
    for (; j + 8 <= n; j += 8) {
      store8f(running_mean + j, narrow8(vg * widen8(load8f(running_mean + j)) + vf * load_lanes(mean + j)));
      store8f(running_var + j, narrow8(vg * widen8(load8f(running_var + j)) + vf * (load_lanes(m2 + j) / vm1)));
    }
  }
  for (; j < n; ++j) {
    running_mean[j] = gbn_ema(running_mean[j], mean[j], f);
    running_var[j] = gbn_ema(running_var[j], gbn_unbiased(m2[j], m), f);
  }
}

// ---- dtype dispatch ---------------------------------------------------------------------------

#define PLAYBOOK_GBN_DISPATCH(dtype, T, ...)   \
  switch (dtype) {                             \
    case DType::kFloat32: {                    \
      using T = float;                         \
      __VA_ARGS__;                             \
      break;                                   \
    }                                          \
    case DType::kBFloat16: {                   \
      using T = Bf16;                          \
      __VA_ARGS__;                             \
      break;                                   \
    }                                          \
    case DType::kFloat16: {                    \
      using T = _Float16;                      \
      __VA_ARGS__;                             \
      break;                                   \
    }                                          \
  }

void stats_region(const void* x, int64_t sample_stride, int64_t num_samples, int64_t num_channels, int64_t s,
                  DType dtype, const double* shift, double* s1, double* s2) {
  PLAYBOOK_GBN_DISPATCH(dtype, T, if constexpr (std::is_same<T, float>::value) {
    stats_region_t(static_cast<const float*>(x), sample_stride, num_samples, num_channels, s, shift, s1, s2);
  } else {
    stats_region_f32(static_cast<const T*>(x), sample_stride, num_samples, num_channels, s, shift, s1, s2);
  })
}

void bwd_reduce_region(const void* dy, const void* x, int64_t sample_stride, int64_t num_samples,
                       int64_t num_channels, int64_t s, DType dtype, const float* hi, const float* lo, double* sdy,
                       double* sdyx) {
  PLAYBOOK_GBN_DISPATCH(dtype, T, if constexpr (std::is_same<T, float>::value) {
    bwd_reduce_region_t(static_cast<const float*>(dy), static_cast<const float*>(x), sample_stride, num_samples, num_channels,
                        s, hi, lo, sdy, sdyx);
  } else {
    bwd_reduce_region_f32(static_cast<const T*>(dy), static_cast<const T*>(x), sample_stride, num_samples,
                          num_channels, s, hi, lo, sdy, sdyx);
  })
}

void stats_rows(const void* x, int64_t num_rows, int64_t c, DType dtype, const double* shift, double* s1,
                double* s2) {
  PLAYBOOK_GBN_DISPATCH(dtype, T, if constexpr (std::is_same<T, float>::value) {
    stats_rows_t(static_cast<const float*>(x), num_rows, c, shift, s1, s2);
  } else {
    stats_rows_f32(static_cast<const T*>(x), num_rows, c, shift, s1, s2);
  })
}

void apply_planes(const void* x, void* y, int64_t num_planes, int64_t s, DType dtype, const float* hi,
                  const float* lo, const float* alpha, const float* beta, bool stream) {
  PLAYBOOK_GBN_DISPATCH(dtype, T, for (int64_t q = 0; q < num_planes; ++q) {
    apply_plane_t(static_cast<const T*>(x) + q * s, static_cast<T*>(y) + q * s, s, hi[q], lo[q], alpha[q], beta[q],
                  stream);
  })
}

void apply_rows(const void* x, void* y, int64_t num_rows, int64_t c, DType dtype, const float* hi,
                const float* lo, const float* alpha, const float* beta, bool stream) {
  PLAYBOOK_GBN_DISPATCH(dtype, T,
                        apply_rows_t(static_cast<const T*>(x), static_cast<T*>(y), num_rows, c, hi, lo, alpha, beta,
                                     stream))
}

void bwd_reduce_rows(const void* dy, const void* x, int64_t num_rows, int64_t c, DType dtype,
                     const float* hi, const float* lo, double* sdy, double* sdyx) {
  PLAYBOOK_GBN_DISPATCH(dtype, T, if constexpr (std::is_same<T, float>::value) {
    bwd_reduce_rows_t(static_cast<const float*>(dy), static_cast<const float*>(x), num_rows, c, hi, lo, sdy, sdyx);
  } else {
    bwd_reduce_rows_f32(static_cast<const T*>(dy), static_cast<const T*>(x), num_rows, c, hi, lo, sdy, sdyx);
  })
}

void bwd_apply_planes(const void* dy, const void* x, void* dx, int64_t num_planes, int64_t s, DType dtype,
                      const float* hi, const float* lo, const float* mdy, const float* k, const float* a, bool stream) {
  PLAYBOOK_GBN_DISPATCH(dtype, T, for (int64_t q = 0; q < num_planes; ++q) {
    bwd_apply_plane_t(static_cast<const T*>(dy) + q * s, static_cast<const T*>(x) + q * s,
                      static_cast<T*>(dx) + q * s, s, hi[q], lo[q], mdy[q], k[q], a[q], stream);
  })
}

void bwd_apply_rows(const void* dy, const void* x, void* dx, int64_t num_rows, int64_t c, DType dtype,
                    const float* hi, const float* lo, const float* mdy, const float* k, const float* a,
                    bool stream) {
  PLAYBOOK_GBN_DISPATCH(dtype, T,
                        bwd_apply_rows_t(static_cast<const T*>(dy), static_cast<const T*>(x),
                                         static_cast<T*>(dx), num_rows, c, hi, lo, mdy, k, a, stream))
}

#undef PLAYBOOK_GBN_DISPATCH

}  // namespace

const GhostBNKernels& ghost_bn_kernels() {
  static const GhostBNKernels table{stats_region,     stats_rows,      apply_planes,    apply_rows,
                                    bwd_reduce_region, bwd_reduce_rows, bwd_apply_planes, bwd_apply_rows,
                                    fence,             moments,         save_stats,      grad_coefs,
                                    ema};
  return table;
}

}  // namespace PLAYBOOK_CPU_ISA
}  // namespace cpu
}  // namespace playbook
