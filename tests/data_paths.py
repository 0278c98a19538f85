"""Where the shared corpora live: ../shared/data beside the project root."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = SHARED_DATA / "tinyshakespeare.txt"
WORKS = sorted((SHARED_DATA / "shakespeare").glob("*.txt"))
