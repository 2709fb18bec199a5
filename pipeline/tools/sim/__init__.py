"""The fleet simulator's parts: road network, vehicle model, signal sampling, faults, truth file.

- `city`: the road network; `fleet`: the vehicle model (`FleetModel`), built from `vehicles`
  (its data), `trips` (plans and trip events) and `motion` (the per-second step).
- `signals`: signal sampling; `faults`: fault injection; `truth`: the ground-truth file.
- `config`: `SimConfig`; `window`: one window's frames and truth; `frames`: `SimFrame` and
  frames encoded as Kafka records.

The entry point is `pipeline.tools.simulate` (FleetSimulator, simulate_to_recording, load_truth).
"""
