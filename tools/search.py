"""Knowledge-base search on the database's own full-text index, with per-tenant synonyms.

Why the database's index: stemming, phrase matching and ranking are what SQLite FTS5 (the
embedded default: ``porter`` tokenizer, ``bm25()``) and Postgres (``tsvector`` with the
``english`` configuration, a GIN index, ``ts_rank_cd``) already do well; the index is kept
in step with the ``articles`` table by the database itself (SQLite triggers, a Postgres
generated column), so loading fixtures or changing an article re-indexes it.

Why synonyms per tenant: a customer writes "money back" where the article says "refund".
Each tenant's table of synonym groups (``kb_synonyms``: tenant, term, synonyms) expands a
question's words into OR-groups; the default groups (tenant ``*``) are seeded from
``tools/synonyms.json``, written from the demo articles' vocabulary and the support policy.

Why a relevance gate: policy rule 9 escalates with ``no_answer_found`` when no article is
relevant, so "best of a bad lot" must come back empty. The database ranks the articles
matching any concept; for the best ``CANDIDATES`` of them, per question *concept* (a word
or phrase of the question with its synonyms) the index says how many of the tenant's
articles match it and how often each candidate does (its own highlighter, so the count
uses the index's stemmer):

- **coverage**: the idf-weighted share of the question's concepts the article matches (a
  phrase concept weighs as many words as it stands for); a concept no article matches
  weighs as much as an unseen term can.
- **distinctive match**: the article matches a concept found in fewer than half of the
  tenant's articles ("order" alone proves nothing).
- **focus**: a distinctive concept is in the article's title or at least twice in its body.

Relevant means a distinctive match and either coverage ≥ ``FULL_COVERAGE`` or coverage ≥
``MIN_COVERAGE`` with focus; relevant articles keep the database's order. The idf is the
tenant's own; FTS5's ``bm25()`` takes its statistics from the whole table (every tenant),
which moves scores, never which articles a tenant sees.

Why the question never reaches the index's query language: the question is cut into words
(letters and digits only) and every word or phrase is passed quoted (FTS5) or through
``phraseto_tsquery`` (Postgres) as a bound parameter, so ``"``, ``*``, ``NEAR``, ``OR``,
``-`` or ``:`` in a ticket are plain text; a question of only stopwords finds nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import snowballstemmer

from keel.db import Database, Tx

__all__ = [
    "SearchHit",
    "ArticleIndex",
    "SqliteArticleIndex",
    "PostgresArticleIndex",
    "article_index",
    "Concept",
    "concepts",
    "words",
    "SynonymGroups",
    "load_synonym_file",
    "SYNONYMS_FILE",
    "DEFAULT_TENANT",
    "MIN_COVERAGE",
    "FULL_COVERAGE",
]

MIN_COVERAGE = 0.2
"""Least idf-weighted share of the question's concepts a focused article must match."""

FULL_COVERAGE = 0.5
"""Coverage at which an article counts as relevant even without focus."""

DEFAULT_TENANT = "*"
"""``kb_synonyms`` rows of this tenant apply to every tenant (a tenant's own rows win)."""

SYNONYMS_FILE = Path(__file__).with_name("synonyms.json")
"""The seeded synonym groups: ``{"tenants": {TENANT: [[term, synonym, …], …]}}``."""

CANDIDATES = 50
"""Best-ranked articles the relevance gate looks at (its per-article counts cost a highlight each)."""

MAX_CONCEPTS = 48
"""Most concepts one question is cut into (a 2,000-character question stays one query)."""

_MAX_PHRASE = 3  # longest synonym phrase looked up, in words
_SNIPPET_CHARS = 240
_OPEN, _CLOSE = "\x01", "\x02"  # highlight markers: control characters no article contains

