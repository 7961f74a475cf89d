"""keel's support tools: the sandbox back office, typed tool contracts and the runner.

Import the submodules themselves (this package re-exports nothing):

- :mod:`tools.fixtures`: the batch contract's fixtures and tickets files
- :mod:`tools.backoffice`: the back-office tables and read methods
- :mod:`tools.contracts`: what every tool shares: call environment, errors, argument types
- :mod:`tools.declaration`: a tool declared once (``@tool``): models, side effect,
  operation and routes, what VERIFY re-reads, how a reviewer previews it
- :mod:`tools.catalog`: the shipped tools, one module per tool group
- :mod:`tools.registry`: every declared tool, read by the runner, planner, policy, VERIFY
  and the approvals preview
- :mod:`tools.refund_history`: keel's own refunds of a customer (velocity facts)
- :mod:`tools.search`: knowledge-base search on the database's full-text index (SQLite FTS5,
  Postgres tsvector), per-tenant synonyms and a relevance gate
- :mod:`tools.runner`: the checked, idempotent, rate-limited, timed call path
"""
