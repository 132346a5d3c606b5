// The bf16 linear over weights packed as tiles (corral/model/packed_weight.py, the layout of
// cpu_amx_linear.cpp) with AVX-512 bf16 dot products, for CPUs that have them without AMX (AMD
// Zen 4 and 5, Intel Cooper Lake) or processes that may not use AMX.
//
// Layout [out / 16, in / 32, 16, 16, 2] bf16: a block of 16 outputs is one stream of in / 2
// input pairs, 64 bytes a pair (the 16 outputs' weights of inputs 2t and 2t + 1 side by side):
// exactly the operand of `vdpbf16ps`, which multiplies 16 such pairs by one x pair broadcast and
// adds both products to 16 float32 sums. A pass takes up to six rows against up to four blocks
// (64 outputs): 24 sums in registers, x packed per six-row tile and broadcast from memory, so
// each weight vector loaded serves six rows and each broadcast four blocks (register blocking
// over rows and outputs: the batch's M and the model's N). A second form over the same tiles
// widens each pair's weights to float32 (a shift, a mask) and runs two FMAs a row and block;
// which form a process runs is timed at start-up (below).
//
// Each output of a row is one sum over that row's input pairs in order, whatever the other rows
// are: a row's result does not depend on its batch (tests/model/test_amx_tiles.py, the "dot"
// and "fma" cases). The
// epilogue is the AMX kernel's (cpu_common.h store_tiled16, store_silu_tiled16); the sums
// differ from AMX's in order, so the two agree to rounding, not to the bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_common.h"
#include "cpu_ops.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define CORRAL_DOT_TILES 1
#endif

namespace {

constexpr int64_t kBlockOutputs = 16;
constexpr int64_t kPairBytes = 2 * kBlockOutputs * 2;  // one input pair of a block
constexpr int kMaxBlocks = 4;
constexpr int kMaxTileRows = 6;
// Rows are taken in blocks of about this many bytes of x, each block against all of a thread's
// output groups before the next: the rows stay in L2 while the weights stream past them.
constexpr int64_t kRowBlockBytes = 256 * 1024;
// The two forms over the same tiles: vdpbf16ps (kFormDot) or float32 FMAs on widened weights
// (kFormFma). Which is faster depends on the CPU: on the 2-vCPU Sapphire-Rapids-class Xeon here
// vdpbf16ps runs at half the rate of vpdpwssd (1.9 G against 3.2 G instructions a second a
// core) while two FMA units take 32 float multiply-adds a cycle; AMD Zen 4 runs vdpbf16ps at
// full rate and its FMAs at half. The engine times both at start-up on the model's shapes
// (corral/model/layers/linear_dispatch.py) and keeps one for the process, so that a row's bits
// never depend on its batch.
constexpr int kFormDot = 0;
constexpr int kFormFma = 1;
int tile_form = kFormDot;
// How far ahead (pairs, a cache line each) the first row tile prefetches each block's stream.
constexpr int64_t kPrefetchPairs = 24;

#if defined(CORRAL_DOT_TILES)
// acc += the pair products of weights and the x pair at `pair` broadcast from memory: written as
// intrinsics, GCC may keep sums of a six-row pass on the stack.
inline __m512 dot_broadcast(__m512 acc, __m512 weights, const int32_t* pair) {
  asm("vdpbf16ps %[x]%{1to16%}, %[w], %[a]" : [a] "+v"(acc) : [w] "v"(weights), [x] "m"(*pair));
  return acc;
}

// x is packed per tile of kMaxTileRows rows so that a pass reads its rows' inputs from one
// pointer at fixed offsets (the rows of a short last tile are zeros):
// - dot form: [tiles, in / 2, 6] int32, the bf16 pair (2t, 2t + 1) of row r at [t][r];
// - FMA form: [tiles, in, 6] float32, input k of row r at [k][r].

// The first row tile of a group reads its weights from memory: each block's stream is fetched
// kPrefetchPairs pairs (cache lines) ahead. Later tiles find them in L2.
// The later tiles bring one block of the thread's next group into L2 each, a line a pair
// (`next`), so that the next group's first tile finds its weights there: the memory streams
// while the tiles compute (a 32-row decode step of the whole model: 44.5 -> 41.3 ms with the
// first tile's prefetch alone, measured under the avx512_bf16 cap).
struct Prefetch {
  bool first_tile;
  const uint8_t* next;  // a block of the next group, or null
};

template <int B>
inline void prefetch_ahead(const Prefetch& prefetch, const uint8_t* const* w, int64_t t) {
  if (prefetch.first_tile) {
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(w[b] + (t + kPrefetchPairs) * kPairBytes),
                   _MM_HINT_T0);
    }
  }
  if (prefetch.next != nullptr) {
    _mm_prefetch(reinterpret_cast<const char*>(prefetch.next + t * kPairBytes), _MM_HINT_T1);
  }
}

