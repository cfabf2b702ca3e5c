// Adam / AdamW (csrc/cuda/adam.cu) in the emulator against the CPU path (csrc/cpu/adam.cpp):
// bit for bit, every configuration torch's and the playbook's variants offer.
//
// Known difference: on a GPU the bias corrections use libdevice's pow, here and on the CPU
// glibc's; they may differ in the last bit of a double. The pow_ulps cases move the emulated pow
// one ulp up and check the result stays within 1 ulp of the storage dtype of the CPU's (the
// per-tensor coefficients are rounded to fp32, so a 1-ulp double difference rarely survives).
#include "emu_optim.h"

namespace {

using namespace emu_test;

struct AdamConfig {
  const char* label;
  playbook::AdamHyper h;
  bool lr_tensor;
};

std::vector<AdamConfig> configs() {
  std::vector<AdamConfig> out;
  playbook::AdamHyper h;
  h.lr = 1e-2f;
  out.push_back({"adam", h, false});
  playbook::AdamHyper w = h;
  w.weight_decay = 0.1f;
  w.decoupled_weight_decay = true;
  out.push_back({"adamw lr-tensor", w, true});
  playbook::AdamHyper a = h;
  a.amsgrad = true;
  a.maximize = true;
  a.weight_decay = 0.01f;
  a.beta1 = 0.5f;  // 1 - beta1 >= 0.5: the other torch.lerp branch
  out.push_back({"adam amsgrad maximize l2 beta1=0.5", a, false});
  playbook::AdamHyper p = h;
  p.variant = playbook::Variant::kPlaybook;
  p.amsgrad = true;
  p.beta2 = 0.99f;
  out.push_back({"adam playbook-variant amsgrad", p, false});
  return out;
}

void init(Lists& l, const std::vector<TensorSpec>& spec, Rng& rng, bool amsgrad) {
  add_state(l, spec, rng, "exp_avgs", false, 0.1f);
  add_state(l, spec, rng, "exp_avg_sqs", true, 0.01f);
  if (amsgrad) add_state(l, spec, rng, "max_exp_avg_sqs", true, 0.012f);
  add_steps(l, spec, rng, "steps");
  l["lr"].emplace_back(1, DType::kFloat32, 0);
  l["lr"].back().f32()[0] = 3e-3f;
}

void step(Lists& l, const float* values, bool emulated, playbook::AdamHyper h, bool lr_tensor) {
  playbook::AdamTensors t;
  const int device = emulated ? 0 : playbook::kCPUDevice;
  t.params = descs(l["params"], device);
  t.grads = descs(l["grads"], device);
  t.exp_avgs = f32_ptrs(l["exp_avgs"]);
  t.exp_avg_sqs = f32_ptrs(l["exp_avg_sqs"]);
  if (h.amsgrad) t.max_exp_avg_sqs = f32_ptrs(l["max_exp_avg_sqs"]);
  t.steps = f32_ptrs(l["steps"]);
  if (lr_tensor) h.lr_ptr = l["lr"][0].f32();
  if (emulated) {
    playbook::cuda::adam_step(t, h, values, 0, nullptr);
  } else {
    playbook::cpu::adam_step(t, h, values, 1);
  }
}

}  // namespace

PLAYBOOK_EMU_FAMILY(adam) {
  Rng rng(7);
  int index = 0;
  for (const AdamConfig& cfg : configs()) {
    const InitFn in = [&](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r, cfg.h.amsgrad); };
    const StepFn st = [&](Lists& l, const float* v, bool e) { step(l, v, e, cfg.h, cfg.lr_tensor); };
    for (const OptimCase& c : standard_cases(ctx, cfg.label, index++)) run_optim_case(ctx, c, rng, in, st);
  }
  const AdamConfig big = configs()[2];  // amsgrad: the deepest table (6 lists)
  const InitFn in = [&](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r, true); };
  const StepFn st = [&](Lists& l, const float* v, bool e) { step(l, v, e, big.h, false); };
  run_optim_case(ctx, many_case(big.label, rng, DType::kBFloat16), rng, in, st);
  // libdevice vs glibc pow: one ulp up in every bias correction.
  for (const AdamConfig& cfg : {configs()[0], configs()[3]}) {
    const InitFn in2 = [&](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r, cfg.h.amsgrad); };
    const StepFn st2 = [&](Lists& l, const float* v, bool e) { step(l, v, e, cfg.h, false); };
    for (OptimCase c : standard_cases(ctx, std::string(cfg.label) + " pow+1ulp", 0)) {
      c.pow_ulps = 1;
      c.ulps = 1;
      run_optim_case(ctx, c, rng, in2, st2);
    }
  }
}
