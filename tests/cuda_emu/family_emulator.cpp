// The emulator's own semantics: warp shuffles (down/up/xor/idx), atomics from concurrent threads,
// dynamic shared memory with __syncthreads, a bad launch configuration reported by
// cudaGetLastError(). The misuse aborts are run by test_cuda_emu.py (--expect-abort).
#include "emu_check.h"

namespace emu_selftest {
void run_shfl(int* out);
void run_atomic(int* counter, double* sum, unsigned* max_id);
void run_shared(float* out);
int run_zero_grid();
}  // namespace emu_selftest

PLAYBOOK_EMU_FAMILY(emulator) {
  using namespace emu_test;
  for (uint64_t seed : {1u, 2u}) {
    playbook_emu::set_seed(seed);
    ctx.cases += 1;
    ctx.where = fmt("emulator shuffles seed=%llu", static_cast<unsigned long long>(seed));
    std::vector<int> out(64 * 4, -1);
    emu_selftest::run_shfl(out.data());
    for (int t = 0; t < 64; ++t) {
      const int lane = t % 32, base = t - lane;
      const int want[4] = {(lane + 3 < 32 ? t + 3 : t) * 10, (lane >= 5 ? t - 5 : t) * 10,
                           (base + (lane ^ 7)) * 10, (base + 9) * 10};
      for (int k = 0; k < 4; ++k) {
        ctx.expect(out[t * 4 + k] == want[k],
                   fmt("thread %d shuffle %d: got %d, expected %d", t, k, out[t * 4 + k], want[k]));
      }
    }
    ctx.cases += 1;
    ctx.where = "emulator atomics";
    int counter = 0;
    double sum = 0.0;
    unsigned max_id = 0;
    emu_selftest::run_atomic(&counter, &sum, &max_id);
    ctx.expect(counter == 3 * 96 && sum == 0.5 * 3 * 96 && max_id == 3 * 96 - 1,
               fmt("atomics: counter %d, sum %g, max %u", counter, sum, max_id));
    ctx.cases += 1;
    ctx.where = "emulator dynamic shared memory";
    std::vector<float> sh(4 * 64, -1.f);
    emu_selftest::run_shared(sh.data());
    for (int b = 0; b < 4; ++b) {
      for (int t = 0; t < 64; ++t) {
        const float want = static_cast<float>(63 - t) + 1000.f * static_cast<float>(b);
        ctx.expect(sh[b * 64 + t] == want, fmt("block %d thread %d: %g vs %g", b, t, sh[b * 64 + t], want));
      }
    }
  }
  ctx.cases += 1;
  ctx.where = "emulator invalid configuration";
  ctx.expect(emu_selftest::run_zero_grid() == 9 /* cudaErrorInvalidConfiguration */,
             "a launch with 0 blocks must set cudaErrorInvalidConfiguration");
}
