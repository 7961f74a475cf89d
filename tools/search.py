"""Knowledge-base search: deterministic local BM25 with a relevance gate.

Why local BM25: knowledge answers must be reproducible in tests and in the batch command
with no model download. Why a gate: policy rule 9 escalates with ``no_answer_found`` when
no article is relevant, so "best of a bad lot" must come back empty.

An article is returned only when it is relevant by these measures:

- **coverage**: the idf-weighted share of the question's content terms that the article
  contains. A term no article uses counts with the idf of an unseen term (the highest):
  a question about something the knowledge base does not know (gift cards) is mostly
  unexplained by any article.
- **distinctive match**: the article matches at least one term used by fewer than half of
  the articles (a positive Robertson–Spärck Jones weight). "order" alone proves nothing.
- **focus**: a distinctive matched term is salient in the article (in its title, or used
  at least twice in its body). An article that mentions a word once in passing ("card
  numbers" in a privacy notice) is not *about* it.

Relevant means: a distinctive match, and either coverage ≥ ``FULL_COVERAGE`` (the article
explains most of the question) or coverage ≥ ``MIN_COVERAGE`` with focus (the article is
about a good part of it).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["SearchHit", "KnowledgeIndex", "tokenize", "stem", "MIN_COVERAGE", "FULL_COVERAGE"]

MIN_COVERAGE = 0.2
"""Least idf-weighted share of the question's content terms a focused article must contain."""

FULL_COVERAGE = 0.5
"""Coverage at which an article counts as relevant even without focus."""

_K1 = 1.2
_B = 0.75
_TITLE_REPEAT = 2  # title terms count as if written twice: BM25F's usual title boost

_WORD = re.compile(r"[^\W_]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren as at be because been before being
    below between both but by can cannot could couldn d did didn do does doesn doing don down during each
    few for from further had hadn has hasn have haven having he her here hers herself him himself his how
    i if in into is isn it its itself just ll m me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own re s same she should shouldn so some such t than that the
    their theirs them themselves then there these they this those through to too under until up ve very
    was wasn we were weren what when where which while who whom why will with won would wouldn y you your
    yours yourself yourselves
    hi hello hey dear thanks thank please pls plz ok okay yes want wanted wanting like need needs get got
    getting know let tell help us one something anything thing things really much many lot still ever
    usually actually currently maybe already soon again
    """.split()
)
"""Function words and support-ticket filler that say nothing about an article's topic."""


def stem(word: str) -> str:
    """A light suffix stripper (plural, -ed, -ing), enough to match returns/return, shipped/shipping."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix, repl in (("sses", "ss"), ("ies", "y")):
        if word.endswith(suffix):
            return word[: -len(suffix)] + repl
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            if len(base) >= 4 and base[-1] == base[-2] and base[-1] not in "aeiosz":
                base = base[:-1]  # shipping -> ship, cancelled -> cancel
            return base
    if word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed content terms of ``text`` (stopwords dropped)."""
    words = _WORD.findall(text.lower())
    return [stem(w) for w in words if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]


@dataclass(frozen=True)
class SearchHit:
    """One relevant article, best first."""

    id: str
    """Article id, the citation."""
    title: str
    """Article title."""
    score: float
    """BM25 score (for ordering; comparable only within one query)."""
    coverage: float
    """Idf-weighted share of the question's terms the article contains, 0..1."""
    snippet: str
    """The article sentence that matches the question best."""


@dataclass(frozen=True)
class _Doc:
    id: str
    title: str
    body: str
    tf: Counter[str]
    length: int
    title_terms: frozenset[str]
    body_tf: Counter[str]


class KnowledgeIndex:
    """A BM25 index over a handful of articles (``{id, title, body}`` mappings)."""

    def __init__(self, articles: Iterable[Mapping[str, str]]) -> None:
        docs = []
        for a in articles:
            title, body = tokenize(a["title"]), tokenize(a["body"])
            tf = Counter(body) + Counter({t: c * _TITLE_REPEAT for t, c in Counter(title).items()})
            docs.append(
                _Doc(a["id"], a["title"], a["body"], tf, sum(tf.values()), frozenset(title), Counter(body))
            )
        self._docs = docs
        n = len(docs)
        df = Counter(t for d in docs for t in d.tf)
        self._idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        self._unknown_idf = math.log(1 + (n + 0.5) / 0.5)  # df = 0: a term no article uses
        self._distinctive = frozenset(t for t, c in df.items() if c < n / 2)
        self._avg_len = (sum(d.length for d in docs) / n) if n else 0.0

    def _bm25(self, terms: Iterable[str], doc: _Doc) -> float:
        score = 0.0
        for t in terms:
            f = doc.tf.get(t, 0)
            if f:
                norm = _K1 * (1 - _B + _B * doc.length / self._avg_len)
                score += self._idf[t] * f * (_K1 + 1) / (f + norm)
        return score

    def search(
        self, query: str, limit: int = 3, min_coverage: float = MIN_COVERAGE, full_coverage: float = FULL_COVERAGE
    ) -> list[SearchHit]:
        """Relevant articles for ``query``, best first; empty when none is relevant."""
        terms = set(tokenize(query))
        if not terms or not self._docs:
            return []
        weight = {t: self._idf.get(t, self._unknown_idf) for t in terms}
        total = sum(weight.values())
        hits = []
        for doc in self._docs:
            matched = {t for t in terms if t in doc.tf}
            coverage = sum(weight[t] for t in matched) / total
            distinctive = matched & self._distinctive
            focused = any(t in doc.title_terms or doc.body_tf[t] >= 2 for t in distinctive)
            if distinctive and (coverage >= full_coverage or (coverage >= min_coverage and focused)):
                score = self._bm25(matched, doc)
                hits.append(SearchHit(doc.id, doc.title, round(score, 4), round(coverage, 4), _snippet(doc.body, matched)))
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits[:limit]


def _snippet(body: str, terms: set[str], max_chars: int = 240) -> str:
    sentences = _SENTENCE.split(body.strip())
    best = max(sentences, key=lambda s: len(terms & set(tokenize(s))))  # max keeps the first on ties
    return best if len(best) <= max_chars else best[: max_chars - 1].rstrip() + "…"
