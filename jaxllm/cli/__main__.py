"""`python -m jaxllm.cli ...`: the same command as the `jaxllm` console script, for
environments where the script is not on PATH (and for tests that start a real process)."""

import sys

from jaxllm.cli import main

sys.exit(main())