_WORD = re.compile(r"[^\W_]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_MARKED = re.compile(f"{_OPEN}([^{_CLOSE}]*){_CLOSE}")
_ADJACENT = re.compile(f"{_CLOSE}([^\\w{_OPEN}]*){_OPEN}")  # "two factor" marked word by word is one hit

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
"""Function words (a superset of Postgres's ``english`` stop list, so both engines drop the
same words) and support-ticket filler that say nothing about an article's topic."""


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    return snowballstemmer.stemmer("english")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``: letters and digits only, never query syntax."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=8192)
def _stem(word: str) -> str:
    return str(_stemmer().stemWord(word))


def _key(phrase: Sequence[str]) -> tuple[str, ...]:
    """A phrase as the stems the synonym table is looked up by ("Refunds" finds "refund")."""
    return tuple(_stem(w) for w in phrase)


def _content(phrase: Sequence[str]) -> bool:
    return any(w not in _STOPWORDS and (len(w) > 1 or w.isdigit()) for w in phrase)


@dataclass(frozen=True)
class Concept:
    """One concept of a question: alternative words or phrases, any of which matches."""

    alternatives: tuple[tuple[str, ...], ...]
    """Each alternative is a phrase (a tuple of lower-case words); the first is the question's."""
    words: int = 1
    """Content words of the question it stands for: "money back" explains two words of it."""


class SynonymGroups:
    """A tenant's synonym groups, looked up by stemmed phrase."""

    def __init__(self, groups: Iterable[Sequence[str]]) -> None:
        self._by_key: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
        for group in groups:
            phrases = tuple(dict.fromkeys(tuple(words(t)) for t in group if _content(words(t))))
            for phrase in phrases:
                self._by_key.setdefault(_key(phrase), phrases)

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, phrase: Sequence[str]) -> tuple[tuple[str, ...], ...] | None:
        """The group ``phrase`` belongs to (its alternatives), or None."""
        return self._by_key.get(_key(phrase))


def concepts(query: str, synonyms: SynonymGroups | None = None) -> list[Concept]:
    """The question's concepts, in order, each expanded with its synonyms.

    The longest phrase (up to three words) found in the synonym table wins; other words
    are concepts of their own unless they are stopwords. Duplicates are dropped.
    """
    tokens = words(query)
    out: dict[frozenset[tuple[str, ...]], Concept] = {}
    known: dict[tuple[str, ...], Concept | None] = {}  # a phrase said again is looked up once

    def concept(phrase: tuple[str, ...]) -> Concept | None:
        if phrase not in known:
            group = synonyms.lookup(phrase) if synonyms and _content(phrase) else None
            if group is None and len(phrase) > 1:
                known[phrase] = None
            else:
                alternatives = (phrase, *(p for p in group or () if _key(p) != _key(phrase)))
                weight = sum(1 for w in phrase if _content((w,)))
                known[phrase] = Concept(alternatives, weight) if weight else None
        return known[phrase]

    i = 0
    while i < len(tokens) and len(out) < MAX_CONCEPTS:
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            found = concept(tuple(tokens[i : i + n]))
            if found is not None or n == 1:
                break
        if found is not None:
            out.setdefault(frozenset(found.alternatives), found)
        i += n
    return list(out.values())


def load_synonym_file(path: Path = SYNONYMS_FILE) -> dict[str, list[list[str]]]:
    """The synonym groups of a data file, by tenant (``*``: every tenant)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    tenants = doc.get("tenants") if isinstance(doc, dict) else None
    if not isinstance(tenants, dict) or not all(
        isinstance(groups, list) and all(isinstance(g, list) and all(isinstance(t, str) for t in g) for g in groups)
        for groups in tenants.values()
    ):
        raise ValueError(f"{path}: expected {{'tenants': {{TENANT: [[term, synonym, ...], ...]}}}}")
    return tenants


@dataclass(frozen=True)
class SearchHit:
    """One relevant article, best first."""

    id: str
    """Article id, the citation."""
    title: str
    """Article title."""
    score: float
    """The database's rank (higher is better; comparable only within one query)."""
    coverage: float
    """Idf-weighted share of the question's concepts the article matches, 0..1."""
    snippet: str
    """The article sentence that matches the question best."""


