"""The run engine: keel's wiring and everything that runs graphs, below the API and the CLI.

- :mod:`engine.runtime`: stores, guards, tools and gateway from one Settings; builds
  each graph's run context. :mod:`engine.checkpoints`: checkpoint stores, the lease fence.
- :mod:`engine.registry`: graph ids and their builders.
- :mod:`engine.queue`: the durable run queue (threads, runs, leases, stream events, wake-ups).
- :mod:`engine.worker`: workers that lease queued runs and execute them.
- :mod:`engine.batch`: tickets through the graph (``keel run``, ``keel demo``, ``keel eval``).
- :mod:`engine.approvals`: pending approvals and authenticated resumes, on a runtime.
- :mod:`engine.admission`: daily quotas counted before a run is queued.
- :mod:`engine.retention`: pruning checkpoint history of finished runs.
- :mod:`engine.jsonable`, :mod:`engine.correlation`: graph values as JSON, correlation ids in logs.
"""
