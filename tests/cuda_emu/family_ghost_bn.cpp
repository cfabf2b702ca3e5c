// Ghost batch norm (csrc/cuda/ghost_bn.cu) in the emulator against the CPU path
// (csrc/cpu/ghost_bn.cpp) and a long-double reference.
//
// What is bitwise and what is not (NOTE: [Ghost batch norm CUDA kernels]): given the same
// statistics, finalize (saved mean pair, invstd, running stats), normalize, the backward
// coefficients and dx, and the parameter grads are the same statements of
// playbook/ghost_bn_math.h on both paths: bit-identical, checked by feeding the emulated kernels
// the CPU's statistics. The sums themselves are grouped differently (CUDA: 256-thread strides and
// a fixed tree; CPU: lanes / row blocks), so they are checked against the long-double reference
// within a bound: fp32 input (double sums) to double rounding; 16-bit input (float partials over
// short blocks, NOTE: [Ghost batch norm float blocks] in csrc/cpu/kernels/ghost_bn_kernel.cpp)
// within 32 * 2^-24 of the sum of the absolute terms (64 * 2^-24 for squares and products). The
// whole emulated pipeline is checked against the reference within the storage dtype's rounding.
// The emulated results are bit-identical for every simulated SM count and block order (no
// atomics; the reduction shape never depends on the launch).
#include <cmath>

#include "emu_check.h"
#include "playbook/check.h"
#include "playbook/ghost_bn.h"

