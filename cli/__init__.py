"""keel's command line (``keel``): the top layer, above the API, the evals and the engine.

- :mod:`cli.main`: the parser and the entry point (``python -m cli`` is ``keel``).
- :mod:`cli.commands`: batch runs, the demo, approvals, history, replay, prune.
- :mod:`cli.service`: ``keel serve``, ``keel worker``, ``keel keys``.
"""
