"""Offline evaluation: the golden ticket set and the batch-output scorer (``evals.score``)."""
