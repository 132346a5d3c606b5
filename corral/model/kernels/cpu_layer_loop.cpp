// The decoder stack of a decode step in one call: the same kernels, in the same order, as
// LlamaFamilyModel._forward_fused (corral/model/models/llama.py), with the per-layer Python and
// its tensor bookkeeping gone. Only for the plain case the caller checks (decode rows only, no
// LoRA, tensor parallelism, MoE, q/k norm, quantized KV, windows or sinks; dense bf16/fp32 or
// int8 linear weights).
#include <torch/extension.h>

#include <vector>

#include "cpu_ops.h"

namespace {

// Index of each tensor in a layer's list: a linear's weight (or int8 values), its scales (int8
// weights only, else None) and its bias (None when absent).
enum LayerWeight { kInputNorm, kQkv, kQkvScales, kQkvBias, kO, kOScales, kOBias, kPostNorm,
                   kGateUp, kGateUpScales, kGateUpBias, kDown, kDownScales, kDownBias,
                   kNumLayerWeights };

// As corral/model/layers/linear.py: int8 weights on their kernel, packed bf16 weights (panels,
// AMX tiles) on the few-row kernel, plain ones on it or at::linear as use_kernel says.
torch::Tensor linear(const torch::Tensor& x, const std::vector<c10::optional<torch::Tensor>>& w,
                     int weight, bool use_kernel) {
  const torch::Tensor& values = *w[weight];
  const c10::optional<torch::Tensor>& scales = w[weight + 1];
  const c10::optional<torch::Tensor>& bias = w[weight + 2];
  if (scales.has_value()) return int8_linear(x.contiguous(), values, *scales, bias);
  if (use_kernel || values.dim() != 2) return few_row_linear(x.contiguous(), values, bias);
  return at::linear(x, values, bias);
}

// silu(gate) * up of the gate/up linear: AMX tiles in one pass (few_row_linear_silu), else the
// linear then silu_and_mul.
torch::Tensor gate_up_activated(const torch::Tensor& x,
                                const std::vector<c10::optional<torch::Tensor>>& w,
                                bool use_kernel) {
  const torch::Tensor& values = *w[kGateUp];
  if (!w[kGateUpScales].has_value() && values.dim() == 5) {
    return few_row_linear_silu(x.contiguous(), values, w[kGateUpBias]);
  }
  return silu_and_mul(linear(x, w, kGateUp, use_kernel));
}

// Asks for the cache lines a layer's KV write will store to: for each row's slot, its key
// block (keys lie transposed in a block, [kv heads, head_dim, block_size], so one token's key
// touches every line of the block) and its value row. Issued before the layer's q|k|v linear,
// they arrive while it runs; the lines are otherwise cold (the weights streamed past them since
// the last step) and a decode row's write waited on them (about 1.7-2.3 us a row cold against
// 0.6 warm, demo-model shapes).
void prefetch_kv_write(const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                       const torch::Tensor& slot_mapping) {
  const int64_t rows = slot_mapping.size(0);
  if (rows > 8) return;  // batched steps: the write's misses overlap each other
  const int64_t block_size = key_cache.size(3);
  const int64_t block_bytes = key_cache.stride(0) * key_cache.element_size();
  const int64_t row_bytes = value_cache.stride(1) * value_cache.element_size();
  const auto* keys = static_cast<const char*>(key_cache.data_ptr());
  const auto* values = static_cast<const char*>(value_cache.data_ptr());
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  int64_t last_block = -1;
  for (int64_t r = 0; r < rows; ++r) {
    if (slots[r] < 0) continue;
    const int64_t block = slots[r] / block_size;
    if (block != last_block) {
      for (int64_t b = 0; b < block_bytes; b += 64) {
        __builtin_prefetch(keys + block * block_bytes + b, 1, 3);
      }
      last_block = block;
    }
    for (int64_t b = 0; b < row_bytes; b += 64) {
      __builtin_prefetch(values + slots[r] * row_bytes + b, 1, 3);
    }
  }
}

}  // namespace

