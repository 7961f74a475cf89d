"""Ticket text made readable for the rules: shorthand, typos, quoted mail and clauses.

The phrase rules of :mod:`gateway.rules` match words. Customers write "pls refnd ordr
O-1", "forgot my pw", "cancle my subscripton", forward whole threads and put two requests
in one line. Rather than teaching every rule every misspelling, the text is read once,
structurally, before any rule sees it:

- :func:`normalize` expands chat shorthand (``pls``, ``pw``, ``acct``, ``u``, ``2x``,
  apostrophe-less contractions) and corrects misspelt *support words* by edit distance
  (rapidfuzz's optimal-string-alignment distance, so ``cancle`` is one transposition from
  ``cancel``). A word is only corrected when it is not an English word (pyspellchecker's
  bundled word list), its first letter is right, and the distance is small for its length;
  so "older" never becomes "order" and "changed" never becomes "charged". Ids, amounts and
  email addresses are left as written.
- :func:`current_part` cuts a message at the first quoted or forwarded section (``>``
  lines, "On … wrote:", "Forwarded message", "Original Message", a ``From:`` header
  block): what the customer asks *now* is above it.
- :func:`clauses` splits a sentence at explicit "second request" joints (``;``, list
  bullets, "btw", "also", "plus", "+", "PS", "then", "another thing") so each request is
  read on its own; :func:`segments` splits a clause further before a verb joined by "and"
  or a comma ("cancel O-1 and delete my data"), for the check that every request of a
  ticket is one the plan answers.

Nothing here decides anything: it only rewrites text for matching. Extraction of
amounts, addresses and emails keeps reading the original text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from rapidfuzz import process
from rapidfuzz.distance import OSA

__all__ = ["normalize", "current_part", "clauses", "segments", "correct_word", "coordinated_imperative", "english_words", "is_english", "ASK_VERBS", "SHORTHAND", "SUPPORT_WORDS", "NOT_A_VERB"]

_F = re.IGNORECASE

SHORTHAND: dict[str, str] = {
    # politeness and pronouns
    "pls": "please", "plz": "please", "plse": "please", "pleas": "please", "pleeze": "please",
    "thx": "thanks", "thnx": "thanks", "tks": "thanks", "ty": "thank you",
    "u": "you", "ya": "you", "ur": "your", "r": "are", "n": "and", "w/": "with", "b/c": "because",
    "cuz": "because", "coz": "because", "bc": "because", "abt": "about", "tho": "though",
    "im": "i'm", "ive": "i've", "ill": "i'll",
    # contractions written without the apostrophe
    "cant": "can't", "dont": "don't", "doesnt": "doesn't", "didnt": "didn't", "isnt": "isn't",
    "wont": "won't", "hasnt": "hasn't", "havent": "haven't", "wasnt": "wasn't", "werent": "weren't",
    "arent": "aren't", "couldnt": "couldn't", "wouldnt": "wouldn't", "shouldnt": "shouldn't",
    "wheres": "where's", "whats": "what's", "hows": "how's", "thats": "that's",
    # support shorthand
    "pw": "password", "pwd": "password", "passwd": "password", "pword": "password", "passwrd": "password",
    "acct": "account", "acc": "account", "accnt": "account",
    "addr": "address", "msg": "message", "sub": "subscription", "subs": "subscription",
    "addy": "address", "2x": "twice", "x2": "twice", "dbl": "double", "bak": "back", "asap": "asap",
    "e-mail": "email", "mail-address": "email address", "emailaddress": "email address",
    "reciept": "receipt", "recieve": "receive", "recieved": "received", "adress": "address",
    "adresse": "address", "abonnement": "subscription", "abo": "subscription",
    "cn": "can", "rite": "right", "chng": "change", "chnge": "change", "updt": "update",
}
"""Chat shorthand, apostrophe-less contractions and a few stock misspellings, by word."""

SUPPORT_WORDS: tuple[str, ...] = tuple(
    """refund refunds refunded refunding reimburse reimbursed reimbursement money back
    order orders ordered cancel cancelled canceled cancelling cancellation subscription subscriptions
    membership unsubscribe renew renewal renewing plan address shipping shipment shipped delivery deliver
    delivered package parcel tracking track arrived arrive arriving received receive replacement replace
    damaged broken missing cracked password passwords account unlock unlocked locked login authenticator
    authentication verification factor reset email charged charge charges payment payments receipt
    receipts invoice duplicate double twice recognise recognize unrecognised unrecognized purchase
    immediately immediate effective warranty policy return returns exchange please because""".split()
)
"""The words typos are corrected towards: what the rules read, nothing else."""

_TOKEN = re.compile(r"[A-Za-z][A-Za-z'/-]*[A-Za-z]|[A-Za-z]|\b2x\b|\bx2\b", _F)
_KEEP = re.compile(r"\S+@\S+|https?://\S+|www\.\S+|\b[OSC]-\d+\b", _F)
"""Spans never rewritten: email addresses, links and record ids."""


@lru_cache(maxsize=1)
def _word_frequencies() -> dict[str, int]:
    """pyspellchecker's bundled English word frequencies, loaded once, on first use.

    Read straight from the package's word list (about half the time of building a
    ``SpellChecker``, which also indexes letters we never use).
    """
    import gzip
    import json
    from importlib import resources

    try:
        raw = (resources.files("spellchecker") / "resources" / "en.json.gz").read_bytes()
        return dict(json.loads(gzip.decompress(raw)))
    except (FileNotFoundError, ModuleNotFoundError):  # a layout change: the public way
        from spellchecker import SpellChecker

        return dict(SpellChecker().word_frequency.dictionary)


def english_words() -> Mapping[str, int]:
    """English words (every word of the frequency list, with its count): never "corrected".
    A mapping, so membership is one hash lookup and no second copy of the list is built."""
    return _word_frequencies()


COMMON_FREQUENCY = 1000
"""Least count in pyspellchecker's list for a word to be *common* English. The list holds
foreign words scraped with the English ones ("och" 156, "jag" 477); common English words,
even "dented" (1182), are above it."""


def is_english(word: str) -> bool:
    """Whether lower-case ``word`` is English enough to tell an English sentence from a
    foreign one: a common word, or a listed word of five letters or more (the foreign words
    in the list are mostly short: "och", "jag", "som"; rare English words are mostly long:
    "authorised", "regulated")."""
    count = _word_frequencies().get(word)
    return count is not None and (count >= COMMON_FREQUENCY or len(word) >= 5)


def correct_word(word: str) -> str:
    """The support word ``word`` is a typo of, else ``word`` itself (lower case).

    Only a word that is not English, at least 4 letters long, with the right first letter,
    and within 1 edit (2 from 8 letters on) of one support word is corrected.
    """
    low = word.lower()
    if low in SHORTHAND:
        return SHORTHAND[low]
    if len(low) < 4 or not low.isalpha() or low in SUPPORT_WORDS or low in english_words():
        return low
    limit = 2 if len(low) >= 8 else 1
    candidates = [w for w in SUPPORT_WORDS if w[0] == low[0] and abs(len(w) - len(low)) <= limit]
    best = process.extractOne(low, candidates, scorer=OSA.distance, score_cutoff=limit)
    return best[0] if best else low


def normalize(text: str) -> str:
    """``text`` with shorthand expanded and support-word typos corrected (ids, emails kept)."""
    keep = [(m.start(), m.end()) for m in _KEEP.finditer(text)]
    out: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if any(a <= m.start() < b for a, b in keep):
            continue
        word = m.group(0)
        fixed = correct_word(word)
        if fixed == word.lower():
            continue
        out.append(text[pos : m.start()])
        out.append(fixed)
        pos = m.end()
    out.append(text[pos:])
    joined = "".join(out)
    joined = _join_continued_lines(joined)
    joined = _VERB_SLASH.sub(r"\1 or \2", joined)  # "refund/replace O-1": two requests
    return re.sub(r"(?<=\w)\s+\+\s+(?=\w)", " and also ", joined)


_VERB_SLASH = re.compile(r"\b(refund|replace|reship|cancel|return|exchange|repair|reset|unlock|change)/"
                         r"(refund|replace|reship|cancel|return|exchange|repair|reset|unlock|change)\b", _F)

_CONTINUES = re.compile(r"(?:should|needs?|must|is|are|was|were|has|have|had|will|would|so|because|which|since)\b")


def _join_continued_lines(text: str) -> str:
    """``text`` with the line breaks of a chat message broken mid-sentence made spaces ("the
    email on my account⏎should be …", "and O-2⏎where is it"): after a short fragment (four
    words at most, no end punctuation) or before a line that continues the sentence, when the
    next line starts in lower case. Bullets, numbered lines and lines after end punctuation
    stay apart; the text keeps its length, so offsets still hold."""
    lines = text.split("\n")
    out = [lines[0]]
    for prev, line in zip(lines, lines[1:]):
        tail = prev.rstrip()
        joined = (bool(tail) and tail[-1] not in ".!?:;," and line[:1].islower()
                  and (len(tail.split()) <= 4 or bool(_CONTINUES.match(line))))
        out.append((" " if joined else "\n") + line)
    return "".join(out)


_QUOTE_START = re.compile(
    r"^\s*>|^\s*-{2,}\s*(?:forwarded|original)\s+message|^\s*begin forwarded message|"
    r"^\s*on\b[^\n]{0,120}\bwrote:\s*$|^\s*from:\s+\S|^\s*_{5,}\s*$",
    _F | re.MULTILINE,
)


_QUOTED_LINE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)
_WROTE_LINE = re.compile(r"^[ \t]*on\b[^\n]{0,120}\bwrote:[ \t]*$", _F | re.MULTILINE)


_REFERS_BELOW = re.compile(
    r"\b(?:(?:what'?s|message|mail|e-?mail|note|request|thread) below|see below|below:|"
    r"my (?:previous|earlier|last|original) (?:e-?mail|message|mail|note|request)|forwarding my|adding to my)\b",
    _F,
)
"""A reply that points at the mail below it ("On top of what's below", "Adding to my message
below"): the quoted or forwarded mail is part of what is asked."""


def current_part(text: str) -> str:
    """The message above its first quoted or forwarded section (all of it if none, or when
    the message above points at it).

    A reply written *between or below* ``>``-quoted lines keeps those lines of its own: the
    quoted lines (and their "On … wrote:" header) are blanked and what the customer wrote
    after them is read too ("One more thing I forgot: …"). A forwarded mail, or a quote that
    is not marked line by line, ends the current part.
    """
    m = _QUOTE_START.search(text)
    if m is None or not text[: m.start()].strip() or _REFERS_BELOW.search(text[: m.start()]):
        return text
    block = text[m.start() :].lstrip("\r\n")
    line = block.split("\n", 1)[0]
    quoted_style = line.lstrip().startswith(">") or (
        _WROTE_LINE.match(line) and re.match(r"\s*>", block[len(line) :])
    )
    if quoted_style:
        rest = _QUOTED_LINE.sub("", _WROTE_LINE.sub("", text[m.start() :]))
        if rest.strip() and not _QUOTE_START.search(rest):
            return text[: m.start()] + rest
    return text[: m.start()]


_JOINT = re.compile(
    r";\s+|\s+[—–-]\s+|[，、،]\s*|\n\s*(?:[-*•]|\d{1,2}[.)])\s+|(?<=\s)(?:\d{1,2}\))\s+|"
    r",?\s+(?=(?:and )?while (?:you'?re|you are|your|ur|u r) at it\b|as well as\b|not only\b|but also\b|on top of\b)|"
    r"[,\s]+\(?(?=(?:btw|by the way|also|and also|plus|as well|another thing|one more thing|then|additionally|p\.?s\.?)\b)|"
    r",?\s+(?=(?:which|that|this) reminds me\b|speaking of which\b|on (?:another|a different|a separate) note\b|"
    r"while i'?m at it\b|while i have you\b|separately\b|unrelated(?:ly)?\b)|"
    r",?\s+and\s+(?=(?:also\s+)?(?:tell me|let me know|explain|what|how|why|is there|do you|can you|could you|would you|"
    r"please|i (?:also )?(?:want|need)|i'?d like)\b)",
    _F,
)


_SUBJECT_ONLY = re.compile(r"^\W*(?:and\s+|so\s+|but\s+)?(?:i|we|i'?d|we'?d|i would|we would)\W*$", _F)
_WISH = re.compile(r"(?:also\s+)?(?:like|love|want(?:ed)?|need|appreciate|prefer|require|wish|request|demand|"
                   r"was (?:hoping|wondering)|hoped|wondered|find|be grateful)\b", _F)
"""A would-be clause that is only the subject of a wish (``_SUBJECT_ONLY`` before "also" and
``_WISH`` after it): "I'd also like …" is one clause (a request), not "I'd" and "also like …"."""
_ASKING_HEAD = re.compile(r"\b(?:you|u|please|pls|kindly|to)\W*$", _F)
"""The head of a request that "also" continues ("make sure you also …", "I need you to also …")."""


def clauses(sentence: str) -> list[tuple[int, str]]:
    """``sentence`` split at explicit joints between requests, with each clause's offset."""
    out: list[tuple[int, str]] = []
    pos = 0
    for m in _JOINT.finditer(sentence):
        if _SUBJECT_ONLY.match(sentence[pos : m.start()]) and _WISH.match(sentence[m.end() :]):
            continue  # "I'd | also like …": the subject of the wish the joint would start
        if not m.group(0).strip() and _ASKING_HEAD.search(sentence[pos : m.start()]) and sentence[m.end() :].lower().startswith("also "):
            continue  # "Make sure you | also reverse …", "could you | also …": one request, "also" inside it
        if m.start() > pos and sentence[pos : m.start()].strip():
            out.append((pos, sentence[pos : m.start()]))
        pos = m.end()
    if sentence[pos:].strip():
        out.append((pos, sentence[pos:]))
    return out or [(0, sentence)]


ASK_VERBS: tuple[str, ...] = tuple(
    """fix sort check change update reset send resend cancel refund unlock stop close delete remove erase wipe make give
    get help resolve set turn switch move add transfer subscribe unsubscribe apply upgrade downgrade merge put tell
    email mail call text contact confirm register enroll enrol book schedule waive extend split combine hold keep
    exchange swap link unlink verify activate deactivate enable disable rename print provide issue forward share
    include expedite rush block report escalate redeem sign opt leave take put bump ship mark attach speed""".split()
)
"""Verbs a customer opens a request with ("… and delete my data", "please upgrade me")."""

_VERB_ALT = "|".join(ASK_VERBS)
NOT_A_VERB = "|".join(
    """the a an my your our their his her its this that these those i i'm i'd i'll i've we we're you you're he she
    they it it's there here so as then also too now today asap quickly fast soon please thanks thank with without for
    in on at by to from of all everything nothing is are was were be been have has had do does did will would can
    could should may might must not no never more most very really just only still again well same other another one
    two both either each every some any many much if when because since but or nor yet though although while until
    before after into onto over under up down out off away back how what why where which who whose let tell""".split()
)
"""Words that cannot open a second imperative after "and" ("… and the box was wet", "… and thanks")."""

_SEGMENT_JOINT = re.compile(
    r",?\s+(?:and|&)\s+(?:then\s+)?(?=(?:please\s+|kindly\s+|also\s+)?(?:" + _VERB_ALT + r")\b(?!\s*(?:of|for)\b))|"
    r",?\s+(?:and|&)\s+(?=(?:also\s+)?(?:my|our)\s)|"
    r",\s+(?=(?:either\s+)?(?!(?:" + NOT_A_VERB + r"|need|want|love|like|hate|got|get)\b)(?!\w+(?:ed|s)\b)[a-z]{3,} (?:it|them)\b"
    r"(?!\s*(?:is|was|are|were|'s)\b))|"
    r",?\s+(?:and|&)\s+(?:then\s+)?(?=(?:also\s+)?(?!(?:" + NOT_A_VERB + r")\b)[a-z]+\s+(?:a|an|the|my|our|me|us|some|any)\b)|"
    r",\s+(?=(?:please|kindly|can you|could you|would you|will you)\b)|"
    r",?\s+(?=(?:can|could|would|will) (?:someone|somebody|anyone|one of you|your team)\b)|"
    r",?\s+(?:so|then)\s+(?=(?:please\s+)?(?:" + _VERB_ALT + r")\b)|"
    r",\s+(?=which (?:i|we)(?:'d| would) (?:need|like|want)\b)|"
    r"(?<!because)(?<!since)(?<!\bas)(?<!\bso)(?<!that)(?<!\bif)(?<!\band)\s+(?=(?:id|i'?d|i would|i) (?:also |really )?"
    r"(?:need|want|like|love)\b)|"
    r",\s+(?=i (?:also )?(?:want|need|would like|'?d like)\b[^,.;!?\n]*\b(?:instead|too|as well|also)\b)|"
    r"(?<=\w)\s+(?=(?:can|could|would) you\b)",
    _F,
)


_FOREIGN_JOINT = re.compile(
    r",?\s+(?:and|y|et|und|aur|e|og|och|ve|dan|en)\s+(?=([^\W\d_]+(?:'[^\W\d_]+)?)\b)", _F
)
"""A conjunction before a word that is not English ("… O-1, y también necesito …", "… and
pwede din po ba …", "aur mera naam …"): what follows is another clause, in another language."""

_COORDINATED = re.compile(
    r"^(?:also\s+)?(?!(?:" + NOT_A_VERB + r"|my|our)\b)[a-z]+\s+(?:a|an|the|my|our|me|us|some|any)\b"
)


def coordinated_imperative(segment: str) -> bool:
    """Whether ``segment`` (cut after "and") opens with a verb of its own ("… and arrange a
    pickup"): joined to a request, it shares that request's mood and is a request too."""
    return bool(_COORDINATED.match(segment))


def segments(clause: str) -> list[tuple[int, str]]:
    """``clause`` split further before each request joined by "and" or a comma.

    "cancel O-1 and delete my data", "refund it, could you also …": each part is read on
    its own when checking that every request of a ticket is one the plan answers. Only
    that check uses this finer split; the phrase scoring reads whole clauses.
    """
    out: list[tuple[int, str]] = []
    pos = 0
    joints = sorted([*_SEGMENT_JOINT.finditer(clause),
                     *(m for m in _FOREIGN_JOINT.finditer(clause) if not is_english(m.group(1).lower()))],
                    key=lambda m: m.start())
    for m in joints:
        if m.start() < pos:
            continue
        if m.start() > pos and clause[pos : m.start()].strip():
            out.append((pos, clause[pos : m.start()]))
        pos = m.end()
    if clause[pos:].strip():
        out.append((pos, clause[pos:]))
    return out or [(0, clause)]
