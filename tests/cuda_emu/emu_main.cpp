// The emulator test binary: `playbook_emu_test [--quick] [--list] [family ...]` runs the named
// families (all by default) and exits non-zero on any failure. Driven by test_cuda_emu.py.
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <sstream>

#include "emu_check.h"

namespace emu_test {

namespace {

uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace

float Buffer::get(int64_t i) const {
  switch (dtype_) {
    case DType::kFloat32: return static_cast<const float*>(data())[i];
    case DType::kBFloat16: {
      const uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(data())[i]) << 16;
      float f;
      std::memcpy(&f, &u, sizeof(f));
      return f;
    }
    case DType::kFloat16: return static_cast<float>(static_cast<const _Float16*>(data())[i]);
  }
  return 0.f;
}

void Buffer::set(int64_t i, float v) {
  switch (dtype_) {
    case DType::kFloat32: static_cast<float*>(data())[i] = v; return;
    case DType::kBFloat16: static_cast<uint16_t*>(data())[i] = to_bf16_bits(v); return;
    case DType::kFloat16: static_cast<_Float16*>(data())[i] = static_cast<_Float16>(v); return;
  }
}

uint32_t Buffer::bits(int64_t i) const {
  if (dtype_ == DType::kFloat32) {
    uint32_t u;
    std::memcpy(&u, static_cast<const float*>(data()) + i, sizeof(u));
    return u;
  }
  return static_cast<const uint16_t*>(data())[i];
}

std::vector<TensorDesc> descs(std::vector<Buffer>& list, int device) {
  std::vector<TensorDesc> out;
  for (Buffer& b : list) out.push_back(b.desc(device));
  return out;
}

std::vector<float*> f32_ptrs(std::vector<Buffer>& list) {
  std::vector<float*> out;
  for (Buffer& b : list) out.push_back(b.f32());
  return out;
}

void fill_normal(Buffer& b, Rng& rng, float scale) {
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, rng.normal(scale));
}

void fill_abs_normal(Buffer& b, Rng& rng, float scale) {
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, std::fabs(rng.normal(scale)));
}

std::vector<TensorSpec> sizes_spec(DType dtype, bool mixed) {
  const int64_t sizes[] = {0, 1, 3, 4097, 131075, 8, 131072};
  std::vector<TensorSpec> out;
  int k = 0;
  for (int64_t n : sizes) {
    const DType d = mixed ? kDTypes[k % 3] : dtype;
    out.push_back(TensorSpec{n, d, k % 2});
    ++k;
  }
  return out;
}

std::vector<TensorSpec> many_spec(DType dtype, int count, Rng& rng) {
  std::vector<TensorSpec> out;
  for (int i = 0; i < count; ++i) {
    const int64_t n = i % 17 == 5 ? 0 : rng.integer(1, 40);
    out.push_back(TensorSpec{n, dtype, static_cast<int>(i % 3 == 1)});
  }
  return out;
}

std::string describe(const std::vector<TensorSpec>& spec) {
  std::ostringstream os;
  os << spec.size() << " tensors [";
  for (size_t i = 0; i < spec.size() && i < 8; ++i) {
    os << (i ? ", " : "") << spec[i].numel << ":" << dname(spec[i].dtype)
       << (spec[i].offset ? "+1" : "");
  }
  if (spec.size() > 8) os << ", ...";
  os << "]";
  return os.str();
}

std::string fmt(const char* format, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, format);
  std::vsnprintf(buf, sizeof(buf), format, ap);
  va_end(ap);
  return buf;
}

void Context::fail(const std::string& msg) {
  failures += 1;
  if (failures <= 25) std::printf("FAIL %s: %s\n", where.c_str(), msg.c_str());
  if (failures == 25) std::printf("(further failures not printed)\n");
}

bool Context::expect_bits(const void* a, const void* b, size_t bytes, const std::string& what) {
  checks += 1;
  if (std::memcmp(a, b, bytes) == 0) return true;
  fail(what + ": bytes differ");
  return false;
}

