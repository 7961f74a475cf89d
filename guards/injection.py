"""Prompt-injection screening for ticket text and retrieved text.

Ticket and knowledge-base text are *data*; text that tries to instruct the agent
(override its rules, claim a role, skip checks, act on another account, raise a limit)
is flagged ``suspected_prompt_injection``, and a flagged ticket that asks for a side
effect escalates to a human. A flag never blocks a reply on its own: it only removes
autonomy, so the screen leans towards flagging phrasing that addresses the agent, and
is tested against benign look-alikes ("I ignored the first email", "my manager asked me
to request a refund", "no need to call me") so ordinary tickets keep flowing.

How it works: the text is normalized (NFKC, casefold, zero-width characters removed,
accents and common homoglyphs folded, punctuation collapsed to single spaces) and
matched against phrase patterns per *signal*; a light leetspeak decoding, spaced-out
letters and base64/hex blobs that decode to such text are screened too. Each signal
has a weight; ``score`` is their capped sum and ``flagged`` means ``score ≥ 0.5``:
strong signals flag alone, weak ones only together.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from typing import Literal

from pydantic import Field

from keel.types import StrictModel

__all__ = ["Signal", "ScreenResult", "screen", "normalize", "THRESHOLD", "WEIGHTS"]

Signal = Literal[
    "instruction_override",
    "role_claim",
    "skip_checks",
    "other_account",
    "raise_limit",
    "role_play",
    "system_marker",
    "mode_switch",
    "approval_claim",
    "zero_width_chars",
    "leetspeak",
    "spaced_letters",
    "obfuscated_base64",
    "obfuscated_hex",
]
"""Why text was flagged.

Strong (flag alone): ``instruction_override`` (ignore/forget previous rules),
``role_claim`` (you are now…, admin override, authorized by the support lead),
``skip_checks`` (without checks, no need to escalate, bypass approval),
``other_account`` (act on another customer or account), ``raise_limit`` (raise the
refund limit), ``role_play`` (pretend you are…), ``system_marker`` (``system:`` lines,
``[INST]``, ``<system>``), ``spaced_letters`` / ``obfuscated_base64`` /
``obfuscated_hex`` (hidden instructions that decode to one of the above).

Weak (flag only in combination): ``mode_switch`` (mentions "developer mode"),
``approval_claim`` ("already approved"), ``zero_width_chars``, ``leetspeak`` (added
when a match needed leetspeak decoding; the matched category flags anyway).
"""

THRESHOLD = 0.5
"""``score`` at or above which text is flagged."""

WEIGHTS: dict[str, float] = {
    "instruction_override": 0.7,
    "role_claim": 0.7,
    "skip_checks": 0.6,
    "other_account": 0.6,
    "raise_limit": 0.6,
    "role_play": 0.6,
    "system_marker": 0.7,
    "spaced_letters": 0.6,
    "obfuscated_base64": 0.7,
    "obfuscated_hex": 0.7,
    "mode_switch": 0.3,
    "approval_claim": 0.3,
    "zero_width_chars": 0.2,
    "leetspeak": 0.2,
}
"""Weight of each signal in the score (strong ≥ 0.5, weak < 0.5)."""


class ScreenResult(StrictModel):
    """Verdict of :func:`screen`."""

    flagged: bool
    """True when the text should be treated as a suspected prompt injection."""
    score: float = Field(ge=0.0, le=1.0)
    """Capped sum of the signals' weights."""
    signals: list[str] = Field(default_factory=list)
    """Distinct :data:`Signal` names, in the order found."""
    evidence: list[str] = Field(default_factory=list)
    """Short normalized excerpts that matched, for a reviewer (at most 5)."""


# --------------------------------------------------------------------------- normalization

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"))
_HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i",
        "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "ο": "o", "α": "a", "ε": "e", "ι": "i",
        "ν": "v", "τ": "t", "κ": "k", "ρ": "p", "ı": "i",
    }
)  # fmt: skip
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_LEET_TOKEN = re.compile(r"[\w@$!]+")


