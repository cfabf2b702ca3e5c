// Element load/store helpers for the CPU chunk kernels. Included INSIDE the ISA namespace by each
// kernel file (see NOTE: [SIMD dispatch]): every copy is private to its SIMD level.
//
// Storage types: float, Bf16 (bits of a bfloat16) and _Float16. Math is always fp32.

struct Bf16 {
  uint16_t bits;
};

static inline float to_float(float x) { return x; }
static inline float to_float(Bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
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
    return Bf16{static_cast<uint16_t>(is_nan ? 0x7fc0u : rounded)};
  }
};
template <>
struct StoreAs<_Float16> {
  static inline _Float16 from(float f) { return static_cast<_Float16>(f); }
};

// torch.lerp(start, end, w): start + w*(end-start) if |w| < 0.5 else end - (end-start)*(1-w).
static inline float lerp(float start, float end, float w, float one_minus_w, bool low) {
  return low ? start + w * (end - start) : end - (end - start) * one_minus_w;
}
