// NAdam (csrc/cuda/nadam.cu), both variants, in the emulator against the CPU path
// (csrc/cpu/nadam.cpp), bit for bit. Known difference: pow (see family_adam.cpp); the pow_ulps
// cases move it one ulp up (bias corrections and the 0.96^(t md) momentum schedule) and check the
// results stay within 1 ulp (params, moments) of the CPU's.
#include "emu_optim.h"

namespace {

using namespace emu_test;

struct NAdamConfig {
  const char* label;
  playbook::NAdamHyper h;
  bool lr_tensor;
};

std::vector<NAdamConfig> configs() {
  std::vector<NAdamConfig> out;
  playbook::NAdamHyper h;
  h.lr = 1e-2f;
  out.push_back({"nadam torch", h, false});
  playbook::NAdamHyper p = h;
  p.variant = playbook::Variant::kPlaybook;
  out.push_back({"nadam playbook", p, true});
  playbook::NAdamHyper w = h;
  w.weight_decay = 0.05f;
  w.decoupled_weight_decay = true;
  w.momentum_decay = 8e-3f;
  out.push_back({"nadamw torch momentum_decay=8e-3", w, false});
  playbook::NAdamHyper m = h;
  m.weight_decay = 0.01f;
  m.maximize = true;
  m.beta1 = 0.4f;
  m.variant = playbook::Variant::kPlaybook;
  out.push_back({"nadam playbook l2 maximize beta1=0.4", m, false});
  return out;
}

void init(Lists& l, const std::vector<TensorSpec>& spec, Rng& rng) {
  add_state(l, spec, rng, "exp_avgs", false, 0.1f);
  add_state(l, spec, rng, "exp_avg_sqs", true, 0.01f);
  add_steps(l, spec, rng, "steps");
  auto& mu = l["mu_products"];
  for (size_t i = 0; i < spec.size(); ++i) {
    mu.emplace_back(1, DType::kFloat32, 0);
    mu.back().f32()[0] = l["steps"][i].f32()[0] == 0.f ? 1.f : rng.uniform(0.2f, 0.9f);
  }
  l["lr"].emplace_back(1, DType::kFloat32, 0);
  l["lr"].back().f32()[0] = 2e-3f;
}

void step(Lists& l, const float* values, bool emulated, playbook::NAdamHyper h, bool lr_tensor) {
  playbook::NAdamTensors t;
  const int device = emulated ? 0 : playbook::kCPUDevice;
  t.params = descs(l["params"], device);
  t.grads = descs(l["grads"], device);
  t.exp_avgs = f32_ptrs(l["exp_avgs"]);
  t.exp_avg_sqs = f32_ptrs(l["exp_avg_sqs"]);
  t.mu_products = f32_ptrs(l["mu_products"]);
  t.steps = f32_ptrs(l["steps"]);
  if (lr_tensor) h.lr_ptr = l["lr"][0].f32();
  if (emulated) {
    playbook::cuda::nadam_step(t, h, values, 0, nullptr);
  } else {
    playbook::cpu::nadam_step(t, h, values, 1);
  }
}

}  // namespace

PLAYBOOK_EMU_FAMILY(nadam) {
  Rng rng(11);
  int index = 0;
  for (const NAdamConfig& cfg : configs()) {
    const InitFn in = [&](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r); };
    const StepFn st = [&](Lists& l, const float* v, bool e) { step(l, v, e, cfg.h, cfg.lr_tensor); };
    for (const OptimCase& c : standard_cases(ctx, cfg.label, index++)) run_optim_case(ctx, c, rng, in, st);
  }
  const NAdamConfig big = configs()[0];
  const InitFn in = [&](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r); };
  const StepFn st = [&](Lists& l, const float* v, bool e) { step(l, v, e, big.h, false); };
  run_optim_case(ctx, many_case(big.label, rng, DType::kFloat16), rng, in, st);
  for (const NAdamConfig& cfg : {configs()[0], configs()[1]}) {
    const StepFn st2 = [&](Lists& l, const float* v, bool e) { step(l, v, e, cfg.h, false); };
    for (OptimCase c : standard_cases(ctx, std::string(cfg.label) + " pow+1ulp", 0)) {
      c.pow_ulps = 1;
      c.ulps = 1;
      run_optim_case(ctx, c, rng, in, st2);
    }
  }
}
