"""The assets, one module per layer: raw (landing), regional (fan-out), global_merge (fan-in),
aggregates, publish (blue-green publication of the fan-in's tables)."""
