// The pybind11 module playbook._C: converts Python ints/lists into the core's descriptors.
//
// The Python layer (python/playbook/_tensors.py, python/playbook/optim/_base.py) passes
// data_ptr()s, numels, dtype codes, the device ordinal (-1 for CPU), torch's current CUDA stream
// and torch.get_num_threads(). Per-step calls go through small "plan" objects that hold what is
// fixed between steps (numels, dtypes, optimizer-state pointers), so a step converts only the
// param and grad pointer lists. A grad pointer of 0 means "this param has no grad this step":
// it contributes nothing to the norm and is not updated (torch.optim semantics).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/device_guard_plan.h"
#include "playbook/check.h"
#include "playbook/cuda_status.h"
#include "playbook/ghost_bn.h"
#include "playbook/optim.h"
#include "playbook/tensor.h"
#include "step_pointers.h"

namespace py = pybind11;

namespace playbook {

// The per-step pointer lists (param and grad data_ptr()s). A PtrList (csrc/step_pointers.h) is
// copied, a list of ints is read directly; anything else goes through pybind11's sequence caster
// (which costs ~7 ns per element: a step of 400 small tensors converts 1,200 of them).
struct StepPtrs {
  std::vector<int64_t> v;
};

}  // namespace playbook

namespace pybind11 {
namespace detail {
template <>
struct type_caster<playbook::StepPtrs> {
  static_assert(sizeof(long) == sizeof(int64_t), "StepPtrs reads pointers with PyLong_AsLong");
  PYBIND11_TYPE_CASTER(playbook::StepPtrs, const_name("list[int]"));

  bool load(handle src, bool convert) {
    if (isinstance<playbook::PtrList>(src)) {
      value.v = src.cast<const playbook::PtrList&>().v;
      return true;
    }
    PyObject* list = src.ptr();
    if (PyList_CheckExact(list)) {
      const Py_ssize_t n = PyList_GET_SIZE(list);
      value.v.resize(static_cast<size_t>(n));
      bool ints = true;
      for (Py_ssize_t i = 0; i < n && ints; ++i) {
        PyObject* item = PyList_GET_ITEM(list, i);
        ints = PyLong_CheckExact(item);
        if (ints) {
          // PyLong_AsLong: a pointer is a two-digit int, which PyLong_AsLongLong converts
          // through a byte array (3x slower); long is 64-bit on every platform built here.
          const long x = PyLong_AsLong(item);
          if (x == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            ints = false;
          }
          value.v[static_cast<size_t>(i)] = static_cast<int64_t>(x);
        }
      }
      if (ints) return true;
    }
    make_caster<std::vector<int64_t>> generic;
    if (!generic.load(src, convert)) return false;
    value.v = cast_op<std::vector<int64_t>&&>(std::move(generic));
    return true;
  }

  static handle cast(const playbook::StepPtrs& src, return_value_policy policy, handle parent) {
    return make_caster<std::vector<int64_t>>::cast(src.v, policy, parent);
  }
};
}  // namespace detail
}  // namespace pybind11

namespace playbook {
namespace {

using Ptrs = std::vector<int64_t>;

template <typename T>
T* as_ptr(int64_t p) {
  return reinterpret_cast<T*>(static_cast<intptr_t>(p));
}

void* as_stream(int64_t s) { return reinterpret_cast<void*>(static_cast<intptr_t>(s)); }

std::vector<float*> float_ptrs(const Ptrs& ptrs) {
  std::vector<float*> out(ptrs.size());
  for (size_t i = 0; i < ptrs.size(); ++i) out[i] = as_ptr<float>(ptrs[i]);
  return out;
}

// What every per-parameter plan keeps: device, numels and dtypes of its params.
struct ParamLayout {
  int device;
  std::vector<int64_t> numels;
  std::vector<DType> dtypes;
  // CPU: the chunks and work items of the whole list, for every step in which all params take part
  // (NOTE: [Cached chunk schedule] in csrc/cpu/chunks.h).
  std::shared_ptr<const cpu::ChunkSchedule> schedule;

  ParamLayout(int device_, const Ptrs& numels_, const std::vector<int>& dtypes_) : device(device_) {
    PLAYBOOK_CHECK(numels_.size() == dtypes_.size(), "got ", numels_.size(), " numels but ",
                   dtypes_.size(), " dtypes");
    numels = numels_;
    dtypes.reserve(dtypes_.size());
    for (int d : dtypes_) dtypes.push_back(static_cast<DType>(d));
    if (device == kCPUDevice) {
      std::vector<TensorDesc> descs(numels.size());
      for (size_t i = 0; i < descs.size(); ++i) descs[i] = desc(i, 0);
      schedule = cpu::chunk_schedule(descs);
    }
  }

