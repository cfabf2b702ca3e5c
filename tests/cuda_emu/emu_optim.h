// Shared driver of the optimizer families (family_adam/nadam/sgd.cpp): the same random problem on
// the CPU path and on the emulated CUDA path, several steps (one of them skipped), with and
// without clipping, compared bit for bit after every step.
#pragma once

#include <functional>

#include "emu_check.h"

namespace emu_test {

enum class Skip { kNone, kNonFinite, kFoundInf };

struct OptimCase {
  std::string label;                 // configuration, for messages
  std::vector<TensorSpec> spec;
  int sms = 1;
  bool clip = false;                 // max_norm below the norm (clipping) or none
  Skip skip = Skip::kNone;           // how step 1 (of 0..2) is skipped
  int pow_ulps = 0;                  // PLAYBOOK_EMU_POW_ULPS for this case
  int ulps = 0;                      // tolerance of the comparison (0: bit for bit)
};

// init(lists, spec, rng): adds the state lists ("exp_avgs", "steps", ...) for the spec.
// step(lists, values, emulated): runs one update of the family on those lists.
using InitFn = std::function<void(Lists&, const std::vector<TensorSpec>&, Rng&)>;
using StepFn = std::function<void(Lists&, const float* values, bool emulated)>;

inline void run_optim_case(Context& ctx, const OptimCase& c, Rng& rng, const InitFn& init,
                           const StepFn& step) {
  ctx.cases += 1;
  ctx.where = fmt("%s %s sms=%d clip=%d skip=%d pow_ulps=%d", c.label.c_str(),
                  describe(c.spec).c_str(), c.sms, c.clip, static_cast<int>(c.skip), c.pow_ulps);
  playbook_emu::set_sm_count(c.sms);
  playbook_emu::g_pow_ulps = c.pow_ulps;
  Lists cpu;
  cpu["params"] = {};
  cpu["grads"] = {};
  for (const TensorSpec& s : c.spec) {
    cpu["params"].emplace_back(s.numel, s.dtype, s.offset);
    fill_normal(cpu["params"].back(), rng, 1.f);
    cpu["grads"].emplace_back(s.numel, s.dtype, 1 - s.offset);
  }
  init(cpu, c.spec, rng);
  Lists emu = cpu;
  StepBuffers sb;
  for (int k = 0; k < 3; ++k) {
    for (Buffer& g : cpu["grads"]) fill_normal(g, rng, 0.5f);
    const bool skipped = k == 1 && c.skip != Skip::kNone;
    if (skipped && c.skip == Skip::kNonFinite) {
      for (Buffer& g : cpu["grads"]) {
        if (g.numel() > 0) {
          g.set(g.numel() - 1, std::nanf(""));
          break;
        }
      }
    }
    emu["grads"] = cpu["grads"];
    // The clip decision of the CPU path, given to both updates (the norm family compares the
    // two norm paths; here the updates must agree given the same step values).
    double total = 0.0;
    playbook::cpu::sumsq(descs(cpu["grads"], playbook::kCPUDevice), nullptr, &total, 1);
    playbook::ClipArgs args;
    args.max_norm = c.clip ? static_cast<float>(0.25 * std::sqrt(total)) : 0.f;
    float found_inf = 1.f;
    if (skipped && c.skip == Skip::kFoundInf) args.found_inf = &found_inf;
    playbook::cpu::finalize_grad_norm(&total, args, sb.state());
    ctx.expect((sb.values[playbook::kSkipIdx] != 0.f) == skipped,
               fmt("step %d: skip flag %g", k, sb.values[playbook::kSkipIdx]));
    float values_emu[playbook::kNumStepValues];
    std::memcpy(values_emu, sb.values, sizeof(values_emu));
    const Lists before = cpu;
    step(cpu, sb.values, false);
    step(emu, values_emu, true);
    const std::string what = fmt("step %d (emulated vs CPU)", k);
    if (c.ulps == 0) {
      ctx.expect_same_bits(emu, cpu, what);
    } else {
      ctx.expect_close_ulps(emu, cpu, what, c.ulps);
    }
    if (skipped) ctx.expect_same_bits(cpu, before, fmt("skipped step %d changed the state", k));
  }
  playbook_emu::g_pow_ulps = 0;
}

// Steps scalars (fp32, one per tensor): random counts in [0, 6] (0: the first step).
inline void add_steps(Lists& l, const std::vector<TensorSpec>& spec, Rng& rng, const char* name) {
  auto& steps = l[name];
  for (size_t i = 0; i < spec.size(); ++i) {
    steps.emplace_back(1, DType::kFloat32, 0);
    steps.back().f32()[0] = static_cast<float>(rng.integer(0, 6));
  }
}

inline void add_state(Lists& l, const std::vector<TensorSpec>& spec, Rng& rng, const char* name,
                      bool positive, float scale) {
  auto& list = l[name];
  for (const TensorSpec& s : spec) {
    list.emplace_back(s.numel, DType::kFloat32, s.offset);
    if (positive) {
      fill_abs_normal(list.back(), rng, scale);
    } else {
      fill_normal(list.back(), rng, scale);
    }
  }
}

// The cases every optimizer family runs for one configuration: every dtype (and a mix), the
// sizes 0, 1, 3, 4097, 131075 with misaligned starts, SM counts cycling through the context's,
// clipping on and off, a step skipped for a non-finite norm and one for found_inf.
inline std::vector<OptimCase> standard_cases(const Context& ctx, const std::string& label,
                                             int index) {
  std::vector<OptimCase> out;
  int k = index;
  for (int d = 0; d < 4; ++d) {
    OptimCase c;
    c.label = label;
    c.spec = d < 3 ? sizes_spec(kDTypes[d], false) : sizes_spec(DType::kFloat32, true);
    c.sms = ctx.sm_counts[static_cast<size_t>(k) % ctx.sm_counts.size()];
    c.clip = (k % 2) == 0;
    c.skip = (k % 3) == 0 ? Skip::kNone : (k % 3) == 1 ? Skip::kNonFinite : Skip::kFoundInf;
    out.push_back(c);
    ++k;
  }
  return out;
}

// More tensors than one launch's table holds (and than one step-advance table: 239).
inline OptimCase many_case(const std::string& label, Rng& rng, DType d) {
  OptimCase c;
  c.label = label;
  c.spec = many_spec(d, 250, rng);
  c.sms = 1;
  c.clip = true;
  c.skip = Skip::kFoundInf;
  return c;
}

}  // namespace emu_test
