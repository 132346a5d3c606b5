// Shared by corral's CPU kernel sources: element conversion and the parallel-work threshold.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace corral_cpu {


// The least work (multiply-adds) a parallel chunk gets: below it, waking a second thread costs
// more than it saves. With passive OpenMP waits (a wake-up costs tens of microseconds) 4M
// (1 << 22) was measured on a 2-core Zen 4 and 512K (1 << 19) on a 2-core AVX2 EPYC (one-stream
// decode 1.4x faster on two threads than with 4M). Where threads spin between calls (libgomp's
// default policy), 256K made the demo target's one-row decoder stack and head 1.13-1.16x faster;
// under passive waits, 0.57x: corral/model/kernels/__init__.py sets it by the wait policy at load
// (set_min_parallel_work), and this is the passive value. docs/performance.md.
inline int64_t& min_parallel_work() {
  static int64_t value = 1 << 19;
  return value;
}

// Weight quads per parallel chunk of a few-row linear: at least 16, and min_parallel_work().
inline int64_t linear_grain(int64_t rows, int64_t in) {
  return std::max<int64_t>(16, min_parallel_work() / std::max<int64_t>(1, 4 * in * rows));
}

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

}  // namespace corral_cpu
