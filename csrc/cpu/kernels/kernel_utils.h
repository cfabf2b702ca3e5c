// Element load/store helpers for the CPU chunk kernels. Included INSIDE the ISA namespace by each
// kernel file (see NOTE: [SIMD dispatch]): every copy is private to its SIMD level.
//
// Storage types: float, Bf16 (the bits of a bfloat16, a plain uint16_t so that loads vectorize)
// and _Float16. Math is always fp32.

using Bf16 = uint16_t;

static inline float to_float(float x) { return x; }
static inline float to_float(Bf16 x) {
  uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}
static inline float to_float(_Float16 x) { return static_cast<float>(x); }

template <typename T>
struct StoreAs;
template <>
struct StoreAs<float> {
  static inline float from(float x) { return x; }
};
template <>
struct StoreAs<Bf16> {
  // Round to nearest even; NaN stays a (quiet) NaN, as c10::BFloat16 does.
  static inline Bf16 from(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, sizeof(u));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
    return static_cast<Bf16>(is_nan ? 0x7fc0u : rounded);
  }
};
template <>
struct StoreAs<_Float16> {
  static inline _Float16 from(float f) { return static_cast<_Float16>(f); }
};

// NOTE: [16-bit blocks]
// 16-bit params and grads are widened into fp32 blocks on the stack, the fp32 kernel body runs on
// the blocks, and the params are rounded back: every loop then works on float arrays, which the
// compiler vectorizes at every SIMD level (a loop that mixes 16-bit loads and stores with fp32
// math often stays scalar). fp16 uses the F16C conversions where the level has them.
constexpr int64_t kBlock = 512;  // a multiple of every lane count used by the kernels

static inline void load_block(float* __restrict dst, const Bf16* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}
static inline void store_block(Bf16* __restrict dst, const float* __restrict src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = StoreAs<Bf16>::from(src[i]);
}
static inline void load_block(float* __restrict dst, const _Float16* __restrict src, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
static inline void store_block(_Float16* __restrict dst, const float* __restrict src, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<_Float16>(src[i]);
}

// Runs body(p, g, offset, len) over [0, n): directly for float storage, through fp32 blocks
// (NOTE: [16-bit blocks]) for 16-bit storage; the params are written back after each block.
template <typename Body>
static inline void for_blocks(float* p, const float* g, int64_t n, const Body& body) {
  body(p, g, int64_t{0}, n);
}
template <typename T, typename Body>
static inline void for_blocks(T* p, const T* g, int64_t n, const Body& body) {
  float pb[kBlock];
  float gb[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = n - b < kBlock ? n - b : kBlock;
    load_block(pb, p + b, len);
    load_block(gb, g + b, len);
    body(pb, gb, b, len);
    store_block(p + b, pb, len);
  }
}