class ArticleIndex(Protocol):
    """A tenant-scoped full-text index over the ``articles`` table, with synonyms."""

    def setup(self) -> None:
        """Create the index and the synonym table (idempotent) and seed the default synonyms."""

    def set_synonyms(self, tx: Tx, tenant: str, groups: Sequence[Sequence[str]], origin: str = "fixtures") -> None:
        """Replace ``tenant``'s synonym groups of ``origin``."""

    def synonyms(self, tx: Tx, tenant: str) -> SynonymGroups:
        """The synonym groups in force for ``tenant`` (its own, then the defaults)."""

    def search(self, tx: Tx, tenant: str, query: str, limit: int = 3) -> list[SearchHit]:
        """Relevant articles of ``tenant`` for ``query``, best first; empty when none is."""


_SYNONYM_TABLE = """
CREATE TABLE IF NOT EXISTS kb_synonyms (
  tenant TEXT NOT NULL, term TEXT NOT NULL, synonyms TEXT NOT NULL, origin TEXT NOT NULL,
  PRIMARY KEY (tenant, term))
"""


@dataclass(frozen=True)
class _Stats:
    title_hits: int
    body_hits: int


@dataclass(frozen=True)
class _Matches:
    """One concept in the index: articles of the tenant matching it, hits in the candidates."""

    df: int
    hits: dict[str, _Stats]


@dataclass(frozen=True)
class _Ranked:
    id: str
    title: str
    score: float
    marked: str
    """The body with the question's matches highlighted (``_OPEN`` … ``_CLOSE``)."""


class _Index:
    """What both engines share: the synonym table, the relevance gate, the snippet."""

    db: Database

    def _ddl(self) -> None:
        raise NotImplementedError

    def _rank(self, tx: Tx, tenant: str, groups: list[Concept], limit: int) -> list[_Ranked]:
        """The best ``limit`` articles matching any concept, by the database's rank."""
        raise NotImplementedError

    def _match_stats(self, tx: Tx, tenant: str, groups: list[Concept], ids: list[str]) -> list[_Matches]:
        """Per concept: how many of the tenant's articles match it, and its hits in ``ids``."""
        raise NotImplementedError

    def setup(self) -> None:
        self._ddl()
        with self.db.transaction() as tx:
            stored = tx.fetchall("SELECT tenant, term, synonyms FROM kb_synonyms WHERE origin = 'file' ORDER BY tenant, term")
            wanted = load_synonym_file()
            if _rows(wanted) == sorted((r["tenant"], r["term"], r["synonyms"]) for r in stored):
                return  # a process start writes nothing when the file did not change
            tx.execute("DELETE FROM kb_synonyms WHERE origin = 'file'")
            for tenant, groups in wanted.items():
                self._insert_synonyms(tx, tenant, groups, "file")

    def set_synonyms(self, tx: Tx, tenant: str, groups: Sequence[Sequence[str]], origin: str = "fixtures") -> None:
        tx.execute("DELETE FROM kb_synonyms WHERE tenant = ? AND origin = ?", (tenant, origin))
        self._insert_synonyms(tx, tenant, groups, origin)

    @staticmethod
    def _insert_synonyms(tx: Tx, tenant: str, groups: Iterable[Sequence[str]], origin: str) -> None:
        for term, others in _group_rows(groups):
            # a term already claimed (by the tenant's fixtures, or an earlier group) keeps its group
            tx.execute(
                "INSERT INTO kb_synonyms (tenant, term, synonyms, origin) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant, term) DO NOTHING",
                (tenant, term, others, origin),
            )

    def synonyms(self, tx: Tx, tenant: str) -> SynonymGroups:
        rows = tx.fetchall(
            "SELECT tenant, term, synonyms FROM kb_synonyms WHERE tenant IN (?, ?) ORDER BY term",
            (tenant, DEFAULT_TENANT),
        )
        rows.sort(key=lambda r: r["tenant"] == DEFAULT_TENANT)  # the tenant's own groups first
        return _synonym_groups(tuple((r["term"], r["synonyms"]) for r in rows))

    def search(self, tx: Tx, tenant: str, query: str, limit: int = 3) -> list[SearchHit]:
        groups = concepts(query, self.synonyms(tx, tenant))
        if not groups:
            return []
        row = tx.fetchone("SELECT COUNT(*) AS n FROM articles WHERE tenant = ?", (tenant,))
        n = int(row["n"]) if row else 0
        if not n:
            return []
        ranked = self._rank(tx, tenant, groups, CANDIDATES)
        if not ranked:
            return []
        matches = self._match_stats(tx, tenant, groups, [r.id for r in ranked])
        coverage = _relevant(n, [g.words for g in groups], matches)
        hits = [SearchHit(r.id, r.title, round(r.score, 4), round(coverage[r.id], 4), _snippet(r.marked, groups))
                for r in ranked if r.id in coverage]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits[:limit]


