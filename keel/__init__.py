"""keel's ground floor: what every layer above may use, importing none of them.

Types (:mod:`keel.types`), the signed plan (:mod:`keel.plan`), settings
(:mod:`keel.config`, the one reader of ``KEEL_*``), the database seam (:mod:`keel.db`),
the hash-chained audit log (:mod:`keel.audit`), principals and API keys
(:mod:`keel.principals`), the run index (:mod:`keel.threads`), metrics
(:mod:`keel.metrics`), the error tree and the one retry decision (:mod:`keel.errors`),
the one retry policy (:mod:`keel.retry`) and in-process rate limiter (:mod:`keel.ratelimit`),
and the bundled demo data (``keel/demo/``).
"""
