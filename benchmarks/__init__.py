"""jaxllm's benchmarks: each script prints a table and writes its section of BENCHMARKS.md.

Run one with `python -m benchmarks NAME [ARGS]`, the performance suite with
`python -m benchmarks all`, or a script directly (`python benchmarks/NAME.py`).
"""
