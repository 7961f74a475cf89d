"""``langgraph dev``'s support graph with the benchmark's model latency (:mod:`bench.latency_hook`)."""

from bench import latency_hook
from graphs.studio import support

__all__ = ["support"]

latency_hook.install()