namespace {

using namespace emu_test;
using playbook::GhostBNShape;

struct Case {
  int64_t n, c, s, vbs;
  bool channels_last;
};

std::string describe(const Case& k, DType dtype) {
  return fmt("n=%lld c=%lld s=%lld vbs=%lld %s %s", static_cast<long long>(k.n), static_cast<long long>(k.c),
             static_cast<long long>(k.s), static_cast<long long>(k.vbs), k.channels_last ? "channels_last" : "contiguous",
             dname(dtype));
}

int64_t at(const Case& k, int64_t n, int64_t c, int64_t p) {
  return k.channels_last ? (n * k.s + p) * k.c + c : (n * k.c + c) * k.s + p;
}

// Everything one path computes for one forward + backward.
struct Run {
  std::vector<double> mean, m2, sdy, sdyx;
  std::vector<float> save_mean, save_invstd, rm, rv, gw, gb, coefs;
  Buffer y, dx;
  Run(const Case& k, DType dtype) {
    const int64_t gc = (k.n + k.vbs - 1) / k.vbs * k.c;
    mean.assign(gc, 0.0), m2.assign(gc, 0.0), sdy.assign(gc, 0.0), sdyx.assign(gc, 0.0);
    save_mean.assign(2 * gc, 0.f), save_invstd.assign(gc, 0.f), coefs.assign(3 * gc, 0.f);
    rm.assign(k.c, 0.25f), rv.assign(k.c, 1.5f), gw.assign(k.c, 0.f), gb.assign(k.c, 0.f);
    y = Buffer(k.n * k.c * k.s, dtype, 1);
    dx = Buffer(k.n * k.c * k.s, dtype, 1);
  }
};

constexpr double kEps = 1e-5;
constexpr double kMomentum = 0.1;
constexpr int64_t kTracked = 3;

GhostBNShape shape_of(const Case& k, DType dtype, int device) {
  GhostBNShape sh;
  sh.n = k.n, sh.c = k.c, sh.s = k.s, sh.vbs = k.vbs, sh.channels_last = k.channels_last;
  sh.dtype = dtype, sh.device = device;
  return sh;
}

void run_cpu(const Case& k, DType dtype, const Buffer& x, const Buffer& dy, const std::vector<float>& w,
             const std::vector<float>& b, Run& r) {
  const GhostBNShape sh = shape_of(k, dtype, playbook::kCPUDevice);
  const int64_t G = sh.num_ghost();
  namespace cpu = playbook::cpu;
  cpu::ghost_bn_stats(sh, x.data(), r.mean.data(), r.m2.data(), 1);
  cpu::ghost_bn_finalize(G, k.c, r.mean.data(), r.m2.data(), sh.ghost_count(0), sh.ghost_count(G - 1), kEps, kMomentum,
                         kTracked, r.rm.data(), r.rv.data(), r.save_mean.data(), r.save_invstd.data());
  cpu::ghost_bn_apply(sh, x.data(), r.y.data(), r.save_mean.data(), r.save_invstd.data(), w.data(), b.data(), 1);
  cpu::ghost_bn_backward_reduce(sh, dy.data(), x.data(), r.save_mean.data(), r.sdy.data(), r.sdyx.data(), 1);
  cpu::ghost_bn_backward_apply(sh, dy.data(), x.data(), r.save_mean.data(), r.save_invstd.data(), w.data(),
                               r.sdy.data(), r.sdyx.data(), sh.ghost_count(0), sh.ghost_count(G - 1), r.dx.data(), 1);
  cpu::ghost_bn_param_grads(G, k.c, r.sdy.data(), r.sdyx.data(), r.save_invstd.data(), r.gw.data(), r.gb.data());
}

// The emulated pipeline; with `from` given, each stage starts from `from`'s inputs to that stage
// (the CPU's statistics), so the stage itself can be compared bit for bit.
void run_emu(const Case& k, DType dtype, const Buffer& x, const Buffer& dy, const std::vector<float>& w,
             const std::vector<float>& b, Run& r, const Run* from) {
  const GhostBNShape sh = shape_of(k, dtype, 0);
  const int64_t G = sh.num_ghost();
  namespace cuda = playbook::cuda;
  cuda::ghost_bn_stats(sh, x.data(), r.mean.data(), r.m2.data(), nullptr);
  const double* mean = from ? from->mean.data() : r.mean.data();
  const double* m2 = from ? from->m2.data() : r.m2.data();
  cuda::ghost_bn_finalize(G, k.c, mean, m2, sh.ghost_count(0), sh.ghost_count(G - 1), kEps, kMomentum, kTracked,
                          r.rm.data(), r.rv.data(), r.save_mean.data(), r.save_invstd.data(), 0, nullptr);
  const float* save_mean = from ? from->save_mean.data() : r.save_mean.data();
  const float* save_invstd = from ? from->save_invstd.data() : r.save_invstd.data();
  cuda::ghost_bn_apply(sh, x.data(), r.y.data(), save_mean, save_invstd, w.data(), b.data(), nullptr);
  cuda::ghost_bn_backward_reduce(sh, dy.data(), x.data(), save_mean, r.sdy.data(), r.sdyx.data(), nullptr);
  const double* sdy = from ? from->sdy.data() : r.sdy.data();
  const double* sdyx = from ? from->sdyx.data() : r.sdyx.data();
  cuda::ghost_bn_backward_apply(sh, dy.data(), x.data(), save_mean, save_invstd, w.data(), sdy, sdyx,
                                sh.ghost_count(0), sh.ghost_count(G - 1), r.coefs.data(), r.dx.data(), nullptr);
  cuda::ghost_bn_param_grads(G, k.c, sdy, sdyx, save_invstd, r.gw.data(), r.gb.data(), 0, nullptr);
}

template <typename T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}
bool same(const Buffer& a, const Buffer& b) {
  if (a.numel() != b.numel()) return false;
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (a.bits(i) != b.bits(i)) return false;
  }
  return true;
}