  size_t size() const { return numels.size(); }

  void check_ptrs(const Ptrs& ptrs, const char* what) const {
    PLAYBOOK_CHECK(ptrs.size() == numels.size(), "got ", ptrs.size(), " ", what,
                   " pointers for a plan of ", numels.size(), " params");
  }

  TensorDesc desc(size_t i, int64_t ptr) const {
    return TensorDesc{as_ptr<void>(ptr), numels[i], dtypes[i], device};
  }
};

// Global-norm pass over the grads of one device.
class GradNormPlan {
 public:
  GradNormPlan(int device, const Ptrs& numels, const std::vector<int>& dtypes)
      : layout_(device, numels, dtypes) {}

  int64_t scratch_bytes() const {
    if (layout_.device == kCPUDevice) return 0;
    std::vector<TensorDesc> descs(layout_.size());
    for (size_t i = 0; i < descs.size(); ++i) descs[i] = layout_.desc(i, 1);  // any non-null
    return cuda::sumsq_scratch_bytes(descs);
  }

  // Collects the grad pointers of the params of `segments` ([(params, param_ptrs), ...], in the
  // plan's order) while the other threads reduce the grads already collected (CPU; NOTE: [Streamed
  // sum of squares] in csrc/cpu/norm.cpp). Returns False if a param moved, None if a grad is None or
  // not contiguous (nothing written: the caller takes the checked path), else the grad pointers
  // of each segment (PtrList). Holds the GIL throughout: only the calling thread touches Python.
  py::object sumsq_collect(StepPointers& sp, const py::list& segments, int64_t per_tensor_ptr,
                           int64_t total_ptr, int num_threads) const {
    PLAYBOOK_CHECK(layout_.device == kCPUDevice, "sumsq_collect runs on the CPU, this plan is on device ",
                   layout_.device);
    std::vector<py::list> params;
    std::vector<PtrList> out;
    size_t n = 0;
    for (py::handle seg : segments) {
      auto pair = seg.cast<py::tuple>();
      params.push_back(pair[0].cast<py::list>());
      const PtrList& pptrs = pair[1].cast<const PtrList&>();
      if (!sp.params_in_place(params.back(), pptrs)) return py::bool_(false);
      out.push_back(PtrList{std::vector<int64_t>(pptrs.v.size())});
      n += pptrs.v.size();
    }
    PLAYBOOK_CHECK(n == layout_.size(), "got ", n, " params in the segments for a plan of ", layout_.size());
    std::vector<TensorDesc> descs(n);
    for (size_t i = 0; i < n; ++i) descs[i] = layout_.desc(i, 0);
    size_t seg = 0, base = 0;  // produce(i) runs for i = 0, 1, ... in order
    auto produce = [&](size_t i, void** data) {
      while (i - base >= out[seg].v.size()) base += out[seg++].v.size();
      int64_t& slot = out[seg].v[i - base];
      if (!sp.grad_pointer(PyList_GET_ITEM(params[seg].ptr(), static_cast<Py_ssize_t>(i - base)), &slot)) {
        return false;
      }
      *data = as_ptr<void>(slot);
      return true;
    };
    if (!cpu::sumsq_streamed(descs, produce, as_ptr<double>(per_tensor_ptr), as_ptr<double>(total_ptr), num_threads,
                             layout_.schedule.get())) {
      return py::none();
    }
    py::list result;
    for (PtrList& p : out) result.append(py::cast(std::move(p)));
    return result;
  }

  void sumsq(const StepPtrs& grad_list, int64_t per_tensor_ptr, int64_t total_ptr, int num_threads,
             int64_t scratch_ptr, int64_t scratch_bytes, int64_t stream) const {
    const Ptrs& grad_ptrs = grad_list.v;
    layout_.check_ptrs(grad_ptrs, "grad");
    std::vector<TensorDesc> descs(layout_.size());
    for (size_t i = 0; i < descs.size(); ++i) {
      descs[i] = layout_.desc(i, grad_ptrs[i]);
      if (grad_ptrs[i] == 0) descs[i].numel = 0;  // no grad this step
    }
    if (layout_.device == kCPUDevice) {
      cpu::sumsq(descs, as_ptr<double>(per_tensor_ptr), as_ptr<double>(total_ptr), num_threads,
                 layout_.schedule.get());
    } else {
      cuda::sumsq(descs, as_ptr<double>(per_tensor_ptr), as_ptr<double>(total_ptr),
                  as_ptr<void>(scratch_ptr), scratch_bytes, layout_.device, as_stream(stream));
    }
  }

