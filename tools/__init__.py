"""keel's support tools: the sandbox back office, typed tool contracts and the runner.

Import the submodules themselves (this package re-exports nothing):

- :mod:`tools.fixtures`: the batch contract's fixtures and tickets files
- :mod:`tools.backoffice`: the back-office tables and read methods
- :mod:`tools.contracts`: tool inputs, outputs, call environment and errors
- :mod:`tools.implementations`: what each tool does to the back office
- :mod:`tools.registry`: every tool's contract paired with its implementation
- :mod:`tools.refund_history`: keel's own refunds of a customer (velocity facts)
- :mod:`tools.search`: local BM25 knowledge-base search with a relevance gate
- :mod:`tools.runner`: the checked, idempotent, rate-limited, timed call path
"""
