"""Knowledge tools: the tenant's knowledge base."""

from __future__ import annotations

from pydantic import Field

from keel.db import Tx
from keel.types import StrictModel

from ..backoffice import BackOffice
from ..contracts import ToolEnv, ToolInput
from ..declaration import tool

__all__ = ["SearchKbInput", "KbResult", "SearchKbOutput", "search_kb"]


class SearchKbInput(ToolInput):
    """Search the tenant's knowledge base."""

    query: str = Field(min_length=1, max_length=2_000)
    """The question, in the customer's words."""
    limit: int = Field(default=3, ge=1, le=10)
    """Most results to return."""


class KbResult(StrictModel):
    """One relevant article."""

    id: str
    """Article id, cited by the answer."""
    title: str
    """Article title."""
    score: float
    """Relevance score (orders results within one query)."""
    snippet: str
    """The best-matching sentence."""


class SearchKbOutput(StrictModel):
    """Relevant articles, best first; empty means no article answers the question."""

    results: list[KbResult]
    """At most ``limit`` articles."""


@tool(side_effect=False, operation="question", routes=("knowledge",), cache_ttl_s=600, cache_scope="tenant")
def search_kb(bo: BackOffice, tx: Tx, env: ToolEnv, args: SearchKbInput) -> SearchKbOutput:
    """Relevant knowledge-base articles; none when no article answers the question."""
    hits = bo.search_articles(env.tenant, args.query, limit=args.limit, tx=tx)
    return SearchKbOutput(results=[KbResult(id=h.id, title=h.title, score=h.score, snippet=h.snippet) for h in hits])