 private:
  ParamLayout layout_;
};

void finalize_grad_norm(int device, int64_t total_ptr, float max_norm, bool skip_nonfinite,
                        int64_t grad_scale_ptr, int64_t found_inf_ptr, int64_t values_ptr,
                        int64_t counters_ptr, int64_t history_ptr, int64_t history_size,
                        int64_t stream) {
  ClipArgs args;
  args.max_norm = max_norm;
  args.skip_nonfinite = skip_nonfinite;
  args.grad_scale = as_ptr<const float>(grad_scale_ptr);
  args.found_inf = as_ptr<float>(found_inf_ptr);
  StepState state{as_ptr<float>(values_ptr), as_ptr<int64_t>(counters_ptr), as_ptr<float>(history_ptr),
                  history_size};
  if (device == kCPUDevice) {
    cpu::finalize_grad_norm(as_ptr<const double>(total_ptr), args, state);
  } else {
    cuda::finalize_grad_norm(as_ptr<const double>(total_ptr), args, state, device, as_stream(stream));
  }
}

// Indices of the params that have a grad this step (grad pointer != 0).
std::vector<size_t> active(const Ptrs& grad_ptrs) {
  std::vector<size_t> idx;
  idx.reserve(grad_ptrs.size());
  for (size_t i = 0; i < grad_ptrs.size(); ++i) {
    if (grad_ptrs[i] != 0) idx.push_back(i);
  }
  return idx;
}

// The entries of a per-param state list for the params in idx.
std::vector<float*> pick(const std::vector<float*>& state, const std::vector<size_t>& idx) {
  if (idx.size() == state.size()) return state;  // every param has a grad: idx is 0..n-1
  std::vector<float*> out;
  out.reserve(idx.size());
  for (size_t i : idx) out.push_back(state[i]);
  return out;
}

// Param and grad descriptors of the params that have a grad this step; returns their indices.
std::vector<size_t> pick_params(const ParamLayout& layout, const Ptrs& param_ptrs, const Ptrs& grad_ptrs,
                                std::vector<TensorDesc>* params, std::vector<TensorDesc>* grads) {
  layout.check_ptrs(param_ptrs, "param");
  layout.check_ptrs(grad_ptrs, "grad");
  std::vector<size_t> idx = active(grad_ptrs);
  params->reserve(idx.size());
  grads->reserve(idx.size());
  for (size_t i : idx) {
    params->push_back(layout.desc(i, param_ptrs[i]));
    grads->push_back(layout.desc(i, grad_ptrs[i]));
  }
  return idx;
}

// Runs a family's CPU or CUDA entry point, by the plan's device.
template <typename Tensors, typename Hyper>
void run_step(const ParamLayout& layout, const Tensors& t, const Hyper& h, int64_t step_values_ptr,
              int num_threads, int64_t stream,
              void (*cpu_step)(const Tensors&, const Hyper&, const float*, int, const cpu::ChunkSchedule*),
              void (*cuda_step)(const Tensors&, const Hyper&, const float*, int, void*)) {
  const float* values = as_ptr<const float>(step_values_ptr);
  if (layout.device == kCPUDevice) {
    cpu_step(t, h, values, num_threads, layout.schedule.get());  // used when every param has a grad
  } else {
    cuda_step(t, h, values, layout.device, as_stream(stream));
  }
}

class AdamPlan {
 public:
  AdamPlan(int device, const Ptrs& numels, const std::vector<int>& dtypes, const Ptrs& exp_avgs,
           const Ptrs& exp_avg_sqs, const Ptrs& max_exp_avg_sqs, const Ptrs& steps)
      : layout_(device, numels, dtypes), exp_avgs_(float_ptrs(exp_avgs)),
        exp_avg_sqs_(float_ptrs(exp_avg_sqs)), max_exp_avg_sqs_(float_ptrs(max_exp_avg_sqs)),
        steps_(float_ptrs(steps)) {
    check_state_list(exp_avgs_, layout_.size(), "exp_avg");
    check_state_list(exp_avg_sqs_, layout_.size(), "exp_avg_sq");
    check_state_list(steps_, layout_.size(), "step");
    PLAYBOOK_CHECK(max_exp_avg_sqs_.empty() || max_exp_avg_sqs_.size() == layout_.size(),
                   "got ", max_exp_avg_sqs_.size(), " max_exp_avg_sq tensors for ", layout_.size(), " params");
  }

