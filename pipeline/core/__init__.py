"""The pure core: what a batch of vehicle frames becomes, without Kafka, S3 or a clock.

- `batch`: the data types (`RawRecord`, `Readings`, `BatchResult`) every layer passes around.
- `events`: the codec (frames and CloudEvents in and out of Kafka record bytes).
- `catalog`: the signal catalog (`rules/signals.yaml`).
- `clean`: vectorised cleaning, with its configuration (`rules/cleaning.yaml`) and state.
- `handlers`: the function-handler contract (what `functions/` imports) and its runner.
- `rules`: filter, transformation and routing rules (`rules/`), compiled.
- `process`: `Core`, one batch through decode, cleaning, handlers and rules.
- `errors`, `paths`: the error hierarchy and the shared names (repository root, fixed topics).
- `yamlfile`: the one YAML loader of every configuration file (data plus the line of each key).

Imports only the standard library, third-party libraries and other modules of
`pipeline.core`; `pipeline.runtime`, `pipeline.tools` and `pipeline.cli` build on it.
"""
