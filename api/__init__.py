"""keel's HTTP service: FastAPI app (api.app), run queue (api.queue), workers (api.worker), CLI (api.cli)."""