// R rows x B blocks (w[b]) over all `pairs` pairs of the dot form's packed x, the sums to
// c[r][b][16].
template <int R, int B>
inline void dot_pass(const int32_t* xp, const uint8_t* const* w, int64_t pairs, const Prefetch& prefetch,
                     float (*c)[kMaxBlocks][kBlockOutputs]) {
  __m512 acc[R][B];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) acc[r][b] = _mm512_setzero_ps();
  }
  for (int64_t t = 0; t < pairs; ++t, xp += kMaxTileRows) {
    prefetch_ahead<B>(prefetch, w, t);
    __m512 weights[B];
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) weights[b] = _mm512_loadu_ps(w[b] + t * kPairBytes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int b = 0; b < B; ++b) acc[r][b] = dot_broadcast(acc[r][b], weights[b], xp + r);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) _mm512_store_ps(c[r][b], acc[r][b]);
  }
}

// acc += weights * the float at x broadcast from memory.
inline __m512 fma_broadcast(__m512 acc, __m512 weights, const float* x) {
  asm("vfmadd231ps %[x]%{1to16%}, %[w], %[a]" : [a] "+v"(acc) : [w] "v"(weights), [x] "m"(*x));
  return acc;
}

// The even and odd inputs' 16 weights of a pair, widened to float32 (a shift, a mask).
inline void widen_pair(const uint8_t* at, __m512& even, __m512& odd) {
  __m512i raw;
  asm("vmovdqu64 %[m], %[r]" : [r] "=v"(raw) : [m] "m"(*reinterpret_cast<const __m512i*>(at)));
  even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
  odd = _mm512_castsi512_ps(
      _mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

// The FMA form of dot_pass over its packed x: each block's widened pair serves all R rows (two
// FMAs a row, the even input first) before the next block's is made.
template <int R, int B>
inline void fma_pass(const float* xp, const uint8_t* const* w, int64_t pairs, const Prefetch& prefetch,
                     float (*c)[kMaxBlocks][kBlockOutputs]) {
  __m512 acc[R][B];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) acc[r][b] = _mm512_setzero_ps();
  }
  for (int64_t t = 0; t < pairs; ++t, xp += 2 * kMaxTileRows) {
    prefetch_ahead<B>(prefetch, w, t);
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) {
      __m512 even, odd;
      widen_pair(w[b] + t * kPairBytes, even, odd);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][b] = fma_broadcast(acc[r][b], even, xp + r);
        acc[r][b] = fma_broadcast(acc[r][b], odd, xp + kMaxTileRows + r);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) _mm512_store_ps(c[r][b], acc[r][b]);
  }
}

// Rows [m0, m0 + tile rows) of x packed for `form` into xp (see above).
void pack_tile(int form, const at::BFloat16* x, int64_t in, int64_t m0, int64_t rows,
               void* xp) {
  const auto* bits = reinterpret_cast<const uint16_t*>(x);
  const int64_t tile_rows = std::min<int64_t>(kMaxTileRows, rows - m0);
  if (form == kFormFma) {
    auto* out = static_cast<float*>(xp);
    for (int64_t k = 0; k < in; ++k) {
      for (int64_t r = 0; r < kMaxTileRows; ++r) {
        const uint32_t value = r < tile_rows ? bits[(m0 + r) * in + k] : 0;
        const uint32_t widened = value << 16;
        std::memcpy(out + k * kMaxTileRows + r, &widened, sizeof(float));
      }
    }
  } else {
    auto* out = static_cast<int32_t*>(xp);
    const auto* pairs = reinterpret_cast<const int32_t*>(x);
    for (int64_t t = 0; t < in / 2; ++t) {
      for (int64_t r = 0; r < kMaxTileRows; ++r) {
        out[t * kMaxTileRows + r] = r < tile_rows ? pairs[(m0 + r) * (in / 2) + t] : 0;
      }
    }
  }
}

template <int R, int B>
inline void pass_of(int form, const void* xp, const uint8_t* const* w, int64_t pairs,
                    const Prefetch& prefetch, float (*c)[kMaxBlocks][kBlockOutputs]) {
  if (form == kFormFma) {
    fma_pass<R, B>(static_cast<const float*>(xp), w, pairs, prefetch, c);
  } else {
    dot_pass<R, B>(static_cast<const int32_t*>(xp), w, pairs, prefetch, c);
  }
}