// residual [rows, hidden] holds the embeddings and is updated in place; returns the final norm's
// output. use_kernel: linears through few_row_linear (bf16 rows within the measured limit), else
// at::linear, as corral/model/layers/linear.py decides.
torch::Tensor LayerLoop::decode_layers(torch::Tensor residual, const torch::Tensor& rotary_rows,
                                       const torch::Tensor& cos, const torch::Tensor& sin,
                                       const torch::Tensor& slot_mapping,
                                       const torch::Tensor& block_table,
                                       const torch::Tensor& seq_lens, bool use_kernel) const {
  const int64_t rows = residual.size(0);
  const int64_t q_size = num_heads_ * head_dim_, kv_size = num_kv_heads_ * head_dim_;
  torch::Tensor delta;
  for (size_t index = 0; index < layers_.size(); ++index) {
    const auto& w = layers_[index];
    prefetch_kv_write(key_caches_[index], value_caches_[index], slot_mapping);
    torch::Tensor normed =
        delta.defined() ? rms_norm(delta, *w[kInputNorm], eps_, residual)
                        : rms_norm(residual, *w[kInputNorm], eps_, c10::nullopt);
    torch::Tensor qkv = linear(normed, w, kQkv, use_kernel);
    rotary_inplace(qkv, rotary_rows, cos, sin, num_heads_ + num_kv_heads_, head_dim_);
    // Views into qkv's rows: the attention and KV-write kernels read rows that lie apart.
    torch::Tensor query = qkv.narrow(1, 0, q_size).view({rows, num_heads_, head_dim_});
    torch::Tensor key = qkv.narrow(1, q_size, kv_size).view({rows, num_kv_heads_, head_dim_});
    torch::Tensor value =
        qkv.narrow(1, q_size + kv_size, kv_size).view({rows, num_kv_heads_, head_dim_});
    write_kv_cache(key, value, key_caches_[index], value_caches_[index], slot_mapping);
    torch::Tensor attended = torch::empty({rows, num_heads_, head_dim_}, qkv.options());
    paged_decode_attention(attended, query, key_caches_[index], value_caches_[index],
                           block_table, seq_lens, scale_, 0, c10::nullopt, c10::nullopt,
                           c10::nullopt, 0);
    delta = linear(attended.view({rows, q_size}), w, kO, use_kernel);
    normed = rms_norm(delta, *w[kPostNorm], eps_, residual);
    delta = linear(gate_up_activated(normed, w, use_kernel), w, kDown, use_kernel);
  }
  return rms_norm(delta, final_norm_, eps_, residual);
}

namespace {

torch::Tensor long_tensor(const int64_t* values, int64_t count) {
  torch::Tensor tensor = torch::empty({count}, torch::kInt64);
  std::copy(values, values + count, tensor.data_ptr<int64_t>());
  return tensor;
}

}  // namespace

// Greedy decode of several sequences for num_steps steps in one call (a draft model's proposals).
// The first step computes rows token_ids at positions (row_seqs: each row's sequence, whose rows
// are consecutive positions ending at its row in last_rows, the row whose logits give its first
// token); every later step one row per sequence, the token the step before chose. A step embeds
// its rows, runs decode_layers, takes logits through the LM head for the sequences' rows and
// their argmax (torch.argmax over the float logits, so the first of equal maxima). block_table
// [sequences x width, row-major] covers each sequence's last position + num_steps - 1. The
// indices come as lists (Python ints, converted by pybind11: cheaper than five torch.tensor
// calls a proposal). first_use_kernel / use_kernel: decode_layers' use_kernel for the first
// step's rows and for one row per sequence (the LM head's). Returns each sequence's num_steps
// tokens.
std::vector<std::vector<int64_t>> LayerLoop::decode_greedy(
    const std::vector<int64_t>& token_ids, const std::vector<int64_t>& positions,
    const std::vector<int64_t>& row_seqs, const std::vector<int64_t>& last_rows,
    int64_t num_steps, const std::vector<int64_t>& block_table, int64_t width, int64_t block_size,
    bool first_use_kernel, bool use_kernel) const {
  TORCH_CHECK(lm_head_.size() == 3 && embed_.defined(),
              "decode_greedy: this loop was bound without an embedding and LM head");
  const int64_t num_rows = static_cast<int64_t>(token_ids.size());
  const int64_t num_seqs = static_cast<int64_t>(last_rows.size());
  TORCH_CHECK(static_cast<int64_t>(block_table.size()) == num_seqs * width &&
                  static_cast<int64_t>(row_seqs.size()) == num_rows &&
                  static_cast<int64_t>(positions.size()) == num_rows,
              "decode_greedy: one block-table row per sequence, one sequence per row");
  for (int64_t r = 0; r < num_rows; ++r) {
    TORCH_CHECK(row_seqs[r] >= 0 && row_seqs[r] < num_seqs, "decode_greedy: row ", r,
                " of sequence ", row_seqs[r], " of ", num_seqs);
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    TORCH_CHECK(last_rows[s] >= 0 && last_rows[s] < num_rows, "decode_greedy: last row ",
                last_rows[s], " of ", num_rows);
  }
  // The first step's per-row tables and positions; later steps' per-sequence ones.
  torch::Tensor tables = torch::empty({num_rows, width}, torch::kInt64);
  for (int64_t r = 0; r < num_rows; ++r) {
    std::copy_n(block_table.data() + row_seqs[r] * width, width,
                tables.data_ptr<int64_t>() + r * width);
  }
  torch::Tensor step_positions = long_tensor(positions.data(), num_rows);
  torch::Tensor ids = long_tensor(token_ids.data(), num_rows);
  std::vector<std::vector<int64_t>> tokens(num_seqs, std::vector<int64_t>(num_steps));
  for (int64_t step = 0; step < num_steps; ++step) {
    const int64_t rows = ids.size(0);
    torch::Tensor slots = torch::empty({rows}, torch::kInt64);
    torch::Tensor seq_lens = torch::empty({rows}, torch::kInt64);
    const int64_t* pos = step_positions.data_ptr<int64_t>();
    const int64_t* table = tables.data_ptr<int64_t>();
    int64_t* slot = slots.data_ptr<int64_t>();
    int64_t* seq_len = seq_lens.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t block = pos[r] / block_size;
      TORCH_CHECK(block < width, "decode_greedy: position ", pos[r], " beyond the block table");
      slot[r] = table[r * width + block] * block_size + pos[r] % block_size;
      seq_len[r] = pos[r] + 1;
    }
    torch::Tensor hidden = embed_packed_ ? packed_rows(embed_, ids) : embed_.index_select(0, ids);
    torch::Tensor normed = decode_layers(hidden, step_positions, cos_, sin_, slots, tables,
                                         seq_lens, step == 0 ? first_use_kernel : use_kernel);
    if (step == 0) {  // from here on, one row per sequence
      if (rows != num_seqs) normed = normed.index_select(0, long_tensor(last_rows.data(), num_seqs));
      torch::Tensor next_positions = torch::empty({num_seqs}, torch::kInt64);
      for (int64_t s = 0; s < num_seqs; ++s) {
        next_positions.data_ptr<int64_t>()[s] = positions[last_rows[s]];
      }
      step_positions = next_positions;
      tables = long_tensor(block_table.data(), num_seqs * width).view({num_seqs, width});
    }
    ids = argmax_rows(linear(normed, lm_head_, 0, use_kernel));  // num_seqs rows
    const int64_t* chosen = ids.data_ptr<int64_t>();
    for (int64_t s = 0; s < num_seqs; ++s) tokens[s][step] = chosen[s];
    step_positions.add_(1);
  }
  return tokens;
}

