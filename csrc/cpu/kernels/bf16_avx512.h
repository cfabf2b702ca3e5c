// bf16 <-> fp32 for 16 elements at a time in AVX-512 registers, for the optimizer chunk kernels
// (NOTE: [bf16 in registers]). Included INSIDE the ISA namespace after kernel_utils.h, like it
// (NOTE: [SIMD dispatch]); only the AVX-512 level compiles anything from here.
//
// NOTE: [bf16 in registers]
// At the AVX-512 level, bf16 params and grads are widened 16 at a time in registers (a 16-bit
// load, a zero extension and a shift: exact, as to_float) and the params rounded back 16 at a
// time (the integer rounding of StoreAs<Bf16>: round to nearest even, NaN -> 0x7fc0), instead of
// going through fp32 blocks on the stack (NOTE: [16-bit blocks]): the compiler left the
// block round trip and the rounding loop partly scalar. The element math between load and store
// is the same function on the same fp32 values, so the results are the same bits as the block
// path (and as the other levels).
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define PLAYBOOK_BF16_AVX512 1

// 16 bf16 -> 16 fp32 (exact).
static inline __m512 load16_bf16(const Bf16* src) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// 16 fp32 -> 16 bf16, as StoreAs<Bf16>::from on every lane.
static inline void store16_bf16(Bf16* dst, __m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(rounded));
}

// NOTE: [bf16 rounding instruction]
// CPUs with AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later) round 16 floats to bf16
// in one instruction, vcvtneps2bf16: round to nearest even, as StoreAs<Bf16>::from, for every
// input but two kinds: a NaN keeps its sign and payload (StoreAs gives 0x7fc0) and a denormal
// input is read as zero. store16_bf16_native checks the 16 lanes for those (vfpclassps: NaN or
// denormal) and gives such a strip to store16_bf16, so its results are the same bits on every
// input (checked against the integer rounding on 320M random bit patterns, a third of them with
// small exponents, on this project's Zen 4 VM; tests: denormal and NaN params at every level).
// Only functions that carry PLAYBOOK_BF16_NATIVE_TARGET contain it, and they run only where the
// CPU reports the extension (has_avx512_bf16()); the rest of the level is compiled without it.
#define PLAYBOOK_BF16_NATIVE_TARGET __attribute__((target("avx512bf16")))

static inline bool has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

PLAYBOOK_BF16_NATIVE_TARGET static inline void store16_bf16_native(Bf16* dst, __m512 f) {
  if (_mm512_fpclass_ps_mask(f, 0x01 | 0x20 | 0x80) != 0) {  // QNaN | denormal | SNaN
    store16_bf16(dst, f);
    return;
  }
  const __m256bh r = _mm512_cvtneps_pbh(f);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), reinterpret_cast<const __m256i&>(r));
}
#endif
