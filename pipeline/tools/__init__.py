"""Operator tools: everything around the worker that is not the data path.

- `services`: the local Kafka broker and S3-compatible server (`scripts/services`).
- `simulate`, `sim`: the fleet simulator with exact ground truth; `replay`, `recording`:
  real trips (Twizy) and recorded traffic sent back to Kafka.
- `quality`: cleaning quality against the simulator's truth and the real trips.
- `reconcile`, `inspection`, `lake`, `contract`: checks and views of what the workers wrote.
- `supervisor`, `autoscale`: worker replicas started, stopped and scaled from consumer lag.
- `regions`, `region_ops`, `region_services`, `region_drill`: the multi-region setup.
- `ui`: the operator's page and the monitoring files (Prometheus, Grafana).

May import `pipeline.core` and `pipeline.runtime`; neither imports from here.
"""
