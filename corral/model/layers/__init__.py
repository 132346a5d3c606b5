"""The model's building blocks (torch): paged attention over the KV pool, rotary embeddings,
linear layers and KV quantization; shared by the architectures in corral/model/models."""