namespace {

// Ordered integer of a storage value (for ulp distances): monotonic in the value.
int64_t ordered(uint32_t bits, DType d) {
  const int sign_bit = d == DType::kFloat32 ? 31 : 15;
  const uint32_t mag = bits & ((1u << sign_bit) - 1u);
  return (bits >> sign_bit) ? -static_cast<int64_t>(mag) : static_cast<int64_t>(mag);
}

bool compare_lists(Context& ctx, const Lists& a, const Lists& b, const std::string& what,
                   int ulps) {
  ctx.checks += 1;
  if (a.size() != b.size()) {
    ctx.fail(what + ": different list sets");
    return false;
  }
  bool ok = true;
  for (const auto& [name, la] : a) {
    const std::vector<Buffer>& lb = b.at(name);
    for (size_t t = 0; t < la.size(); ++t) {
      for (int64_t i = 0; i < la[t].numel(); ++i) {
        const uint32_t x = la[t].bits(i), y = lb[t].bits(i);
        if (x == y) continue;
        const float fx = la[t].get(i), fy = lb[t].get(i);
        if (ulps > 0 && !std::isnan(fx) && !std::isnan(fy) &&
            std::llabs(ordered(x, la[t].dtype()) - ordered(y, la[t].dtype())) <= ulps) {
          continue;
        }
        ctx.fail(fmt("%s: %s[%zu][%lld] (%s, numel %lld, offset %d) = %.9g (0x%x) vs %.9g (0x%x)",
                     what.c_str(), name.c_str(), t, static_cast<long long>(i), dname(la[t].dtype()),
                     static_cast<long long>(la[t].numel()), la[t].offset(), fx, x, fy, y));
        ok = false;
        break;
      }
      if (!ok) return false;
    }
  }
  return ok;
}

}  // namespace

bool Context::expect_same_bits(const Lists& a, const Lists& b, const std::string& what) {
  return compare_lists(*this, a, b, what, 0);
}

bool Context::expect_close_ulps(const Lists& a, const Lists& b, const std::string& what, int ulps) {
  return compare_lists(*this, a, b, what, ulps);
}

std::vector<Family>& families() {
  static std::vector<Family> f;
  return f;
}

double emu_sumsq(std::vector<TensorDesc> grads, std::vector<double>* per_tensor) {
  for (TensorDesc& d : grads) d.device = 0;
  const int64_t bytes = playbook::cuda::sumsq_scratch_bytes(grads);
  std::vector<double> scratch(static_cast<size_t>(bytes / 8) + 1);
  std::vector<double> pt(grads.size(), -1.0);
  double total = -1.0;
  playbook::cuda::sumsq(grads, pt.data(), &total, scratch.data(), bytes, 0, nullptr);
  if (per_tensor != nullptr) *per_tensor = pt;
  return total;
}

}  // namespace emu_test

namespace emu_selftest {
void run_partial_mask(int* out);
void run_exited_lane(int* out);
}  // namespace emu_selftest

int main(int argc, char** argv) {
  using namespace emu_test;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // failures are printed before any crash
  Context ctx;
  std::vector<std::string> wanted;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      ctx.quick = true;
    } else if (a == "--expect-abort" && i + 1 < argc) {
      // Misuse that must abort the run (test_cuda_emu.py checks the exit and the message).
      const std::string which = argv[++i];
      int out[32] = {0};
      if (which == "partial-mask") emu_selftest::run_partial_mask(out);
      if (which == "exited-lane") emu_selftest::run_exited_lane(out);
      std::printf("no abort for '%s'\n", which.c_str());
      return 0;
    } else if (a == "--list") {
      for (const Family& f : families()) std::printf("%s\n", f.name);
      return 0;
    } else {
      wanted.push_back(a);
    }
  }
  if (ctx.quick) ctx.sm_counts = {1, 132};
  for (const std::string& w : wanted) {
    const bool known = std::any_of(families().begin(), families().end(),
                                   [&](const Family& f) { return w == f.name; });
    if (!known) {
      std::printf("unknown family '%s' (--list shows them)\n", w.c_str());
      return 2;
    }
  }
  int ran = 0;
  for (const Family& f : families()) {
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), f.name) == wanted.end()) continue;
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t cases0 = ctx.cases, checks0 = ctx.checks, fails0 = ctx.failures;
    const int64_t launches0 = playbook_emu::launches(), blocks0 = playbook_emu::blocks_run();
    ctx.where = f.name;
    try {
      f.fn(ctx);
    } catch (const std::exception& e) {
      ctx.fail(std::string("exception: ") + e.what());
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("family %s: %lld cases, %lld checks, %lld failures, %lld launches, %lld blocks, %.1f s\n",
                f.name, static_cast<long long>(ctx.cases - cases0),
                static_cast<long long>(ctx.checks - checks0),
                static_cast<long long>(ctx.failures - fails0),
                static_cast<long long>(playbook_emu::launches() - launches0),
                static_cast<long long>(playbook_emu::blocks_run() - blocks0), s);
    std::fflush(stdout);
    ++ran;
  }
  if (ran == 0) {
    std::printf("no family ran\n");
    return 2;
  }
  if (ctx.failures > 0) {
    std::printf("FAILED: %lld failures\n", static_cast<long long>(ctx.failures));
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
