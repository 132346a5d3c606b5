// Shared by corral's CPU kernel sources: element conversion and the parallel-work threshold.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace corral_cpu {


// The least work (multiply-adds) a parallel chunk gets: below it, waking a second thread (tens
// of microseconds with passive OpenMP waits) costs more than it saves (measured on a 2-core
// Zen 4: a 5M multiply-add linear takes as long on two threads as on one).
constexpr int64_t kMinParallelWork = 1 << 22;

// Weight quads per parallel chunk of a few-row linear: at least 16, and kMinParallelWork.
inline int64_t linear_grain(int64_t rows, int64_t in) {
  return std::max<int64_t>(16, kMinParallelWork / std::max<int64_t>(1, 4 * in * rows));
}

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(int8_t x) { return static_cast<float>(x); }
inline float to_float(double x) { return static_cast<float>(x); }

}  // namespace corral_cpu