template <int B>
void tile_pass(int form, int rows, const void* xp, const uint8_t* const* w, int64_t pairs,
               const Prefetch& prefetch, float (*c)[kMaxBlocks][kBlockOutputs]) {
  switch (rows) {
    case 1: return pass_of<1, B>(form, xp, w, pairs, prefetch, c);
    case 2: return pass_of<2, B>(form, xp, w, pairs, prefetch, c);
    case 3: return pass_of<3, B>(form, xp, w, pairs, prefetch, c);
    case 4: return pass_of<4, B>(form, xp, w, pairs, prefetch, c);
    case 5: return pass_of<5, B>(form, xp, w, pairs, prefetch, c);
    default: return pass_of<kMaxTileRows, B>(form, xp, w, pairs, prefetch, c);
  }
}

void group_pass(int form, int rows, int blocks, const void* xp, const uint8_t* const* w,
                int64_t pairs, const Prefetch& prefetch, float (*c)[kMaxBlocks][kBlockOutputs]) {
  switch (blocks) {
    case 1: return tile_pass<1>(form, rows, xp, w, pairs, prefetch, c);
    case 2: return tile_pass<2>(form, rows, xp, w, pairs, prefetch, c);
    case 3: return tile_pass<3>(form, rows, xp, w, pairs, prefetch, c);
    default: return tile_pass<kMaxBlocks>(form, rows, xp, w, pairs, prefetch, c);
  }
}

