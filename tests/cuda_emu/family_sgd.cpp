// SGD (csrc/cuda/sgd.cu): plain, momentum with dampening, Nesterov, maximize, weight decay, in the
// emulator against the CPU path (csrc/cpu/sgd.cpp), bit for bit (no transcendental functions).
#include "emu_optim.h"

namespace {

using namespace emu_test;

struct SGDConfig {
  const char* label;
  playbook::SGDHyper h;
  bool lr_tensor;
};

std::vector<SGDConfig> configs() {
  std::vector<SGDConfig> out;
  playbook::SGDHyper h;
  h.lr = 0.05f;
  out.push_back({"sgd", h, false});
  playbook::SGDHyper m = h;
  m.momentum = 0.9f;
  m.dampening = 0.1f;
  out.push_back({"sgd momentum dampening=0.1", m, true});
  playbook::SGDHyper n = h;
  n.momentum = 0.9f;
  n.nesterov = true;
  n.weight_decay = 0.01f;
  out.push_back({"sgd nesterov l2", n, false});
  playbook::SGDHyper x = h;
  x.momentum = 0.5f;
  x.maximize = true;
  x.weight_decay = 0.1f;
  out.push_back({"sgd momentum maximize l2", x, false});
  return out;
}

void init(Lists& l, const std::vector<TensorSpec>& spec, Rng& rng, bool momentum) {
  if (momentum) add_state(l, spec, rng, "momentum_buffers", false, 0.1f);
  add_steps(l, spec, rng, "steps");
  l["lr"].emplace_back(1, DType::kFloat32, 0);
  l["lr"].back().f32()[0] = 0.02f;
}

void step(Lists& l, const float* values, bool emulated, playbook::SGDHyper h, bool lr_tensor) {
  playbook::SGDTensors t;
  const int device = emulated ? 0 : playbook::kCPUDevice;
  t.params = descs(l["params"], device);
  t.grads = descs(l["grads"], device);
  if (h.momentum != 0.f) t.momentum_buffers = f32_ptrs(l["momentum_buffers"]);
  t.steps = f32_ptrs(l["steps"]);
  if (lr_tensor) h.lr_ptr = l["lr"][0].f32();
  if (emulated) {
    playbook::cuda::sgd_step(t, h, values, 0, nullptr);
  } else {
    playbook::cpu::sgd_step(t, h, values, 1);
  }
}

}  // namespace

PLAYBOOK_EMU_FAMILY(sgd) {
  Rng rng(13);
  int index = 0;
  for (const SGDConfig& cfg : configs()) {
    const bool mom = cfg.h.momentum != 0.f;
    const InitFn in = [&, mom](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r, mom); };
    const StepFn st = [&](Lists& l, const float* v, bool e) { step(l, v, e, cfg.h, cfg.lr_tensor); };
    for (const OptimCase& c : standard_cases(ctx, cfg.label, index++)) run_optim_case(ctx, c, rng, in, st);
  }
  const SGDConfig big = configs()[2];
  const InitFn in = [&](Lists& l, const std::vector<TensorSpec>& s, Rng& r) { init(l, s, r, true); };
  const StepFn st = [&](Lists& l, const float* v, bool e) { step(l, v, e, big.h, false); };
  run_optim_case(ctx, many_case(big.label, rng, DType::kFloat32), rng, in, st);
}
