"""Engine-only benchmarks without HTTP: `bench throughput` and `bench latency`, with the corral
engine or transformers `generate` (static batches) as the backend."""
