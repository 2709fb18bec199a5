"""The worker runtime: everything that touches Kafka and the object store at run time.

- `align`: merges a partition's sensor and GPS records by event time (pure).
- `plan`: turns one core result into the messages, objects and offsets to write (pure).
- `ingest`: the staged batch path (fetch -> align -> core -> plan -> write -> commit), with
  its parts `ingest_stages` (batches formed and run), `ingest_write` (a plan made durable),
  `ingest_batch` (the batch and what the parts share) and `ingest_procs` (what the decoder
  and encoder processes run).
- `consumer`: Faust's aiokafka consumer with whole fetches handed to `ingest`.
- `app`: the Faust app (worker command, lifecycle, timers, consumer group) and `run_worker`.
- `segments`, `sinks`: Parquet objects and the object-store client; `state_sync`: handler
  state to and from its changelog; `topics`, `lag`: topic layout and consumer lag;
  `metrics`: the workers' Prometheus metrics; `settings`: every connection and topology
  setting, from the environment.

May import `pipeline.core`; never `pipeline.tools` or `pipeline.cli` (the core never imports
from here).
"""
