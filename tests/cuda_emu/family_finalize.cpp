// The GradScaler semantics of the CUDA finalize (finalize_grad_norm_kernel, csrc/cuda/norm.cu)
// against the rule of issue 6 (NOTE: [GradScaler semantics] in csrc/cpu/norm.cpp), stated here as
// properties, independently of the CPU path (family_norm compares the two paths bit for bit):
//   skip      = found_inf || (skip_nonfinite && nonfinite)
//   found_inf = 1 exactly when the step is skipped (untouched otherwise)
//   clipped   counts finite norms above max_norm of applied steps only; a non-finite norm is
//             never a clip: an applied non-finite step gets the factor 1 / grad_scale.
// Also: the flag of a caller on another device (python/playbook/optim/_base.py copies it to the
// primary device, finalizes there and copies it back: the same sequence here on the emulated
// device), a finalize for a device that does not exist (the guard throws before anything is
// written), and the multi-dtype preflight (NOTE: [All-or-nothing launches]) launching nothing.
#include <cmath>
#include <cstring>
#include <limits>

#include "emu_check.h"

namespace {

using namespace emu_test;
using playbook::ClipArgs;

constexpr float kNone = -1.f;  // no grad_scale / no found_inf

struct Outcome {
  StepBuffers sb;
  float found = kNone;
};

Outcome run_cuda_finalize(double total, float max_norm, bool skip_nonfinite, float scale, float found) {
  Outcome o;
  o.sb.counters[playbook::kStepsSeenIdx] = 5;
  o.sb.counters[playbook::kSkippedIdx] = 1;
  o.sb.counters[playbook::kClippedIdx] = 2;
  o.found = found;
  float scale_v = scale;
  ClipArgs args;
  args.max_norm = max_norm;
  args.skip_nonfinite = skip_nonfinite;
  if (scale != kNone) args.grad_scale = &scale_v;
  if (found != kNone) args.found_inf = &o.found;
  playbook::cuda::finalize_grad_norm(&total, args, o.sb.state(), 0, nullptr);
  return o;
}

void check_rule(Context& ctx) {
  const double inf = std::numeric_limits<double>::infinity();
  // 1e80: a finite double total whose float norm overflows to inf (non-finite too).
  const double totals[] = {0.0, 2.25, 1e6, 1e80, inf, std::nan("")};
  const float max_norms[] = {0.f, 1.f, std::numeric_limits<float>::infinity()};
  const float scales[] = {kNone, 65536.f};
  const float founds[] = {kNone, 0.f, 1.f};
  for (double total : totals) {
    for (float max_norm : max_norms) {
      for (float scale : scales) {
        for (float found : founds) {
          for (bool skip_nonfinite : {true, false}) {
            ctx.cases += 1;
            ctx.where = fmt("finalize rule total=%g max_norm=%g scale=%g found_inf=%g skip_nonfinite=%d",
                            total, max_norm, scale, found, skip_nonfinite);
            const Outcome o = run_cuda_finalize(total, max_norm, skip_nonfinite, scale, found);
            const double s = scale == kNone ? 1.0 : scale;
            const float norm = o.sb.values[playbook::kNormIdx];
            const bool nonfinite = !std::isfinite(norm);
            // The norm itself: sqrt(total) / scale rounded to float (NaN stays NaN).
            const float want_norm = static_cast<float>(std::sqrt(total) / s);
            ctx.expect(std::memcmp(&norm, &want_norm, sizeof(float)) == 0 || (norm != norm && want_norm != want_norm),
                       fmt("norm %g, expected %g", norm, want_norm));
            ctx.expect(nonfinite == !std::isfinite(want_norm), fmt("nonfinite=%d", nonfinite));
            if (total == 1e80 && scale == kNone) ctx.expect(nonfinite, "a float-overflowing norm is non-finite");
            const bool found_set = found != kNone && found != 0.f;
            const bool skip = found_set || (skip_nonfinite && nonfinite);
            ctx.expect(o.sb.values[playbook::kSkipIdx] == (skip ? 1.f : 0.f),
                       fmt("skip flag %g, expected %d", o.sb.values[playbook::kSkipIdx], skip));
            if (found != kNone) {
              ctx.expect(o.found == (skip ? 1.f : found),
                         fmt("found_inf %g after a step that was %s", o.found, skip ? "skipped" : "applied"));
            }
            const bool clipping = !nonfinite && max_norm > 0.f && std::isfinite(max_norm) && norm > max_norm;
            ctx.expect(o.sb.counters[playbook::kStepsSeenIdx] == 6, "steps seen not advanced by one");
            ctx.expect(o.sb.counters[playbook::kSkippedIdx] == 1 + (skip ? 1 : 0), "skipped counter");
            ctx.expect(o.sb.counters[playbook::kClippedIdx] == 2 + (!skip && clipping ? 1 : 0),
                       fmt("clipped counter %lld", static_cast<long long>(o.sb.counters[playbook::kClippedIdx])));
            const float factor = o.sb.values[playbook::kGradFactorIdx];
            if (nonfinite || !clipping) {
              // No clip: the raw grads are only unscaled (a non-finite step is applied unclipped).
              ctx.expect(factor == static_cast<float>(1.0 / s), fmt("factor %g without a clip", factor));
            } else {
              const float want = static_cast<float>(static_cast<double>(max_norm / norm) / s);
              ctx.expect(factor == want && factor < static_cast<float>(1.0 / s),
                         fmt("clip factor %g, expected %g", factor, want));
            }
            ctx.expect(std::memcmp(&o.sb.history[5 % 4], &norm, sizeof(float)) == 0, "history slot");
          }
        }
      }
    }
  }
}

// The caller's found_inf lives on another device (or has another dtype): _base.py finalizes
// with a float32 copy on the primary device and writes the result back to the caller's tensor.
void check_flag_on_another_device(Context& ctx) {
  for (double total : {2.25, std::numeric_limits<double>::infinity()}) {
    for (bool skip_nonfinite : {true, false}) {
      for (double caller : {0.0, 1.0}) {  // the caller's flag, float64 "on device 1"
        ctx.cases += 1;
        ctx.where = fmt("finalize flag elsewhere total=%g skip_nonfinite=%d caller=%g", total,
                        skip_nonfinite, caller);
        float on_primary = static_cast<float>(caller);  // found_inf.to(primary, float32)
        StepBuffers sb;
        ClipArgs args;
        args.max_norm = 1.f;
        args.skip_nonfinite = skip_nonfinite;
        args.found_inf = &on_primary;
        const double t = total;
        playbook::cuda::finalize_grad_norm(&t, args, sb.state(), 0, nullptr);
        const double written_back = on_primary;  // caller_found_inf.copy_(found_inf)
        const bool skip = caller != 0.0 || (skip_nonfinite && !std::isfinite(total));
        ctx.expect(written_back == (skip ? 1.0 : 0.0),
                   fmt("caller's flag %g after a step that was %s", written_back, skip ? "skipped" : "applied"));
        ctx.expect(sb.values[playbook::kSkipIdx] == (skip ? 1.f : 0.f), "skip flag");
      }
    }
  }
}

// A device the runtime does not have: the guard throws before the kernel writes anything.
void check_bad_device(Context& ctx) {
  ctx.cases += 1;
  ctx.where = "finalize on a device that does not exist";
  StepBuffers sb;
  sb.values[0] = sb.values[1] = sb.values[2] = -7.f;
  float found = 0.f;
  ClipArgs args;
  args.found_inf = &found;
  const double total = std::numeric_limits<double>::infinity();
  const int64_t before = playbook_emu::launches();
  bool threw = false;
  try {
    playbook::cuda::finalize_grad_norm(&total, args, sb.state(), 7, nullptr);
  } catch (const std::exception&) {
    threw = true;
  }
  ctx.expect(threw, "finalize on device 7 did not throw");
  ctx.expect(playbook_emu::launches() == before, "a kernel was launched for device 7");
  ctx.expect(sb.values[playbook::kSkipIdx] == -7.f && found == 0.f && sb.counters[0] == 0,
             "finalize on device 7 wrote something");
  // The failed cudaSetDevice must not linger as the runtime's last error: the next call's launch
  // check would report it as its own.
  bool next_ok = true;
  try {
    playbook::cuda::finalize_grad_norm(&total, args, sb.state(), 0, nullptr);
  } catch (const std::exception& e) {
    next_ok = false;
    ctx.fail(fmt("the next finalize on device 0 failed: %s", e.what()));
  }
  ctx.expect(next_ok && found == 1.f && sb.values[playbook::kSkipIdx] == 1.f,
             "the next finalize on device 0 did not skip the non-finite step");
}

// NOTE: [All-or-nothing launches]: with two dtypes the step runs a preflight pass first; it must
// launch nothing, so a mixed step launches exactly what its two single-dtype halves launch (each
// half has one step-advance launch; the mixed step has one for both).
void check_preflight_launches_nothing(Context& ctx) {
  ctx.cases += 1;
  ctx.where = "preflight of a two-dtype SGD step";
  auto make = [](DType d, int64_t n) { return Buffer(n, d, 0); };
  std::vector<Buffer> params{make(DType::kFloat32, 4097), make(DType::kBFloat16, 131075), make(DType::kFloat32, 3)};
  std::vector<Buffer> grads{make(DType::kFloat32, 4097), make(DType::kBFloat16, 131075), make(DType::kFloat32, 3)};
  Rng rng(6);
  for (Buffer& g : grads) fill_normal(g, rng, 1.f);
  std::vector<float> steps(params.size(), 0.f);
  float values[playbook::kNumStepValues] = {1.f, 1.f, 0.f};
  auto run = [&](const std::vector<size_t>& idx) {
    playbook::SGDTensors t;
    for (size_t i : idx) {
      t.params.push_back(params[i].desc(0));
      t.grads.push_back(grads[i].desc(0));
      t.steps.push_back(&steps[i]);
    }
    playbook::SGDHyper h;
    h.lr = 0.1f;
    const int64_t before = playbook_emu::launches();
    playbook::cuda::sgd_step(t, h, values, 0, nullptr);
    return playbook_emu::launches() - before;
  };
  const int64_t fp32 = run({0, 2});
  const int64_t bf16 = run({1});
  const int64_t mixed = run({0, 1, 2});
  ctx.expect(mixed == fp32 + bf16 - 1,
             fmt("mixed step launched %lld kernels, its halves %lld + %lld (minus one step advance)",
                 static_cast<long long>(mixed), static_cast<long long>(fp32), static_cast<long long>(bf16)));
  ctx.expect(steps[0] == 2.f && steps[1] == 2.f && steps[2] == 2.f, "every step advanced once per call");
}

}  // namespace

PLAYBOOK_EMU_FAMILY(finalize) {
  playbook_emu::set_sm_count(3);
  check_rule(ctx);
  check_flag_on_another_device(ctx);
  check_bad_device(ctx);
  check_preflight_launches_nothing(ctx);
}
