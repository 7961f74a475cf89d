"""keel's support tools: the sandbox back office, typed tool contracts and the runner.

- :mod:`tools.fixtures`: the batch contract's fixtures and tickets files
- :mod:`tools.backoffice`: the back-office tables and read methods
- :mod:`tools.contracts` / :mod:`tools.registry`: tool inputs, outputs and implementations
- :mod:`tools.search`: local BM25 knowledge-base search with a relevance gate
- :mod:`tools.runner`: the checked, idempotent, rate-limited, timed call path
"""

from .backoffice import BackOffice
from .contracts import ToolError, TransientToolError
from .fixtures import Fixtures, FixtureParse, LineError, demo_fixtures, parse_fixtures_text, parse_tickets_lines
from .registry import TOOLS, ToolSpec
from .runner import ToolContext, ToolResult, ToolRunner

__all__ = [
    "BackOffice",
    "ToolError",
    "TransientToolError",
    "Fixtures",
    "FixtureParse",
    "LineError",
    "demo_fixtures",
    "parse_fixtures_text",
    "parse_tickets_lines",
    "TOOLS",
    "ToolSpec",
    "ToolContext",
    "ToolResult",
    "ToolRunner",
]