def _strip_zero_width(text: str) -> str:
    return text.translate(_ZERO_WIDTH)


def _fold(text: str) -> str:
    """NFKC, casefold, zero-width removed, homoglyphs and accents folded (keeps punctuation)."""
    text = _strip_zero_width(unicodedata.normalize("NFKC", text)).casefold().translate(_HOMOGLYPHS)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _words(folded: str) -> str:
    """Alphanumerics separated by single spaces, padded: ``you're`` → `` you re ``."""
    return " " + " ".join(re.findall(r"[^\W_]+", folded)) + " "


def _deleet(folded: str) -> str:
    """Leetspeak light: decode digits/symbols only inside tokens that also have letters."""

    def tok(m: re.Match[str]) -> str:
        t = m.group(0)
        return t.translate(_LEET) if re.search(r"[a-z]", t) and re.search(r"[0-9@$!]", t) else t

    return _LEET_TOKEN.sub(tok, folded)


def normalize(text: str) -> str:
    """The form phrase patterns match: folded, punctuation collapsed to single spaces."""
    return _words(_fold(text)).strip()


# --------------------------------------------------------------------------- patterns
# Phrase patterns run on the word form (single spaces, no punctuation, padded with a
# space at both ends), so `` `` doubles as a word boundary. Accents are already folded.

_DET = r"(?:all|any|every|each|of|the|your|these|those|previous|prior|above|earlier|preceding|original|initial|existing|current|system|safety|internal|standing|old|other|given)"
_RULES = r"(?:instructions?|rules?|guidelines?|directives?|prompts?|programming|training|constraints?|restrictions?|guardrails?|safeguards?|polic(?:y|ies))"
_TOPIC = r"(?:refund|return|returns|security|safety|company|store|support|agent|approval|escalation|verification|content|system|usage|acme)"
_STAFF = r"(?:support lead|team lead|lead|manager|supervisor|admin|administrator|director|head of support|security team|it department|developer|engineer|ceo|cto|owner|staff)"
_CHECKS = r"(?:checks?|verification|verifying|validation|approvals?|approving|escalation|escalating|escalate|review|reviews|oversight|human review|confirmation|authorization|any questions)"

