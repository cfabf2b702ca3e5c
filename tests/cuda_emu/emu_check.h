// Helpers of the emulator test binary (tests/cuda_emu): host buffers standing in for device
// memory, random inputs, bitwise comparison, the family registry. Not force-included with emu.h:
// these files call the public API of playbook/optim.h (cpu:: and cuda::) like the bindings do.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "playbook/optim.h"
#include "playbook/tensor.h"

namespace playbook_emu {
void set_sm_count(int sms);
void set_seed(uint64_t seed);
int64_t launches();
int64_t blocks_run();
extern int g_pow_ulps;
}  // namespace playbook_emu

namespace emu_test {

using playbook::DType;
using playbook::TensorDesc;

constexpr DType kDTypes[3] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};
inline const char* dname(DType d) { return playbook::dtype_name(d); }

// Host memory standing in for device memory: exactly offset + numel elements (so ASan sees any
// access past the end), data at element `offset` (offset 1: a misaligned start).
class Buffer {
 public:
  Buffer() = default;
  Buffer(int64_t numel, DType dtype, int offset)
      : numel_(numel), dtype_(dtype), offset_(offset), esize_(playbook::dtype_size(dtype)) {
    bytes_ = static_cast<size_t>((numel + offset) * esize_);
    raw_ = static_cast<unsigned char*>(std::malloc(bytes_ > 0 ? bytes_ : 1));
    std::memset(raw_, 0, bytes_);
  }
  Buffer(const Buffer& o) : Buffer(o.numel_, o.dtype_, o.offset_) {
    if (bytes_ > 0) std::memcpy(raw_, o.raw_, bytes_);
  }
  Buffer& operator=(const Buffer& o) {
    if (this != &o) {
      Buffer tmp(o);
      std::swap(raw_, tmp.raw_);
      numel_ = o.numel_, dtype_ = o.dtype_, offset_ = o.offset_, esize_ = o.esize_, bytes_ = o.bytes_;
    }
    return *this;
  }
  ~Buffer() { std::free(raw_); }

  void* data() { return raw_ + offset_ * esize_; }
  const void* data() const { return raw_ + offset_ * esize_; }
  float* f32() { return static_cast<float*>(data()); }
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  int offset() const { return offset_; }
  TensorDesc desc(int device) { return TensorDesc{data(), numel_, dtype_, device}; }
  float get(int64_t i) const;        // element i widened to float
  void set(int64_t i, float v);      // element i rounded to nearest even
  uint32_t bits(int64_t i) const;    // raw storage bits of element i

 private:
  unsigned char* raw_ = nullptr;
  int64_t numel_ = 0;
  DType dtype_ = DType::kFloat32;
  int offset_ = 0;
  int64_t esize_ = 4;
  size_t bytes_ = 0;
};

// Named lists of buffers: the tensors of one problem (params, grads, exp_avgs, steps, ...).
using Lists = std::map<std::string, std::vector<Buffer>>;

std::vector<TensorDesc> descs(std::vector<Buffer>& list, int device);
std::vector<float*> f32_ptrs(std::vector<Buffer>& list);

// Deterministic random numbers.
struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  float normal(float scale = 1.f) { return scale * std::normal_distribution<float>(0.f, 1.f)(gen); }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
  int64_t integer(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); }
};
void fill_normal(Buffer& b, Rng& rng, float scale);
void fill_abs_normal(Buffer& b, Rng& rng, float scale);

// One list of tensor shapes of a case.
struct TensorSpec {
  int64_t numel;
  DType dtype;
  int offset;  // 0 aligned start, 1 misaligned by one element
};
// The shapes every family runs: the sizes 0, 1, 3, 4097, 131075 in `dtype` (a mix when
// mixed), every other one misaligned; and `many` small tensors (more than one launch's table).
std::vector<TensorSpec> sizes_spec(DType dtype, bool mixed);
std::vector<TensorSpec> many_spec(DType dtype, int count, Rng& rng);
std::string describe(const std::vector<TensorSpec>& spec);

// Test context: counts, failures (reported, the run continues), options.
struct Context {
  bool quick = false;        // fewer SM counts / configurations
  int64_t cases = 0;
  int64_t checks = 0;
  int64_t failures = 0;
  std::string where;         // description of the current case, printed with failures
  std::vector<int> sm_counts{1, 3, 132};

  void fail(const std::string& msg);
  bool expect(bool ok, const std::string& msg) {
    checks += 1;
    if (!ok) fail(msg);
    return ok;
  }
  // Every element of every buffer of `a` equals `b`'s, bit for bit.
  bool expect_same_bits(const Lists& a, const Lists& b, const std::string& what);
  // Storage values at most `ulps` units in the last place apart (NaN only with NaN).
  bool expect_close_ulps(const Lists& a, const Lists& b, const std::string& what, int ulps);
  bool expect_bits(const void* a, const void* b, size_t bytes, const std::string& what);
};

std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Registry of families: PLAYBOOK_EMU_FAMILY(name) { ... } defines and registers one.
using FamilyFn = void (*)(Context&);
struct Family {
  const char* name;
  FamilyFn fn;
};
std::vector<Family>& families();
struct Register {
  Register(const char* name, FamilyFn fn) { families().push_back(Family{name, fn}); }
};

// Runs the three norm calls on the emulated device (cuda::) and returns the emulated total.
double emu_sumsq(std::vector<TensorDesc> grads, std::vector<double>* per_tensor);

// Step state of a problem: values / counters / history as the pipeline keeps them.
struct StepBuffers {
  float values[playbook::kNumStepValues] = {0.f, 1.f, 0.f};
  int64_t counters[playbook::kNumCounters] = {0, 0, 0};
  float history[4] = {0.f, 0.f, 0.f, 0.f};
  playbook::StepState state() {
    playbook::StepState s;
    s.values = values;
    s.counters = counters;
    s.history = history;
    s.history_size = 4;
    return s;
  }
};

}  // namespace emu_test

#define PLAYBOOK_EMU_FAMILY(name)                                                   \
  static void emu_family_##name(::emu_test::Context& ctx);                         \
  static ::emu_test::Register emu_register_##name(#name, emu_family_##name);        \
  static void emu_family_##name(::emu_test::Context& ctx)
