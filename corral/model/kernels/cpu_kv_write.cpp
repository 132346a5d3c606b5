// Writing new tokens' K and V into the paged cache in one call (the PyTorch path needs an
// advanced-index put, a division and a remainder per layer). Element-size generic: bf16, fp16,
// fp32, int8 and raw fp8 bytes are all copied bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu_common.h"

namespace {

// key [T, H, D] -> key_cache [NB, H, D, bs] (transposed within a block);
// value [T, H, D] -> value_cache [NB, bs, H, D].
template <typename E>
void write_tokens(const E* key, const E* value, int64_t key_stride, int64_t value_stride,
                  E* key_cache, E* value_cache, const int64_t* slots, int64_t num_tokens,
                  int64_t heads, int64_t head_dim, int64_t block_size) {
  const int64_t token_elems = heads * head_dim;
  // A token's key lands one element in every block_size (about a cache line per two elements,
  // most of them not in cache): about a microsecond a token. Tokens split over the threads once
  // there are enough of them (32 decode rows of a 576-wide model where threads spin).
  const int64_t grain = std::max<int64_t>(
      4, corral_cpu::min_parallel_work() / std::max<int64_t>(1, 64 * token_elems));
  at::parallel_for(0, num_tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;  // padding
      const int64_t block = slot / block_size, offset = slot % block_size;
      E* key_block = key_cache + block * token_elems * block_size;
      const E* key_row = key + t * key_stride;
      for (int64_t i = 0; i < token_elems; ++i) key_block[i * block_size + offset] = key_row[i];
      std::memcpy(value_cache + slot * token_elems, value + t * value_stride,
                  sizeof(E) * token_elems);
    }
  });
}

}  // namespace

void write_kv_cache(torch::Tensor key, torch::Tensor value, torch::Tensor key_cache,
                    torch::Tensor value_cache, torch::Tensor slot_mapping) {
  for (const torch::Tensor* rows : {&key, &value}) {  // rows may lie apart (views into qkv)
    TORCH_CHECK(rows->dim() == 3 && rows->stride(2) == 1 && rows->stride(1) == rows->size(2) &&
                    rows->stride(0) >= rows->size(1) * rows->size(2),
                "key and value must be [tokens, heads, head_dim] with each token contiguous");
  }
  TORCH_CHECK(key.sizes() == value.sizes(), "key and value shapes differ");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, "slot_mapping must be int64");
  TORCH_CHECK(key.element_size() == key_cache.element_size() &&
                  value.element_size() == value_cache.element_size() &&
                  key.element_size() == value.element_size(),
              "K/V and cache element sizes differ");
  const int64_t num_tokens = key.size(0), heads = key.size(1), head_dim = key.size(2);
  const int64_t block_size = key_cache.size(3);
  TORCH_CHECK(key_cache.size(1) == heads && key_cache.size(2) == head_dim, "key cache shape");
  TORCH_CHECK(slot_mapping.size(0) == num_tokens, "one slot per token");
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const int64_t num_slots = key_cache.size(0) * block_size;
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] < num_slots, "slot ", slots[t], " out of range ", num_slots);
  }
  switch (key.element_size()) {
#define CORRAL_WRITE(E)                                                                     \
  write_tokens<E>(static_cast<const E*>(key.data_ptr()), static_cast<const E*>(value.data_ptr()), \
                  key.stride(0), value.stride(0), static_cast<E*>(key_cache.data_ptr()),           \
                  static_cast<E*>(value_cache.data_ptr()),                                          \
                  slots, num_tokens, heads, head_dim, block_size);                                \
  break;
    case 1: CORRAL_WRITE(uint8_t)
    case 2: CORRAL_WRITE(uint16_t)
    case 4: CORRAL_WRITE(uint32_t)
#undef CORRAL_WRITE
    default:
      TORCH_CHECK(false, "unsupported KV element size ", key.element_size());
  }
}