_PHRASES: dict[str, list[str]] = {
    "instruction_override": [
        rf" (?:ignore|forget|disregard|override|overwrite|discard|abandon|ignoring|forgetting) (?:{_DET} ){{0,4}}(?:{_TOPIC} )?{_RULES} (?!(?:i|we) (?:gave|sent|wrote|left|mentioned|provided|added) )",
        rf" {_RULES} (?:you (?:were|have been) given |above )?(?:are|were|is|have been|has been) (?:now )?(?:void|cancell?ed|revoked|obsolete|replaced|overridden|suspended|lifted|no longer (?:valid|apply|in effect))",
        r" (?:new|updated) (?:system )?(?:instructions|rules|directives|prompt) for (?:you|the (?:ai|assistant|agent|bot|model))",
        r" (?:do not|don t|dont|never|stop) (?:follow|following|obey|obeying|apply|applying) (?:your|the|any|those|these) (?:\w+ )?(?:rules|instructions|polic(?:y|ies)|guidelines)",
        r" (?:reveal|print|repeat|output|leak|show me|tell me) (?:your|the) (?:system prompt|hidden (?:instructions|prompt|rules)|(?:initial|original) (?:instructions|prompt)|instructions you were given)",
        # Spanish, Portuguese, Italian
        r" (?:ignora|ignore|ignorar|olvida|olvide|olvidate de|descarta|omite|esqueca|esquece|desconsidere|desconsidera) (?:de )?(?:todas |todos |cualquier |tutte )?(?:las |los |tus |sus |as |os |suas |tuas |le )?(?:instrucciones|reglas|normas|indicaciones|politicas|instrucoes|regras|diretrizes|orientacoes|istruzioni|regole)",
        # French
        r" (?:ignore|ignorez|ignorer|ignores|oublie|oubliez|oublier) (?:toutes |tous )?(?:les |tes |vos |ces )?(?:instructions|regles|consignes|directives)",
        # German
        r" (?:ignorier|ignoriere|ignorieren|ignoriert|vergiss|vergessen sie|missachte) (?:sie )?(?:alle |jegliche |die |deine |ihre |samtliche )?(?:vorherigen |bisherigen |obigen |fruheren )?(?:anweisungen|regeln|instruktionen|richtlinien|vorgaben)",
    ],
    "role_claim": [
        r" you (?:are|re) now (?:(?:in|a|an|the|my|operating in|acting as|running in) )?(?:\w+ ){0,2}?(?:mode|admin\w*|developer|assistant|agent|bot|ai|model|system|dan|unrestricted|unfiltered|jailbroken|root|supervisor|manager|operator|superuser|free)\b",
        r" (?:admin|administrator|system|root|developer|operator|supervisor|manager) override ",
        r" override (?:code|mode|authori[sz]ed|granted|enabled|active)",
        rf" (?:authori[sz]ed|approved|sanctioned|signed off|cleared|okayed) by (?:the |your |our |my )?(?:\w+ ){{0,2}}?{_STAFF} ",
        r" my (?:manager|supervisor|boss|team lead|lead|director) (?:has |already |just |personally )*(?:approved|authori[sz]ed|signed off|okayed|ok d|cleared|agreed|said (?:it s|it is|its) (?:ok|okay|fine|approved))",
        r" as (?:the|an|a|your) (?:(?:acme |keel |store |shop |company |customer service |cs |support |system |site |it )(?:manager|lead|supervisor|admin|administrator|owner|director)|team lead|supervisor|manager of (?:this|the) (?:support|store|team|shop)|administrator|admin|developer|owner of (?:this|the) (?:store|company|shop|system))(?: \w+){0,4}? (?:i |we )?(?:hereby )?(?:authori[sz]e|approve|instruct|order|command|permit|allow|grant|override|direct)",
        r" i (?:am|m) (?:your|the acme|an acme|the keel|the system|a system|the site|the support|a support|the store) (?:\w+ )?(?:admin|administrator|developer|supervisor|lead|operator|engineer|creator|manager|owner)",
        r" i (?:am|m) your (?:developer|creator|admin|administrator|operator|supervisor|manager|boss|owner)",
        r" (?:this|the following) (?:message |request |instruction )?(?:is|comes) (?:an? )?(?:official|authori[sz]ed|privileged) (?:instruction|order|directive|request|command) from",
        r" (?:the |your |keel s )?(?:policy engine|rules engine|policy check|compliance team|risk team|fraud team) (?:has |have )?(?:already |just )?(?:approved|authori[sz]ed|cleared|validated|signed off)",
        # other languages
        r" (?:ahora eres|eres ahora|tu es maintenant|tu es desormais|vous etes maintenant|vous etes desormais|du bist (?:jetzt|nun|ab sofort)|sie sind (?:jetzt|nun|ab sofort)|agora voce e|voce agora e|voce e agora|ora sei) ",
    ],
    "skip_checks": [
        rf" without (?:any |the |further |additional |extra |a |doing |running |asking for )?(?:\w+ )?{_CHECKS} ",
        r" without (?:asking|checking with|telling) (?:a human|anyone|a supervisor|your supervisor|a manager|your manager|the team) ",
        r" no need (?:to|for) (?:\w+ )?(?:escalat\w*|verif\w*|approv\w*|review\w*|validation|checks|run (?:the |any )?checks|ask (?:a human|anyone|for approval|your supervisor|a supervisor))",
        r" (?:bypass\w*|circumvent\w*|get around|work around|skip\w*|override|overriding|disable|disabling) (?:all |any |the |your |these |those |its )?(?:\w+ )?(?:checks?|verification|validation|approvals?|approval (?:step|process|flow)|escalation|safeguards?|guardrails?|filters?|polic(?:y|ies) checks?|rules|security checks?|fraud checks?)\b",
        r" (?:do not|don t|dont|never|no) (?:escalate|escalating|escalation|ask for approval|request approval|flag this|flag it|send (?:this|it) (?:to|for) (?:a human|review|approval))",
        r" (?:needs?|requires?|require) no (?:checks?|approval|verification|review|escalation)",
        r" (?:execute|run|process|apply|perform) (?:it|this|them|that|the (?:action|call|refund|request)) (?:as is|verbatim|exactly as (?:written|given|shown|stated)|without changes)",
        r" (?:checks?|approvals?|verification|escalation) (?:is|are) (?:not needed|not required|unnecessary|disabled|off|waived)",
        # other languages
        r" (?:sin|sans|ohne|sem|senza) (?:ninguna |aucune |aucun |jegliche |nenhuma |alcuna )?(?:verificacion\w*|comprobacion\w*|controles|aprobacion|revision|escalar|verification|controle|approbation|validation|escalade|prufung|uberprufung|kontrolle|genehmigung|freigabe|eskalation|verificacao|checagem|aprovacao|revisao|verifiche|controlli|approvazione) ",
    ],
    "other_account": [
        r" (?:refund|cancel|change|update|reset|unlock|access|modify|transfer|move|apply|issue|close|delete|send|credit|open|view|export) (?:\w+ ){0,6}?(?:another|a different|someone else s|someone elses|the other|other) (?:customer|user|person|member|client|account holder)s? ?s? (?:account|order|orders|subscription|email|password|data|details|refund)",
        r" (?:someone else s|someone elses|somebody else s) (?:account|order|orders|subscription|password|email|data|details)",
        r" (?:refund|cancel|reset|unlock|change|update|delete|export|dump|list|show me|send me|access) (?:\w+ ){0,3}?(?:all|every|each|other) (?:customers?|users?|accounts?|clients?) ",
        r" (?:on behalf of|for|as) (?:customer|user|account|client) (?:id |number |no |# )?c ?\d{3,}",
        r" (?:log ?in|sign in|switch|access|login) (?:to |into |as )(?:another|a different|someone else s|the other|other) (?:customer|user|account|person)",
        r" (?:impersonat\w+|act as (?:another|a different) (?:customer|user))",
        r" (?:transfer|move|send|redirect|apply) (?:the |this |my )?(?:refund|money|funds|credit|balance)s? (?:to|into) (?:another|a different|someone else s|this other) (?:customer|person|user|account holder)",
    ],
    "raise_limit": [
        r" (?:raise|increase|lift|remove|double|bump|extend|disable|ignore|override|waive|bypass|exceed|up) (?:the |your |my |this |any |all )?(?:refund |approval |agent |auto ?approval |spending |transaction |daily |per ?order |payout )(?:limits?|caps?|thresholds?|maximums?|ceilings?|max)\b",
        r" (?:set|change|make) (?:the |your )?(?:refund |approval |agent |auto ?approval )(?:limit|threshold|cap|max\w*) (?:to|at|equal)",
        r" your (?:refund |approval |agent )?(?:limits?|thresholds?) (?:is|are|has been|have been) (?:now )?(?:raised|increased|lifted|removed|changed|updated|doubled|waived)",
        r" (?:no|without (?:a|any)) (?:refund |approval |spending )?(?:limits?|caps?|thresholds?) (?:apply|applies|for (?:this|me|you)|today)",
        r" (?:refund |approval |agent |spending |your )(?:limits?|caps?|thresholds?) (?:no longer appl\w*|do(?:es)? not apply|don t apply|doesn t apply|(?:is|are|has been|have been) lifted)",
    ],
    "role_play": [
        r" (?<!don t )(?<!do not )pretend (?:that )?(?:you (?:are|re|have|can|were)|to be|you work)",
        r" let s play a game| lets play a game| play a game (?:where|in which) you",
        r" (?:imagine|suppose) (?:that )?you (?:are|were|re) (?:an? |the )?(?:\w+ )?(?:ai|assistant|bot|agent|model|admin\w*|developer|system|unrestricted|different|evil|free|human|supervisor)",
        r" (?:role ?play|act|behave) as (?:if you (?:are|were) )?(?:an? |the |my )?(?:\w+ )?(?:admin\w*|developer|system|supervisor|manager|unrestricted|unfiltered|jailbroken|dan|root|superuser|support lead|operator|different (?:ai|assistant|agent|bot))\b",
        r" stay in character| (?:jailbreak|jailbroken|do anything now)\b",
        r" from now on (?:you (?:are|re|will be|will act|must|shall|have no|no longer)|act as|respond as|ignore)",
        # other languages
        r" (?:finge|finja|fingi|faites semblant|fais semblant|tu so als|tun sie so als) ",
    ],
    "mode_switch": [
        r" (?:developer|dev|debug|god|admin|administrator|maintenance|unrestricted|jailbreak|dan|sudo|root) mode ",
        r" (?:modo (?:desarrollador|administrador|dios|desenvolvedor)|mode (?:developpeur|administrateur|debogage)|entwicklermodus|administratormodus|adminmodus|modalita sviluppatore) ",
    ],
    "approval_claim": [
        r" (?:already|previously|pre) ?(?:been )?(?:approved|authori[sz]ed|verified|cleared) ",
        r" auto ?approve",
        r" (?:i|we) (?:hereby )?authori[sz]e (?:you|the assistant|the agent|the bot|this action)",
    ],
}