void check_case(Context& ctx, const Case& k, DType dtype, uint64_t seed) {
  Rng rng(seed);
  const int64_t numel = k.n * k.c * k.s;
  const int offset = static_cast<int>(seed % 2);  // every other case starts misaligned
  Buffer x(numel, dtype, offset), dy(numel, dtype, offset);
  for (int64_t i = 0; i < numel; ++i) {
    x.set(i, 1.5f + rng.normal(2.f));
    dy.set(i, rng.normal(1.f));
  }
  std::vector<float> w(k.c), b(k.c);
  for (int64_t c = 0; c < k.c; ++c) w[c] = rng.uniform(0.5f, 1.5f), b[c] = rng.normal(1.f);

  // Long-double reference of the statistics, y and dx from the stored (rounded) inputs.
  const int64_t G = (k.n + k.vbs - 1) / k.vbs;
  std::vector<long double> ref_mean(G * k.c), ref_var(G * k.c), ref_y(numel), ref_dx(numel);
  // Sums of absolute terms for the 16-bit bounds: |x - K| and (x - K)^2 with K the slice's first
  // element (the shift of both paths), |dy|.
  std::vector<long double> ref_abs(G * k.c), ref_sq(G * k.c), ref_gabs(G * k.c);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n0 = g * k.vbs, n1 = std::min(k.n, n0 + k.vbs);
    const long double m = static_cast<long double>((n1 - n0) * k.s);
    for (int64_t c = 0; c < k.c; ++c) {
      long double sum = 0, sq = 0, gsum = 0, gdot = 0;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t p = 0; p < k.s; ++p) sum += x.get(at(k, n, c, p));
      const long double mu = sum / m;
      const long double shift = x.get(at(k, n0, c, 0));
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t p = 0; p < k.s; ++p) {
          const long double d = x.get(at(k, n, c, p)) - shift;
          ref_abs[g * k.c + c] += std::fabs(d);
          ref_sq[g * k.c + c] += d * d;
          ref_gabs[g * k.c + c] += std::fabs(static_cast<long double>(dy.get(at(k, n, c, p))));
        }
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t p = 0; p < k.s; ++p) {
          const long double d = x.get(at(k, n, c, p)) - mu;
          sq += d * d;
          gsum += dy.get(at(k, n, c, p));
          gdot += dy.get(at(k, n, c, p)) * d;
        }
      const long double var = sq / m;
      const long double is = 1.0L / std::sqrt(var + static_cast<long double>(kEps));
      ref_mean[g * k.c + c] = mu;
      ref_var[g * k.c + c] = var;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t p = 0; p < k.s; ++p) {
          const int64_t e = at(k, n, c, p);
          const long double xh = (x.get(e) - mu) * is;
          ref_y[e] = xh * w[c] + b[c];
          ref_dx[e] = (dy.get(e) - gsum / m - xh * is * gdot / m) * is * w[c];
        }
    }
  }

  Run cpu(k, dtype);
  run_cpu(k, dtype, x, dy, w, b, cpu);
  // Storage tolerance: the output is rounded once to the dtype (plus fp32 math).
  const double tol = dtype == DType::kFloat32 ? 2e-5 : dtype == DType::kBFloat16 ? 3e-2 : 4e-3;

  {
    {
      ctx.cases += 1;
      ctx.where = fmt("ghost_bn %s staged", describe(k, dtype).c_str());
      playbook_emu::set_sm_count(ctx.sm_counts[0]);
      playbook_emu::set_seed(1);

      // 1. Stage by stage from the CPU's statistics: bit-identical.
      Run staged(k, dtype);
      run_emu(k, dtype, x, dy, w, b, staged, &cpu);
      ctx.expect(same(staged.save_mean, cpu.save_mean), "finalize: saved mean pair differs from the CPU");
      ctx.expect(same(staged.save_invstd, cpu.save_invstd), "finalize: invstd differs from the CPU");
      ctx.expect(same(staged.rm, cpu.rm) && same(staged.rv, cpu.rv), "finalize: running stats differ from the CPU");
      ctx.expect(same(staged.y, cpu.y), "normalize: y differs from the CPU");
      ctx.expect(same(staged.dx, cpu.dx), "backward: dx differs from the CPU");
      ctx.expect(same(staged.gw, cpu.gw) && same(staged.gb, cpu.gb), "backward: weight/bias grads differ from the CPU");

      // 2. Sums against the reference: double rounding only for fp32 input; for 16-bit input the
      //    float-block bound (32 * 2^-24 of the absolute terms, 64 * 2^-24 for squares and
      //    products). The backward sums against a reference taken with the CPU's saved mean pair
      //    (the mean both paths' backward sums use).
      const bool half = dtype != DType::kFloat32;
      const double u = std::ldexp(1.0, -24);
      for (int64_t i = 0; i < G * k.c; ++i) {
        const double mu = static_cast<double>(ref_mean[i]);
        const double sd = std::sqrt(static_cast<double>(ref_var[i]));
        const double cnt = static_cast<double>(std::min(k.vbs, k.n - (i / k.c) * k.vbs) * k.s);
        const double abs_d = static_cast<double>(ref_abs[i]);
        const double tol_mean = 1e-12 * (std::fabs(mu) + sd) + (half ? 32 * u * abs_d / cnt : 0.0);
        ctx.expect(std::fabs(staged.mean[i] - mu) <= tol_mean,
                   fmt("(g,c)=%lld: emulated mean %.17g vs reference %.17g", static_cast<long long>(i), staged.mean[i], mu));
        ctx.expect(std::fabs(cpu.mean[i] - mu) <= tol_mean,
                   fmt("(g,c)=%lld: CPU mean %.17g vs reference %.17g", static_cast<long long>(i), cpu.mean[i], mu));
        const double var = static_cast<double>(ref_var[i]);
        const double tol_var =
            1e-10 * var + 1e-300 + (half ? 64 * u * (static_cast<double>(ref_sq[i]) + abs_d * abs_d / cnt) / cnt : 0.0);
        ctx.expect(std::fabs(staged.m2[i] / cnt - var) <= tol_var,
                   fmt("(g,c)=%lld: emulated var %.17g vs reference %.17g", static_cast<long long>(i), staged.m2[i] / cnt, var));
        ctx.expect(std::fabs(cpu.m2[i] / cnt - var) <= tol_var,
                   fmt("(g,c)=%lld: CPU var %.17g vs reference %.17g", static_cast<long long>(i), cpu.m2[i] / cnt, var));
        if (!half) {
          ctx.expect(std::fabs(staged.sdy[i] - cpu.sdy[i]) <= 1e-10 * (1.0 + std::fabs(cpu.sdy[i])) &&
                         std::fabs(staged.sdyx[i] - cpu.sdyx[i]) <= 1e-10 * (1.0 + std::fabs(cpu.sdyx[i])),
                     fmt("(g,c)=%lld: emulated backward sums (%.17g, %.17g) vs CPU (%.17g, %.17g)",
                         static_cast<long long>(i), staged.sdy[i], staged.sdyx[i], cpu.sdy[i], cpu.sdyx[i]));
          continue;
        }
        const int64_t g = i / k.c, c = i % k.c;
        const long double hl = static_cast<long double>(cpu.save_mean[i]) + cpu.save_mean[G * k.c + i];
        long double sdy = 0, sdyx = 0, abs_p = 0;
        for (int64_t n = g * k.vbs; n < std::min(k.n, (g + 1) * k.vbs); ++n)
          for (int64_t p = 0; p < k.s; ++p) {
            const long double gv = dy.get(at(k, n, c, p));
            const long double t = gv * (x.get(at(k, n, c, p)) - hl);
            sdy += gv;
            sdyx += t;
            abs_p += std::fabs(t);
          }
        const double tol_dy = 32 * u * static_cast<double>(ref_gabs[i]) + 1e-300;
        const double tol_dyx = 64 * u * static_cast<double>(abs_p) + 1e-300;
        for (const Run* r : {&cpu, &staged}) {
          ctx.expect(std::fabs(r->sdy[i] - static_cast<double>(sdy)) <= tol_dy &&
                         std::fabs(r->sdyx[i] - static_cast<double>(sdyx)) <= tol_dyx,
                     fmt("(g,c)=%lld: %s backward sums (%.17g, %.17g) vs reference (%.17g, %.17g)",
                         static_cast<long long>(i), r == &cpu ? "CPU" : "emulated", r->sdy[i], r->sdyx[i],
                         static_cast<double>(sdy), static_cast<double>(sdyx)));
        }
      }

    }
  }

  bool have_first = false;
  Run first(k, dtype);
  // Every SM count for fp32; the 16-bit dtypes (same kernels, other loads/stores) at one.
  const std::vector<int> sm_counts =
      dtype == DType::kFloat32 ? ctx.sm_counts : std::vector<int>{ctx.sm_counts.back()};
  for (int sms : sm_counts) {
    for (uint64_t order : {1u, 2u}) {
      ctx.cases += 1;
      ctx.where = fmt("ghost_bn %s sms=%d order=%llu", describe(k, dtype).c_str(), sms,
                      static_cast<unsigned long long>(order));
      playbook_emu::set_sm_count(sms);
      playbook_emu::set_seed(order);

      // 3. The whole emulated pipeline against the reference.
      Run full(k, dtype);
      run_emu(k, dtype, x, dy, w, b, full, nullptr);
      double worst_y = 0, worst_dx = 0;
      for (int64_t e = 0; e < numel; ++e) {
        const double ry = static_cast<double>(ref_y[e]), rdx = static_cast<double>(ref_dx[e]);
        worst_y = std::max(worst_y, std::fabs(full.y.get(e) - ry) / (1.0 + std::fabs(ry)));
        worst_dx = std::max(worst_dx, std::fabs(full.dx.get(e) - rdx) / (1.0 + std::fabs(rdx)));
      }
      ctx.expect(worst_y <= tol, fmt("y: worst error %.3g vs the reference (tolerance %.3g)", worst_y, tol));
      ctx.expect(worst_dx <= tol, fmt("dx: worst error %.3g vs the reference (tolerance %.3g)", worst_dx, tol));

      // 4. Independent of the SM count and the block order, bit for bit.
      if (!have_first) {
        first = full;
        have_first = true;
      } else {
        ctx.expect(same(full.mean, first.mean) && same(full.m2, first.m2) && same(full.sdy, first.sdy) &&
                       same(full.sdyx, first.sdyx) && same(full.y, first.y) && same(full.dx, first.dx) &&
                       same(full.gw, first.gw) && same(full.rm, first.rm) && same(full.rv, first.rv),
                   "emulated results depend on the SM count or the block order");
      }
    }
  }
}

}  // namespace