// Both dot_tiles_linear and dot_tiles_linear_silu. Plain: groups of four consecutive blocks.
// kSilu: the weight's first half of blocks is the gate's, the second the up's; a group takes two
// gate blocks and the two up blocks of the same outputs (the last group of an odd half: one and
// one), and stores silu(gate) * up.
template <bool kSilu>
torch::Tensor run_dot_tiles(const torch::Tensor& x, const torch::Tensor& tiles,
                            const c10::optional<torch::Tensor>& bias) {
  const int64_t out_features = check_tiled_linear(x, tiles, bias, kSilu);
  const int64_t rows = x.size(0), in = x.size(1);
  const int64_t num_blocks = tiles.size(0);
  auto out = torch::empty({rows, out_features}, x.options());
  if (rows == 0) return out;
  const int form = tile_form;
  // x packed per row tile (above): 4 bytes an input (FMA form) or an input pair (dot form).
  const int64_t num_tiles = (rows + kMaxTileRows - 1) / kMaxTileRows;
  const int64_t tile_bytes = kMaxTileRows * (form == kFormFma ? in : in / 2) * 4;
  std::vector<uint8_t> packed_x(num_tiles * tile_bytes);
  const auto* x_ptr = x.data_ptr<at::BFloat16>();
  at::parallel_for(0, num_tiles, std::max<int64_t>(1, 16384 / in), [&](int64_t begin,
                                                                         int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      pack_tile(form, x_ptr, in, tile * kMaxTileRows, rows, packed_x.data() + tile * tile_bytes);
    }
  });
  const auto* w_ptr = static_cast<const uint8_t*>(tiles.data_ptr());
  const at::BFloat16* b_ptr = bias.has_value() ? bias->data_ptr<at::BFloat16>() : nullptr;
  auto* o_ptr = out.data_ptr<at::BFloat16>();
  const int64_t pairs = in / 2, block_bytes = pairs * kPairBytes;
  const int64_t half = num_blocks / 2;
  // A group's outputs: plain four blocks; kSilu two gate blocks (and their two up blocks).
  constexpr int64_t kGroupBlocks = kSilu ? kMaxBlocks / 2 : kMaxBlocks;
  const int64_t result_blocks = kSilu ? half : num_blocks;
  // Threads take ranges of result blocks (not of groups): 36 blocks of 16 outputs (a 576-wide
  // projection) split 18 / 18, where nine groups of four split 5 / 4. A range runs in groups of
  // kGroupBlocks from its start, its last group shorter.
  const int64_t grain = std::max<int64_t>(
      1, corral_cpu::min_parallel_work() /
             std::max<int64_t>(1, rows * in * (kSilu ? 2 : 1) * kBlockOutputs));
  const int64_t block_rows =
      std::max<int64_t>(1, kRowBlockBytes / (in * 2) / kMaxTileRows) * kMaxTileRows;
  at::parallel_for(0, result_blocks, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float c[kMaxTileRows][kMaxBlocks][kBlockOutputs];
    for (int64_t block_start = 0; block_start < rows; block_start += block_rows) {
      const int64_t block_end = std::min(rows, block_start + block_rows);
      for (int64_t first = begin; first < end; first += kGroupBlocks) {
        const int count = static_cast<int>(std::min(kGroupBlocks, end - first));
        // The group's blocks: plain first..first + count; kSilu the gates, then the ups.
        const uint8_t* w[kMaxBlocks];
        int64_t n[kMaxBlocks];
        for (int b = 0; b < count; ++b) {
          n[b] = first + b;
          if constexpr (kSilu) n[count + b] = half + first + b;
        }
        const int blocks = kSilu ? 2 * count : count;
        // The blocks of this thread's next group (none after its last).
        const uint8_t* next[kMaxBlocks];
        int next_blocks = 0;
        const int64_t next_first = first + kGroupBlocks;
        const int next_count = static_cast<int>(std::min(kGroupBlocks, end - next_first));
        for (int b = 0; b < next_count; ++b) {
          next[next_blocks++] = w_ptr + (next_first + b) * block_bytes;
          if constexpr (kSilu) next[next_blocks++] = w_ptr + (half + next_first + b) * block_bytes;
        }
        __m512 biases[kMaxBlocks];
        for (int b = 0; b < blocks; ++b) {
          w[b] = w_ptr + n[b] * block_bytes;
          biases[b] = corral_cpu::bias16(b_ptr, n[b] * kBlockOutputs);
        }
        for (int64_t m0 = block_start; m0 < block_end; m0 += kMaxTileRows) {
          const int tile_rows = static_cast<int>(std::min<int64_t>(kMaxTileRows, block_end - m0));
          const uint8_t* xp = packed_x.data() + (m0 / kMaxTileRows) * tile_bytes;
          // Tile k >= 1 of the row block brings block k - 1 of the next group.
          const int64_t tile = (m0 - block_start) / kMaxTileRows;
          const Prefetch prefetch{
              m0 == block_start,
              tile >= 1 && tile <= next_blocks ? next[tile - 1] : nullptr};
          group_pass(form, tile_rows, blocks, xp, w, pairs, prefetch, c);
          for (int r = 0; r < tile_rows; ++r) {
            at::BFloat16* o_row = o_ptr + (m0 + r) * out_features;
            for (int b = 0; b < count; ++b) {
              const __m512 sums = _mm512_load_ps(c[r][b]);
              at::BFloat16* o = o_row + (first + b) * kBlockOutputs;
              if constexpr (kSilu) {
                corral_cpu::store_silu_tiled16(o, sums, biases[b],
                                               _mm512_load_ps(c[r][count + b]),
                                               biases[count + b]);
              } else {
                corral_cpu::store_tiled16(o, sums, biases[b]);
              }
            }
          }
        }
      }
    }
  });
  return out;
}
#endif

}  // namespace

void set_dot_tiles_form(int64_t form) {
  TORCH_CHECK(form == kFormDot || form == kFormFma, "tile form ", form,
              ": 0 (vdpbf16ps) or 1 (float32 FMAs)");
  tile_form = static_cast<int>(form);
}

int64_t dot_tiles_form() { return tile_form; }

bool dot_tiles_supported() {
#if defined(CORRAL_DOT_TILES)
  return true;
#else
  return false;
#endif
}

torch::Tensor dot_tiles_linear(const torch::Tensor& x, const torch::Tensor& tiles,
                               const c10::optional<torch::Tensor>& bias) {
#if defined(CORRAL_DOT_TILES)
  return run_dot_tiles<false>(x, tiles, bias);
#else
  TORCH_CHECK(false, "this build of the kernels has no AVX-512 bf16 dot products for tiles");
  return {};
#endif
}

// silu(x @ gate^T + gate_bias) * (x @ up^T + up_bias) for a gate/up weight tiled as one
// [2 * intermediate, in] weight (gate rows first): silu_and_mul(dot_tiles_linear(x, tiles,
// bias)) in one pass, bit for bit.
torch::Tensor dot_tiles_linear_silu(const torch::Tensor& x, const torch::Tensor& tiles,
                                    const c10::optional<torch::Tensor>& bias) {
#if defined(CORRAL_DOT_TILES)
  return run_dot_tiles<true>(x, tiles, bias);
#else
  TORCH_CHECK(false, "this build of the kernels has no AVX-512 bf16 dot products for tiles");
  return {};
#endif
}