_MARKERS: list[str] = [
    r"(?m)^[\s>*#-]*(?:system|assistant|developer|admin)\s*:\s*(?:you|ignore|the assistant|new|override|always|never|do|from now|refund|cancel|act|disregard|forget)",
    r"#{2,}\s*(?:admin|system|developer|root|operator|override|instructions?)\b",
    r"\[/?\s*(?:system|admin|inst|instructions?|developer)\s*\]",
    r"<\s*/?\s*(?:system|instructions?|admin|developer)\s*>",
    r"<\|\s*(?:im_start|im_end|system|endoftext)\s*\|>",
    r"\b(?:begin|end) (?:of )?(?:system|admin|developer) (?:prompt|message|instructions?|override)\b",
    r"\b(?:new|updated) (?:system )?(?:instructions|rules|directives|prompt)\s*:",
    # a forged tool call or decision record pasted into the ticket
    r"[\"']\s*(?:tool|tool_call|decision|approved_by|approval|plan_hash|reviewer)\s*[\"']\s*:",
]

_COMPILED: dict[str, list[re.Pattern[str]]] = {k: [re.compile(p) for p in v] for k, v in _PHRASES.items()}
_MARKERS_RE = [re.compile(p) for p in _MARKERS]

# spaced or dotted letters: "i g n o r e   a l l", "i.g.n.o.r.e"
_SPACED_RUN = re.compile(r"(?:(?<![^\W_])[^\W\d_][ .\-_*/|]{1,3}){5,}[^\W\d_](?![^\W_])")
_SPACED_KEYWORDS = (
    "ignore", "disregard", "forget", "instruction", "override", "bypass", "developermode",
    "adminmode", "youarenow", "systemprompt", "withoutcheck", "jailbreak", "pretend",
)  # fmt: skip

