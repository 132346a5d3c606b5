"""`corral bench`: measure a server or the engine, the way every claim of corral is measured.

- serve (client.py, payload.py, stream.py, record.py, report.py, plots.py): an OpenAI-compatible
  endpoint driven by a corral.workloads workload on one event loop. Requests leave at their
  planned arrival times (later turns: think time after their parent's last token, with the real
  reply as context), bounded by --max-concurrency; the client timestamps raw stream lines only,
  and parses them after each response. Metrics and the table are corral.workloads.metrics'.
  When the server exports speculative decoding counters, /metrics is read before and after the
  run and the report adds the acceptance over the run (spec_decode.py).
- sweep (sweep.py): serve at several request rates or concurrency limits, one figure.
- throughput / latency (offline/): in-process, without HTTP, with the corral engine or
  transformers `generate` (static batches) as the backend.
- reference.py: the reference model and workload of the published figures.
"""
