"""keel's HTTP service: the FastAPI app (api.app), request dependencies (api.deps), JSON
models (api.models), rate limits (api.ratelimit), routes (api.routes) and their shared
LangGraph-Server shapes (api.services). HTTP only: the run queue, workers, approvals and
admission it serves are the engine's (``engine/``); ``keel serve`` is ``cli/service.py``."""