  void step(const StepPtrs& param_list, const StepPtrs& grad_list, float lr, int64_t lr_ptr, double beta1,
            double beta2, float eps, float weight_decay, bool decoupled, bool amsgrad, bool maximize,
            int variant, int64_t step_values_ptr, int num_threads, int64_t stream) const {
    PLAYBOOK_CHECK(!amsgrad || !max_exp_avg_sqs_.empty(), "amsgrad=True but the plan has no max_exp_avg_sq state");
    AdamTensors t;
    const std::vector<size_t> idx = pick_params(layout_, param_list.v, grad_list.v, &t.params, &t.grads);
    t.exp_avgs = pick(exp_avgs_, idx);
    t.exp_avg_sqs = pick(exp_avg_sqs_, idx);
    if (amsgrad) t.max_exp_avg_sqs = pick(max_exp_avg_sqs_, idx);
    t.steps = pick(steps_, idx);
    AdamHyper h;
    h.lr = lr;
    h.lr_ptr = as_ptr<const float>(lr_ptr);
    h.beta1 = beta1;
    h.beta2 = beta2;
    h.eps = eps;
    h.weight_decay = weight_decay;
    h.decoupled_weight_decay = decoupled;
    h.amsgrad = amsgrad;
    h.maximize = maximize;
    h.variant = static_cast<Variant>(variant);
    run_step(layout_, t, h, step_values_ptr, num_threads, stream, &cpu::adam_step, &cuda::adam_step);
  }

 private:
  ParamLayout layout_;
  std::vector<float*> exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_, steps_;
};

class NAdamPlan {
 public:
  NAdamPlan(int device, const Ptrs& numels, const std::vector<int>& dtypes, const Ptrs& exp_avgs,
            const Ptrs& exp_avg_sqs, const Ptrs& mu_products, const Ptrs& steps)
      : layout_(device, numels, dtypes), exp_avgs_(float_ptrs(exp_avgs)),
        exp_avg_sqs_(float_ptrs(exp_avg_sqs)), mu_products_(float_ptrs(mu_products)),
        steps_(float_ptrs(steps)) {
    check_state_list(exp_avgs_, layout_.size(), "exp_avg");
    check_state_list(exp_avg_sqs_, layout_.size(), "exp_avg_sq");
    check_state_list(mu_products_, layout_.size(), "mu_product");
    check_state_list(steps_, layout_.size(), "step");
  }

  void step(const StepPtrs& param_list, const StepPtrs& grad_list, float lr, int64_t lr_ptr, double beta1,
            double beta2, float eps, float weight_decay, float momentum_decay, bool decoupled,
            bool maximize, int variant, int64_t step_values_ptr, int num_threads, int64_t stream) const {
    NAdamTensors t;
    const std::vector<size_t> idx = pick_params(layout_, param_list.v, grad_list.v, &t.params, &t.grads);
    t.exp_avgs = pick(exp_avgs_, idx);
    t.exp_avg_sqs = pick(exp_avg_sqs_, idx);
    t.mu_products = pick(mu_products_, idx);
    t.steps = pick(steps_, idx);
    NAdamHyper h;
    h.lr = lr;
    h.lr_ptr = as_ptr<const float>(lr_ptr);
    h.beta1 = beta1;
    h.beta2 = beta2;
    h.eps = eps;
    h.weight_decay = weight_decay;
    h.momentum_decay = momentum_decay;
    h.decoupled_weight_decay = decoupled;
    h.maximize = maximize;
    h.variant = static_cast<Variant>(variant);
    run_step(layout_, t, h, step_values_ptr, num_threads, stream, &cpu::nadam_step, &cuda::nadam_step);
  }

 private:
  ParamLayout layout_;
  std::vector<float*> exp_avgs_, exp_avg_sqs_, mu_products_, steps_;
};

class SGDPlan {
 public:
  SGDPlan(int device, const Ptrs& numels, const std::vector<int>& dtypes, const Ptrs& momentum_buffers,
          const Ptrs& steps)
      : layout_(device, numels, dtypes), momentum_buffers_(float_ptrs(momentum_buffers)),
        steps_(float_ptrs(steps)) {
    check_state_list(steps_, layout_.size(), "step");
    PLAYBOOK_CHECK(momentum_buffers_.empty() || momentum_buffers_.size() == layout_.size(), "got ",
                   momentum_buffers_.size(), " momentum_buffer tensors for ", layout_.size(), " params");
  }