def _group_rows(groups: Iterable[Sequence[str]]) -> list[tuple[str, str]]:
    """``(term, JSON list of its synonyms)`` rows of synonym groups, terms normalised to words."""
    out: list[tuple[str, str]] = []
    for group in groups:
        terms = list(dict.fromkeys(" ".join(words(t)) for t in group if _content(words(t))))
        out += [(term, json.dumps([t for t in terms if t != term])) for term in terms]
    return out


def _rows(by_tenant: Mapping[str, Iterable[Sequence[str]]]) -> list[tuple[str, str, str]]:
    """The ``kb_synonyms`` rows a synonym file makes (the first group naming a term keeps it)."""
    rows: dict[tuple[str, str], str] = {}
    for tenant, groups in by_tenant.items():
        for term, others in _group_rows(groups):
            rows.setdefault((tenant, term), others)
    return sorted((t, term, others) for (t, term), others in rows.items())


@lru_cache(maxsize=64)
def _synonym_groups(rows: tuple[tuple[str, str], ...]) -> SynonymGroups:
    """Built once per distinct table content (a search re-reads the rows, not the stems)."""
    return SynonymGroups([term, *json.loads(synonyms)] for term, synonyms in rows)


def _relevant(n: int, weights: list[int], matches: list[_Matches]) -> dict[str, float]:
    """The coverage of each relevant article (see the module docstring), by id: a concept
    weighs its idf among the tenant's ``n`` articles times the question's words it stands for."""
    idf = [w * math.log(1 + (n - m.df + 0.5) / (m.df + 0.5)) for w, m in zip(weights, matches)]
    total = sum(idf)
    distinctive = [0 < m.df < n / 2 for m in matches]
    out: dict[str, float] = {}
    for aid in {a for m in matches for a in m.hits}:
        matched = [i for i, m in enumerate(matches) if aid in m.hits]
        cov = sum(idf[i] for i in matched) / total
        salient = [i for i in matched if distinctive[i]]
        focused = any(matches[i].hits[aid].title_hits or matches[i].hits[aid].body_hits >= 2 for i in salient)
        if salient and (cov >= FULL_COVERAGE or (cov >= MIN_COVERAGE and focused)):
            out[aid] = cov
    return out


def _merged(marked: str | None) -> str:
    """``marked`` with adjacent highlighted words as one span (Postgres marks a phrase word by word)."""
    return _ADJACENT.sub(r"\1", marked or "")


def _hits(marked: str | None) -> int:
    """Highlighted instances in ``marked``."""
    return _merged(marked).count(_OPEN)


def _snippet(marked: str, groups: Sequence[Concept]) -> str:
    """The sentence matching the most of the question's concepts (the first on ties), unmarked."""
    concept_of = {_key(p): i for i, g in enumerate(groups) for p in g.alternatives}

    def matched(sentence: str) -> int:
        return len({concept_of.get(k, k) for k in (_key(words(m)) for m in _MARKED.findall(sentence))})

    best = max(_SENTENCE.split(_merged(marked).strip()), key=matched)
    text = best.replace(_OPEN, "").replace(_CLOSE, "")
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1].rstrip() + "…"


