"""Connected-vehicle telemetry pipeline: decode, clean, handle and route vehicle frames."""

__version__ = "0.1.0"
