"""Parallelism: the device mesh, logical-axis rules, the run's Layout (every sharding,
built once per run), multi-host start-up."""