# -- SQLite: FTS5 ---------------------------------------------------------------------------

_FTS5_TOKENIZER = "porter unicode61 remove_diacritics 2"

_SQLITE_DDL = (
    # an FTS5 table with its own copy of the text (not external content: that is keyed by the
    # articles' implicit rowid, which VACUUM may renumber)
    f"CREATE VIRTUAL TABLE IF NOT EXISTS articles_fts USING fts5("
    f"tenant UNINDEXED, id UNINDEXED, title, body, tokenize = '{_FTS5_TOKENIZER}')",
    "CREATE TRIGGER IF NOT EXISTS articles_fts_insert AFTER INSERT ON articles BEGIN"
    " INSERT INTO articles_fts (tenant, id, title, body) VALUES (new.tenant, new.id, new.title, new.body); END",
    "CREATE TRIGGER IF NOT EXISTS articles_fts_delete AFTER DELETE ON articles BEGIN"
    " DELETE FROM articles_fts WHERE tenant = old.tenant AND id = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS articles_fts_update AFTER UPDATE ON articles BEGIN"
    " DELETE FROM articles_fts WHERE tenant = old.tenant AND id = old.id;"
    " INSERT INTO articles_fts (tenant, id, title, body) VALUES (new.tenant, new.id, new.title, new.body); END",
    _SYNONYM_TABLE,
)


def _fts5_phrase(phrase: Sequence[str]) -> str:
    # words are letters and digits only (``words``): quoting makes NEAR/OR/AND/NOT plain words
    return '"' + " ".join(phrase) + '"'


def _fts5_match(group: Concept) -> str:
    return "(" + " OR ".join(_fts5_phrase(p) for p in group.alternatives) + ")"


@dataclass(frozen=True)
class SqliteArticleIndex(_Index):
    """The index on the embedded SQLite store: an FTS5 table kept in step by triggers."""

    db: Database

    def _ddl(self) -> None:
        with self.db.transaction() as tx:
            for stmt in _SQLITE_DDL:
                tx.execute(stmt)
            # an index created next to existing articles (or out of step) is filled from them
            counts = tx.fetchone("SELECT (SELECT COUNT(*) FROM articles) AS a, (SELECT COUNT(*) FROM articles_fts) AS f")
            if counts and counts["a"] != counts["f"]:
                tx.execute("DELETE FROM articles_fts")
                tx.execute("INSERT INTO articles_fts (tenant, id, title, body) SELECT tenant, id, title, body FROM articles")

    def _rank(self, tx: Tx, tenant: str, groups: list[Concept], limit: int) -> list[_Ranked]:
        rows = tx.fetchall(
            # bm25() is lower-is-better; title matches weigh twice body ones (BM25F's usual boost)
            "SELECT id, title, -bm25(articles_fts, 0.0, 0.0, 2.0, 1.0) AS score,"
            " highlight(articles_fts, 3, char(1), char(2)) AS marked"
            " FROM articles_fts WHERE articles_fts MATCH ? AND tenant = ? ORDER BY score DESC, id LIMIT ?",
            (" OR ".join(_fts5_match(g) for g in groups), tenant, limit),
        )
        return [_Ranked(r["id"], r["title"], float(r["score"]), r["marked"]) for r in rows]

    def _match_stats(self, tx: Tx, tenant: str, groups: list[Concept], ids: list[str]) -> list[_Matches]:
        marks = ", ".join("?" for _ in ids)
        out: list[_Matches] = []
        for group in groups:
            rows = tx.fetchall(
                # every match counts towards the concept's df; only candidates are highlighted
                f"SELECT id, CASE WHEN id IN ({marks}) THEN highlight(articles_fts, 2, char(1), char(2)) END AS t,"
                f" CASE WHEN id IN ({marks}) THEN highlight(articles_fts, 3, char(1), char(2)) END AS b"
                " FROM articles_fts WHERE articles_fts MATCH ? AND tenant = ?",
                (*ids, *ids, _fts5_match(group), tenant),
            )
            out.append(_Matches(len(rows), {r["id"]: _Stats(_hits(r["t"]), _hits(r["b"])) for r in rows if r["id"] in ids}))
        return out