_B64_BLOB = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX_BLOB = re.compile(r"(?i)(?<!\w)(?:[0-9a-f]{2}(?:[\s:]|\\x)?){10,}(?!\w)|(?:\\x[0-9a-f]{2}){10,}")

_MAX_DEPTH = 2


# --------------------------------------------------------------------------- screening


def _excerpt(text: str, m: re.Match[str]) -> str:
    return text[max(0, m.start() - 10) : m.end() + 10].strip()[:80]


def _match_phrases(words: str, found: dict[str, str]) -> None:
    """Record the first match of every signal not already found."""
    for signal, patterns in _COMPILED.items():
        if signal in found:
            continue
        for pattern in patterns:
            m = pattern.search(words)
            if m:
                found[signal] = _excerpt(words, m)
                break


def _decoded_text(raw: bytes) -> str | None:
    """Decoded bytes if they look like human text (mostly printable UTF-8), else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch.isspace() for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    if len(text) < 8 or printable < 0.95 * len(text) or letters < 0.5 * len(text):
        return None
    return text


def _b64_candidates(text: str) -> list[str]:
    out: list[str] = []
    for m in _B64_BLOB.finditer(text):
        blob = m.group(0)
        core = blob.rstrip("=")
        if not (re.search(r"[A-Z]", core) and re.search(r"[a-z]", core)) and not re.search(r"\d", core):
            continue  # a plain lowercase word ("authentication") is not an encoding
        padded = core + "=" * (-len(core) % 4)
        for decoder in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = _decoded_text(decoder(padded))
            except (binascii.Error, ValueError):
                continue
            if decoded:
                out.append(decoded)
                break
    return out


def _hex_candidates(text: str) -> list[str]:
    out: list[str] = []
    for m in _HEX_BLOB.finditer(text):
        digits = re.sub(r"(?i)\\x|[\s:]", "", m.group(0))
        if len(digits) % 2:
            digits = digits[:-1]
        try:
            decoded = _decoded_text(bytes.fromhex(digits))
        except ValueError:
            continue
        if decoded:
            out.append(decoded)
    return out


def _screen(text: str, depth: int) -> dict[str, str]:
    """Signal → evidence for ``text`` (decoded blobs screened up to ``_MAX_DEPTH``)."""
    found: dict[str, str] = {}
    if _strip_zero_width(text) != text:
        found["zero_width_chars"] = "zero-width characters present"
    folded = _fold(text)

    for pattern in _MARKERS_RE:
        m = pattern.search(folded)
        if m:
            found["system_marker"] = _excerpt(folded, m)
            break

    _match_phrases(_words(folded), found)

    strong_before = {s for s in found if WEIGHTS[s] >= THRESHOLD}
    _match_phrases(_words(_deleet(folded)), found)
    if {s for s in found if WEIGHTS[s] >= THRESHOLD} - strong_before:
        found.setdefault("leetspeak", "matched after leetspeak decoding")

    for m in _SPACED_RUN.finditer(_deleet(folded)):
        joined = re.sub(r"[\W_]", "", m.group(0))
        if any(k in joined for k in _SPACED_KEYWORDS):
            found.setdefault("spaced_letters", joined[:80])
            break

    if depth < _MAX_DEPTH:
        plain = _strip_zero_width(unicodedata.normalize("NFKC", text))
        for signal, decoded_texts in (
            ("obfuscated_base64", _b64_candidates(plain)),
            ("obfuscated_hex", _hex_candidates(plain)),
        ):
            for decoded in decoded_texts:
                inner = _screen(decoded, depth + 1)
                if _score(inner) >= THRESHOLD:
                    found.setdefault(signal, normalize(decoded)[:80])
                    for s, ev in inner.items():
                        found.setdefault(s, ev)
                    break
    return found


def _score(found: dict[str, str]) -> float:
    return round(min(1.0, sum(WEIGHTS[s] for s in found)), 3)


def screen(text: str) -> ScreenResult:
    """Screen ticket or retrieved text for instructions aimed at the agent.

    Pure and deterministic; safe on any string (empty text is not flagged).
    """
    found = _screen(text or "", 0)
    score = _score(found)
    return ScreenResult(
        flagged=score >= THRESHOLD,
        score=score,
        signals=list(found),
        evidence=list(dict.fromkeys(found.values()))[:5],
    )