PLAYBOOK_EMU_FAMILY(ghost_bn) {
  const std::vector<Case> cases = {
      {7, 5, 6, 3, false},    // ghost batches 3, 3, 1 sample
      {7, 5, 6, 3, true},
      {10, 37, 1, 4, true},   // (N, C): two channel tiles, the second partial
      {5, 3, 300, 2, false},  // planes longer than the block
      {4, 2, 7, 8, false},    // vbs > n: plain batch norm
      {6, 33, 4, 6, true},
  };
  const size_t count = ctx.quick ? 2 : cases.size();
  uint64_t seed = 100;
  for (size_t i = 0; i < count; ++i) {
    for (DType dtype : kDTypes) check_case(ctx, cases[i], dtype, seed++);
  }
  // Bad shapes are refused before any launch, with the value in the message.
  ctx.cases += 1;
  ctx.where = "ghost_bn bad shapes";
  const int64_t launches = playbook_emu::launches();
  double mean = 0.0, m2 = 0.0;
  float in = 0.f;
  for (const Case& bad : {Case{0, 3, 4, 2, false}, Case{4, 3, 4, 0, false}, Case{4, 0, 4, 2, true}}) {
    bool refused = false;
    try {
      playbook::cuda::ghost_bn_stats(shape_of(bad, DType::kFloat32, 0), &in, &mean, &m2, nullptr);
    } catch (const playbook::ValueError&) {
      refused = true;
    }
    ctx.expect(refused, fmt("%s was not refused", describe(bad, DType::kFloat32).c_str()));
  }
  ctx.expect(playbook_emu::launches() == launches, "a refused call launched a kernel");
}
