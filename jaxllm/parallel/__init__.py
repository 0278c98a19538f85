"""Parallelism: the device mesh, logical-axis rules, pipeline schedule, multi-host."""