LayerLoop::LayerLoop(std::vector<std::vector<c10::optional<torch::Tensor>>> layers,
                     std::vector<torch::Tensor> key_caches, std::vector<torch::Tensor> value_caches,
                     torch::Tensor final_norm, double scale, double eps, int64_t num_heads,
                     int64_t num_kv_heads, int64_t head_dim, c10::optional<torch::Tensor> embed,
                     bool embed_packed, std::vector<c10::optional<torch::Tensor>> lm_head,
                     c10::optional<torch::Tensor> cos, c10::optional<torch::Tensor> sin)
    : layers_(std::move(layers)),
      key_caches_(std::move(key_caches)),
      value_caches_(std::move(value_caches)),
      final_norm_(std::move(final_norm)),
      scale_(scale),
      eps_(eps),
      num_heads_(num_heads),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      embed_(embed.value_or(torch::Tensor())),
      embed_packed_(embed_packed),
      lm_head_(std::move(lm_head)),
      cos_(cos.value_or(torch::Tensor())),
      sin_(sin.value_or(torch::Tensor())) {
  TORCH_CHECK(layers_.size() == key_caches_.size() && layers_.size() == value_caches_.size(),
              "LayerLoop: one cache pair per layer");
  for (const auto& w : layers_) {
    TORCH_CHECK(w.size() == kNumLayerWeights, "LayerLoop: a layer's weight list");
  }
  TORCH_CHECK(lm_head_.empty() || (lm_head_.size() == 3 && embed_.defined() && cos_.defined() &&
                                   sin_.defined()),
              "LayerLoop: an LM head as weight, scales, bias, with the embedding and rotary tables");
}

void bind_layer_loop(pybind11::module_& m) {
  pybind11::class_<LayerLoop>(m, "LayerLoop",
                              "a model's decoder stack (and head) bound once for decode steps")
      .def(pybind11::init<std::vector<std::vector<c10::optional<torch::Tensor>>>,
                          std::vector<torch::Tensor>, std::vector<torch::Tensor>, torch::Tensor,
                          double, double, int64_t, int64_t, int64_t,
                          c10::optional<torch::Tensor>, bool,
                          std::vector<c10::optional<torch::Tensor>>,
                          c10::optional<torch::Tensor>, c10::optional<torch::Tensor>>())
      .def("decode_layers", &LayerLoop::decode_layers, "a decode step's decoder stack")
      .def("decode_greedy", &LayerLoop::decode_greedy,
           "several greedy one-row decode steps in one call");
}