  void step(const StepPtrs& param_list, const StepPtrs& grad_list, float lr, int64_t lr_ptr, float momentum,
            float dampening, float weight_decay, bool nesterov, bool maximize, int64_t step_values_ptr,
            int num_threads, int64_t stream) const {
    PLAYBOOK_CHECK(momentum == 0.f || !momentum_buffers_.empty(), "momentum=", momentum,
                   " but the plan has no momentum buffers");
    SGDTensors t;
    const std::vector<size_t> idx = pick_params(layout_, param_list.v, grad_list.v, &t.params, &t.grads);
    if (momentum != 0.f) t.momentum_buffers = pick(momentum_buffers_, idx);
    t.steps = pick(steps_, idx);
    SGDHyper h;
    h.lr = lr;
    h.lr_ptr = as_ptr<const float>(lr_ptr);
    h.momentum = momentum;
    h.dampening = dampening;
    h.weight_decay = weight_decay;
    h.nesterov = nesterov;
    h.maximize = maximize;
    run_step(layout_, t, h, step_values_ptr, num_threads, stream, &cpu::sgd_step, &cuda::sgd_step);
  }

 private:
  ParamLayout layout_;
  std::vector<float*> momentum_buffers_, steps_;
};

std::vector<std::string> simd_levels() {
#ifdef PLAYBOOK_SIMD_X86
  return {"portable", "avx2", "avx512"};
#else
  return {"portable"};
#endif
}

// One init_<family> per op family (TransformerEngine pybind.cpp style).
void init_info(py::module_& m) {
  m.def("version", [] { return std::string(PLAYBOOK_VERSION); });
  m.def("cuda_compiled", &cuda::compiled);
  m.def("cuda_archs", [] { return std::string(cuda::archs()); });
  m.def("cuda_toolkit_version", [] { return std::string(cuda::toolkit_version()); });
  m.def("cuda_runtime_status", [] {
    const cuda::RuntimeStatus s = cuda::runtime_status();
    py::dict d;
    d["runtime_version"] = s.runtime_version;
    d["driver_version"] = s.driver_version;
    d["device_count"] = s.device_count;
    d["error"] = s.error;
    d["capabilities"] = s.capabilities;
    return d;
  }, "Linked cudart and driver versions, devices and their compute capabilities (no context created)");
  m.def("_device_guard_plan", [](int previous, bool context_known, bool had_context, int target) {
    const cuda::detail::DeviceGuardPlan p =
        cuda::detail::plan_device_guard(previous, context_known, had_context, target);
    return py::make_tuple(p.set_device, static_cast<int>(p.restore));
  }, "Test hook: (set_device, restore) of the CUDA device guard (0 nothing, 1 previous device, 2 no context)");
  m.def("simd_level", [] { return std::string(cpu::simd_level()); });
  m.def("simd_levels", &simd_levels, "SIMD levels compiled into this build");
  m.def("set_simd_level", [](const std::string& level) { return cpu::set_simd_level(level.c_str()); },
        py::arg("level"), "Force a CPU kernel level ('auto' picks the best); False if unsupported here");
  m.attr("kStepValues") = static_cast<int>(kNumStepValues);
  m.attr("kCounters") = static_cast<int>(kNumCounters);
  m.attr("kNormIdx") = static_cast<int>(kNormIdx);
  m.attr("kGradFactorIdx") = static_cast<int>(kGradFactorIdx);
  m.attr("kSkipIdx") = static_cast<int>(kSkipIdx);
  m.attr("kStepsSeenIdx") = static_cast<int>(kStepsSeenIdx);
  m.attr("kSkippedIdx") = static_cast<int>(kSkippedIdx);
  m.attr("kClippedIdx") = static_cast<int>(kClippedIdx);
}

void init_norm(py::module_& m) {
  py::class_<GradNormPlan>(m, "GradNormPlan")
      .def(py::init<int, const Ptrs&, const std::vector<int>&>(), py::arg("device"), py::arg("numels"),
           py::arg("dtypes"))
      .def("scratch_bytes", &GradNormPlan::scratch_bytes)
      .def("sumsq_collect", &GradNormPlan::sumsq_collect, py::arg("step_pointers"), py::arg("segments"),
           py::arg("per_tensor_ptr"), py::arg("total_ptr"), py::arg("num_threads"))
      .def("sumsq", &GradNormPlan::sumsq, py::arg("grad_ptrs"), py::arg("per_tensor_ptr"),
           py::arg("total_ptr"), py::arg("num_threads"), py::arg("scratch_ptr"), py::arg("scratch_bytes"),
           py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def("finalize_grad_norm", &finalize_grad_norm, py::arg("device"), py::arg("total_ptr"),
        py::arg("max_norm"), py::arg("skip_nonfinite"), py::arg("grad_scale_ptr"), py::arg("found_inf_ptr"),
        py::arg("values_ptr"), py::arg("counters_ptr"), py::arg("history_ptr"), py::arg("history_size"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}

void init_adam(py::module_& m) {
  py::class_<AdamPlan>(m, "AdamPlan")
      .def(py::init<int, const Ptrs&, const std::vector<int>&, const Ptrs&, const Ptrs&, const Ptrs&,
                    const Ptrs&>(),
           py::arg("device"), py::arg("numels"), py::arg("dtypes"), py::arg("exp_avgs"),
           py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("steps"))
      .def("step", &AdamPlan::step, py::arg("param_ptrs"), py::arg("grad_ptrs"), py::arg("lr"),
           py::arg("lr_ptr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
           py::arg("decoupled"), py::arg("amsgrad"), py::arg("maximize"), py::arg("variant"),
           py::arg("step_values_ptr"), py::arg("num_threads"), py::arg("stream"),
           py::call_guard<py::gil_scoped_release>());
}

void init_nadam(py::module_& m) {
  py::class_<NAdamPlan>(m, "NAdamPlan")
      .def(py::init<int, const Ptrs&, const std::vector<int>&, const Ptrs&, const Ptrs&, const Ptrs&,
                    const Ptrs&>(),
           py::arg("device"), py::arg("numels"), py::arg("dtypes"), py::arg("exp_avgs"),
           py::arg("exp_avg_sqs"), py::arg("mu_products"), py::arg("steps"))
      .def("step", &NAdamPlan::step, py::arg("param_ptrs"), py::arg("grad_ptrs"), py::arg("lr"),
           py::arg("lr_ptr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
           py::arg("momentum_decay"), py::arg("decoupled"), py::arg("maximize"), py::arg("variant"),
           py::arg("step_values_ptr"), py::arg("num_threads"), py::arg("stream"),
           py::call_guard<py::gil_scoped_release>());
}

void init_sgd(py::module_& m) {
  py::class_<SGDPlan>(m, "SGDPlan")
      .def(py::init<int, const Ptrs&, const std::vector<int>&, const Ptrs&, const Ptrs&>(), py::arg("device"),
           py::arg("numels"), py::arg("dtypes"), py::arg("momentum_buffers"), py::arg("steps"))
      .def("step", &SGDPlan::step, py::arg("param_ptrs"), py::arg("grad_ptrs"), py::arg("lr"),
           py::arg("lr_ptr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
           py::arg("nesterov"), py::arg("maximize"), py::arg("step_values_ptr"), py::arg("num_threads"),
           py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}

// Ghost batch norm (playbook/ghost_bn.h). The Python layer (python/playbook/nn/ghost_bn.py) passes
// the (n, c, s) view, the layout, dtype code and pointers; float32 statistics buffers are [G, C].
// device -1 runs cpu::, a CUDA ordinal cuda:: (on `stream`); the one-call train functions are CPU only.
GhostBNShape ghost_bn_shape(int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last,
                            int dtype) {
  PLAYBOOK_CHECK(device >= kCPUDevice, "ghost batch norm: invalid device ", device);
  GhostBNShape sh;
  sh.n = n;
  sh.c = c;
  sh.s = s;
  sh.vbs = vbs;
  sh.channels_last = channels_last;
  sh.dtype = static_cast<DType>(dtype);
  sh.device = device;
  check_ghost_bn_shape(sh);
  return sh;
}

void init_ghost_bn(py::module_& m) {
  m.def(
      "ghost_bn_stats",
      [](int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last, int dtype, int64_t x,
         int64_t mean, int64_t m2, int num_threads, int64_t stream) {
        const GhostBNShape sh = ghost_bn_shape(device, n, c, s, vbs, channels_last, dtype);
        if (device != kCPUDevice) {
          cuda::ghost_bn_stats(sh, as_ptr<const void>(x), as_ptr<double>(mean), as_ptr<double>(m2),
                               as_stream(stream));
          return;
        }
        cpu::ghost_bn_stats(sh, as_ptr<const void>(x), as_ptr<double>(mean), as_ptr<double>(m2), num_threads);
      },
      py::arg("device"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("vbs"), py::arg("channels_last"),
      py::arg("dtype"), py::arg("x"), py::arg("mean"), py::arg("m2"), py::arg("num_threads"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_finalize",
      [](int device, int64_t num_ghost, int64_t c, int64_t mean, int64_t m2, int64_t count, int64_t count_last,
         double eps, double momentum, int64_t num_batches_tracked, int64_t running_mean, int64_t running_var,
         int64_t save_mean, int64_t save_invstd, int64_t stream) {
        if (device != kCPUDevice) {
          cuda::ghost_bn_finalize(num_ghost, c, as_ptr<const double>(mean), as_ptr<const double>(m2), count,
                                  count_last, eps, momentum, num_batches_tracked, as_ptr<float>(running_mean),
                                  as_ptr<float>(running_var), as_ptr<float>(save_mean), as_ptr<float>(save_invstd),
                                  device, as_stream(stream));
          return;
        }
        cpu::ghost_bn_finalize(num_ghost, c, as_ptr<const double>(mean), as_ptr<const double>(m2), count,
                               count_last, eps, momentum, num_batches_tracked, as_ptr<float>(running_mean),
                               as_ptr<float>(running_var), as_ptr<float>(save_mean), as_ptr<float>(save_invstd));
      },
      py::arg("device"), py::arg("num_ghost"), py::arg("c"), py::arg("mean"), py::arg("m2"), py::arg("count"),
      py::arg("count_last"), py::arg("eps"), py::arg("momentum"), py::arg("num_batches_tracked"),
      py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_apply",
      [](int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last, int dtype, int64_t x,
         int64_t y, int64_t save_mean, int64_t save_invstd, int64_t weight, int64_t bias, int num_threads,
         int64_t stream) {
        const GhostBNShape sh = ghost_bn_shape(device, n, c, s, vbs, channels_last, dtype);
        if (device != kCPUDevice) {
          cuda::ghost_bn_apply(sh, as_ptr<const void>(x), as_ptr<void>(y), as_ptr<const float>(save_mean),
                               as_ptr<const float>(save_invstd), as_ptr<const float>(weight),
                               as_ptr<const float>(bias), as_stream(stream));
          return;
        }
        cpu::ghost_bn_apply(sh, as_ptr<const void>(x), as_ptr<void>(y), as_ptr<const float>(save_mean),
                            as_ptr<const float>(save_invstd), as_ptr<const float>(weight),
                            as_ptr<const float>(bias), num_threads);
      },
      py::arg("device"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("vbs"), py::arg("channels_last"),
      py::arg("dtype"), py::arg("x"), py::arg("y"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("weight"), py::arg("bias"), py::arg("num_threads"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_backward_reduce",
      [](int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last, int dtype, int64_t dy,
         int64_t x, int64_t save_mean, int64_t sdy, int64_t sdyx, int num_threads, int64_t stream) {
        const GhostBNShape sh = ghost_bn_shape(device, n, c, s, vbs, channels_last, dtype);
        if (device != kCPUDevice) {
          cuda::ghost_bn_backward_reduce(sh, as_ptr<const void>(dy), as_ptr<const void>(x),
                                         as_ptr<const float>(save_mean), as_ptr<double>(sdy), as_ptr<double>(sdyx),
                                         as_stream(stream));
          return;
        }
        cpu::ghost_bn_backward_reduce(sh, as_ptr<const void>(dy), as_ptr<const void>(x),
                                      as_ptr<const float>(save_mean), as_ptr<double>(sdy), as_ptr<double>(sdyx),
                                      num_threads);
      },
      py::arg("device"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("vbs"), py::arg("channels_last"),
      py::arg("dtype"), py::arg("dy"), py::arg("x"), py::arg("save_mean"), py::arg("sdy"), py::arg("sdyx"),
      py::arg("num_threads"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_backward_apply",
      [](int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last, int dtype, int64_t dy,
         int64_t x, int64_t save_mean, int64_t save_invstd, int64_t weight, int64_t sdy, int64_t sdyx,
         int64_t count, int64_t count_last, int64_t coefs, int64_t dx, int num_threads, int64_t stream) {
        const GhostBNShape sh = ghost_bn_shape(device, n, c, s, vbs, channels_last, dtype);
        if (device != kCPUDevice) {
          cuda::ghost_bn_backward_apply(sh, as_ptr<const void>(dy), as_ptr<const void>(x),
                                        as_ptr<const float>(save_mean), as_ptr<const float>(save_invstd),
                                        as_ptr<const float>(weight), as_ptr<const double>(sdy),
                                        as_ptr<const double>(sdyx), count, count_last, as_ptr<float>(coefs),
                                        as_ptr<void>(dx), as_stream(stream));
          return;
        }
        cpu::ghost_bn_backward_apply(sh, as_ptr<const void>(dy), as_ptr<const void>(x),
                                     as_ptr<const float>(save_mean), as_ptr<const float>(save_invstd),
                                     as_ptr<const float>(weight), as_ptr<const double>(sdy),
                                     as_ptr<const double>(sdyx), count, count_last, as_ptr<void>(dx),
                                     num_threads);
      },
      py::arg("device"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("vbs"), py::arg("channels_last"),
      py::arg("dtype"), py::arg("dy"), py::arg("x"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("weight"), py::arg("sdy"), py::arg("sdyx"), py::arg("count"), py::arg("count_last"), py::arg("coefs"),
      py::arg("dx"),
      py::arg("num_threads"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_forward_train",
      [](int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last, int dtype, int64_t x,
         int64_t y, int64_t weight, int64_t bias, double eps, double momentum, int64_t num_batches_tracked,
         int64_t running_mean, int64_t running_var, int64_t mean, int64_t m2, int64_t save_mean,
         int64_t save_invstd, int num_threads, int64_t /*stream*/) {
        const GhostBNShape sh = ghost_bn_shape(device, n, c, s, vbs, channels_last, dtype);
        PLAYBOOK_CHECK(device == kCPUDevice, "ghost_bn_forward_train is CPU only, got device ", device);
        cpu::ghost_bn_forward_train(sh, as_ptr<const void>(x), as_ptr<void>(y), as_ptr<const float>(weight),
                                    as_ptr<const float>(bias), eps, momentum, num_batches_tracked,
                                    as_ptr<float>(running_mean), as_ptr<float>(running_var), as_ptr<double>(mean),
                                    as_ptr<double>(m2), as_ptr<float>(save_mean), as_ptr<float>(save_invstd),
                                    num_threads);
      },
      py::arg("device"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("vbs"), py::arg("channels_last"),
      py::arg("dtype"), py::arg("x"), py::arg("y"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
      py::arg("momentum"), py::arg("num_batches_tracked"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("mean"), py::arg("m2"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("num_threads"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_backward_train",
      [](int device, int64_t n, int64_t c, int64_t s, int64_t vbs, bool channels_last, int dtype, int64_t dy,
         int64_t x, int64_t save_mean, int64_t save_invstd, int64_t weight, int64_t sdy, int64_t sdyx, int64_t dx,
         int64_t grad_weight, int64_t grad_bias, int num_threads, int64_t /*stream*/) {
        const GhostBNShape sh = ghost_bn_shape(device, n, c, s, vbs, channels_last, dtype);
        PLAYBOOK_CHECK(device == kCPUDevice, "ghost_bn_backward_train is CPU only, got device ", device);
        cpu::ghost_bn_backward_train(sh, as_ptr<const void>(dy), as_ptr<const void>(x),
                                     as_ptr<const float>(save_mean), as_ptr<const float>(save_invstd),
                                     as_ptr<const float>(weight), as_ptr<double>(sdy), as_ptr<double>(sdyx),
                                     as_ptr<void>(dx), as_ptr<float>(grad_weight), as_ptr<float>(grad_bias),
                                     num_threads);
      },
      py::arg("device"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("vbs"), py::arg("channels_last"),
      py::arg("dtype"), py::arg("dy"), py::arg("x"), py::arg("save_mean"), py::arg("save_invstd"),
      py::arg("weight"), py::arg("sdy"), py::arg("sdyx"), py::arg("dx"), py::arg("grad_weight"),
      py::arg("grad_bias"), py::arg("num_threads"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "ghost_bn_param_grads",
      [](int device, int64_t num_ghost, int64_t c, int64_t sdy, int64_t sdyx, int64_t save_invstd,
         int64_t grad_weight, int64_t grad_bias, int64_t stream) {
        if (device != kCPUDevice) {
          cuda::ghost_bn_param_grads(num_ghost, c, as_ptr<const double>(sdy), as_ptr<const double>(sdyx),
                                     as_ptr<const float>(save_invstd), as_ptr<float>(grad_weight),
                                     as_ptr<float>(grad_bias), device, as_stream(stream));
          return;
        }
        cpu::ghost_bn_param_grads(num_ghost, c, as_ptr<const double>(sdy), as_ptr<const double>(sdyx),
                                  as_ptr<const float>(save_invstd), as_ptr<float>(grad_weight),
                                  as_ptr<float>(grad_bias));
      },
      py::arg("device"), py::arg("num_ghost"), py::arg("c"), py::arg("sdy"), py::arg("sdyx"),
      py::arg("save_invstd"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace
}  // namespace playbook

PYBIND11_MODULE(_C, m) {
  m.doc() = "playbook's compiled core (torch-agnostic C++/CUDA kernels)";
  py::register_exception<playbook::ValueError>(m, "CoreValueError", PyExc_ValueError);
  playbook::init_info(m);
  playbook::init_step_pointers(m);
  playbook::init_norm(m);
  playbook::init_adam(m);
  playbook::init_nadam(m);
  playbook::init_sgd(m);
  playbook::init_ghost_bn(m);
}