# -- Postgres: tsvector + GIN ---------------------------------------------------------------

_PG_DDL = ";\n".join((
    # a generated column: Postgres re-indexes an article whenever its title or body changes
    "ALTER TABLE articles ADD COLUMN IF NOT EXISTS tsv tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english'::regconfig, title), 'A') ||"
    " setweight(to_tsvector('english'::regconfig, body), 'B')) STORED",
    "CREATE INDEX IF NOT EXISTS articles_tsv ON articles USING GIN (tsv)",
    _SYNONYM_TABLE,
))

_PG_HEADLINE = f"StartSel={_OPEN}, StopSel={_CLOSE}, HighlightAll=true"


def _pg_query(groups: Iterable[Concept]) -> tuple[str, list[str]]:
    """A tsquery expression ORing every alternative, each a bound ``phraseto_tsquery``."""
    params = [" ".join(p) for g in groups for p in g.alternatives]
    return "(" + " || ".join("phraseto_tsquery('english', ?)" for _ in params) + ")", params


@dataclass(frozen=True)
class PostgresArticleIndex(_Index):
    """The index on Postgres: a generated ``tsvector`` column (english) with a GIN index."""

    db: Database

    def _ddl(self) -> None:
        self.db.executescript(_PG_DDL)

    def _rank(self, tx: Tx, tenant: str, groups: list[Concept], limit: int) -> list[_Ranked]:
        expr, ps = _pg_query(groups)
        rows = tx.fetchall(
            # cover density with the title (weight A) worth 2.5 times the body (B); normalised
            # by 1 + log(length) so a long article does not win by its length alone. The
            # headline is computed for the rows kept only (a select-list entry after LIMIT).
            "SELECT id, title, score, ts_headline('english', body, q, ?) AS marked FROM ("
            "SELECT id, title, body, q, ts_rank_cd(tsv, q, 1) AS score"
            f" FROM articles, (SELECT {expr} AS q) AS query WHERE tenant = ? AND tsv @@ q"
            " ORDER BY score DESC, id LIMIT ?) AS best ORDER BY score DESC, id",
            (_PG_HEADLINE, *ps, tenant, limit),
        )
        return [_Ranked(r["id"], r["title"], float(r["score"]), r["marked"]) for r in rows]

    def _match_stats(self, tx: Tx, tenant: str, groups: list[Concept], ids: list[str]) -> list[_Matches]:
        parts: list[str] = []
        params: list[Any] = []
        for i, group in enumerate(groups):
            expr, ps = _pg_query([group])
            # every match counts towards the concept's df; only candidates are highlighted
            parts.append(
                f"SELECT {i} AS g, id, CASE WHEN id = ANY(?) THEN ts_headline('english', title, q, ?) END AS t,"
                " CASE WHEN id = ANY(?) THEN ts_headline('english', body, q, ?) END AS b"
                f" FROM articles, (SELECT {expr} AS q) AS query WHERE tenant = ? AND tsv @@ q"
            )
            params += [ids, _PG_HEADLINE, ids, _PG_HEADLINE, *ps, tenant]
        df = [0] * len(groups)
        hits: list[dict[str, _Stats]] = [{} for _ in groups]
        for r in tx.fetchall(" UNION ALL ".join(parts), params):
            g = int(r["g"])
            df[g] += 1
            if r["t"] is not None:
                hits[g][r["id"]] = _Stats(_hits(r["t"]), _hits(r["b"]))
        return [_Matches(d, h) for d, h in zip(df, hits)]


def article_index(db: Database) -> ArticleIndex:
    """The index for ``db``'s engine."""
    return PostgresArticleIndex(db) if db.is_postgres else SqliteArticleIndex(db)
