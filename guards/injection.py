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
letters, base64/hex blobs, percent-encoding and rot13 that decode to such text are
screened too, as are invisible Unicode tag characters (decoded), right-to-left overrides
(read reversed) and phrases in other scripts (Cyrillic, CJK, Hangul, Arabic, Devanagari). Each signal
has a weight; ``score`` is their capped sum and ``flagged`` means ``score ≥ 0.5``:
strong signals flag alone, weak ones only together.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
import urllib.parse
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
    "obfuscated_url",
    "obfuscated_rot13",
]
"""Why text was flagged.

Strong (flag alone): ``instruction_override`` (ignore/forget previous rules),
``role_claim`` (you are now…, admin override, authorized by the support lead),
``skip_checks`` (without checks, no need to escalate, bypass approval),
``other_account`` (act on another customer or account), ``raise_limit`` (raise the
refund limit), ``role_play`` (pretend you are…), ``system_marker`` (``system:`` lines,
``[INST]``, ``<system>``), ``spaced_letters`` / ``obfuscated_base64`` /
``obfuscated_hex`` / ``obfuscated_url`` / ``obfuscated_rot13`` (hidden instructions that
decode to one of the above).

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
    "obfuscated_url": 0.7,
    "obfuscated_rot13": 0.7,
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

_ZERO_WIDTH: dict[int, int | None] = {
    **dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e")),
    # bidi embedding/override/isolate controls: invisible, and used to show text reversed
    **dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")),
    # Unicode tag characters: invisible copies of ASCII a model still reads ("ASCII smuggling")
    **{cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)},
    0xE0001: None,
    0xE007F: None,
}
_RTL = re.compile("[\u202b\u202e\u2067]")
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
        r" as (?:the|an|a|your) (?:(?:acme |keel |store |shop |company |customer service |cs |support |system |site |it )(?:billing |support |refunds? |customer service |security )?(?:manager|lead|supervisor|admin|administrator|owner|director)|team lead|supervisor|manager of (?:this|the) (?:support|store|team|shop)|administrator|admin|developer|owner of (?:this|the) (?:store|company|shop|system))(?: \w+){0,4}? (?:i |we )?(?:hereby )?(?:authori[sz]e|approve|instruct|order|command|permit|allow|grant|override|direct)",
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
        r" (?:bypass\w*|circumvent\w*|get around|work around|skip\w*|override|overriding|disable|disabling) (?:all |any |the |your |these |those |its )?(?:\w+ )?(?:checks?|verification|validation|approvals?|reviews?|approval (?:step|process|flow)|escalation|safeguards?|guardrails?|filters?|polic(?:y|ies) checks?|rules|security checks?|fraud checks?)\b",
        r" (?:do not|don t|dont|never|no) (?:escalate|escalating|escalation|ask for approval|request approval|flag this|flag it|send (?:this|it) (?:to|for) (?:a human|review|approval))",
        r" (?:needs?|requires?|require) no (?:checks?|approval|verification|review|escalation)",
        r" no (?:approval|verification|checks?|review|escalation|sign ?off) (?:is |are )?(?:needed|required|necessary)",
        r" (?:execute|run|process|apply|perform) (?:it|this|them|that|the (?:action|call|refund|request)) (?:as is|verbatim|exactly as (?:written|given|shown|stated)|without changes)",
        r" (?:checks?|approvals?|verification|escalation) (?:is|are) (?:not needed|not required|unnecessary|disabled|off|waived)",
        r" (?:checks?|approvals?|approval|verification|escalation|review) (?:step |steps |process |flow )?(?:has been|have been|was|were|is now|are now) (?:disabled|turned off|switched off|removed|skipped|waived|bypassed)",
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
        # the refund / return window: a claim that it is off for this ticket
        r" (?:refund|return|returns|\d+ day) (?:window|period|deadline)s? (?:no longer appl\w*|do(?:es)? not apply|don t apply|doesn t apply|(?:is|are|has been|have been) (?:lifted|waived|removed|disabled|extended|suspended))",
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
    r"(?m)^[\s>*#-]*(?:system|admin)\s*:[^\n]{0,60}?\b(?:refund|approv\w*|polic(?:y|ies)|rules?|limits?|window|checks?|escalat\w*|instructions?|authori[sz]\w*)\b",
    r"#{2,}\s*(?:admin|system|developer|root|operator|override|instructions?)\b",
    r"\[/?\s*(?:system|admin|inst|instructions?|developer)\s*\]",
    r"<\s*/?\s*(?:system|instructions?|admin|developer)\s*>",
    r"<\|\s*(?:im_start|im_end|system|endoftext)\s*\|>",
    r"\b(?:begin|end) (?:of )?(?:system|admin|developer) (?:prompt|message|instructions?|override)\b",
    r"\b(?:new|updated) (?:system )?(?:instructions|rules|directives|prompt)\s*:",
    # a forged tool call or decision record pasted into the ticket
    r"[\"']\s*(?:tool|tool_call|decision|approved_by|approval|plan_hash|reviewer|action|actions|amount_cents|function_call|arguments)\s*[\"']\s*:",
    # an HTML or Markdown comment addressed to the model (hidden when the email is rendered)
    r"(?:<!--|\[//\]\s*:\s*#\s*\()\s*(?:system|assistant|developer|admin|ai|agent|bot|llm|note to)\b",
    # a line addressed to the model, or a chat-format role line ("role: system", "Assistant: …")
    r"(?m)^[\s>*#-]*(?:p\.?s\.?\s*)?(?:note to (?:the )?)?(?:ai|llm|ai agent|ai assistant|support bot|chatbot|language model)\s*:",
    r"(?m)^[\s>*#-]*assistant\s*:",
    r"(?m)^\s*[\"']?role[\"']?\s*:\s*[\"']?(?:system|developer|assistant)\b",
]

# Languages whose words are not space-separated Latin (Cyrillic, CJK, Hangul, Arabic,
# Devanagari) and a few more Latin ones. These run on the folded text with whitespace
# collapsed and punctuation kept: ``_G`` is a gap inside one sentence. Each pattern is
# written in its own script and folded like the text (homoglyphs, accents), so mixed
# scripts still meet; keep their ASCII parts lower case (folding casefolds the pattern).
_G = r"[^.!?\n\u3002\uff01\uff1f\u0964]{0,40}?"
_SCRIPT_PHRASES: dict[str, list[str]] = {
    "instruction_override": [
        rf"(?:игнорируй|игнорируйте|проигнорируй|проигнорируйте|ігноруй|ігноруйте|забудь|забудьте|не обращай внимания на|не слушай|отбрось|отбросьте){_G}(?:инструкци|правил|указани|ограничени|директив|інструкці|вказівк)",
        rf"(?:忽略|无视|無視|忘记|忘記|忘掉|不要理会|不要理會|不要遵守|不要遵循|放弃|放棄){_G}(?:指令|指示|规则|規則|提示词|提示詞|系统提示|系統提示|约束|約束|限制)",
        rf"(?:指示|命令|指令|ルール|規則|制限|プロンプト){_G}(?:無視し[てろ]|無視せよ|忘れて|忘れろ|忘れなさい)",
        rf"(?:지시|명령|지침|규칙|프롬프트|제한){_G}(?:무시하|무시해|잊으세요|잊어라|잊어버리세요)",
        rf"(?<!\w)(?:تجاهل|تجاهلي|تجاهلوا|انس|انسي|انسوا|أهمل|اهمل|لا تتبع|لا تلتزم)(?!\w){_G}(?:التعليمات|القواعد|الأوامر|التوجيهات|القيود|السياسات|تعليمات|قواعد)",
        rf"(?:निर्देश|नियम){_G}(?:अनदेखा|नज़रअंदाज़|भूल जा)",
        rf"(?:talimat|kural){_G}(?:yok say|görmezden gel|unut)",
        rf"(?<!\w)(?:negeer|vergeet|zignoruj|ignoruj|zapomnij)(?!\w){_G}(?:instructies|regels|richtlijnen|instrukcj|zasad|polecen|regul)",
    ],
    "role_claim": [
        rf"(?<!\w)(?:ты|вы) (?:теперь|сейчас|отныне)(?!\w){_G}(?:администратор|админ|разработчик|руководител|менеджер|бот|ассистент|агент|без ограничений|режим)",
        rf"(?<!\w)теперь (?:ты|вы)(?!\w){_G}(?:администратор|админ|разработчик|руководител|менеджер|бот|ассистент|агент|без ограничений|режим)",
        r"(?<!\w)я (?:ваш |твой )?(?:администратор|разработчик|руководитель|менеджер поддержки|сотрудник поддержки)",
        r"(?:你现在是|你現在是|从现在起你是|從現在起你是|你已进入|你已進入|我是(?:你的)?(?:管理员|管理員|开发者|開發者|主管|客服主管))",
        r"(?:经理|經理|主管|管理员|管理員|老板|老闆)(?:已经|已經|已)(?:批准|同意|授权|授權)",
        rf"(?:あなたは(?:今|いま)から|今からあなたは|あなたは今){_G}(?:管理者|開発者|制限|モード|ボット|アシスタント)",
        rf"(?:上司|マネージャー|管理者|店長)(?:が|は){_G}(?:承認|許可)(?:し|済)",
        rf"(?:너는|당신은) 이제{_G}(?:관리자|개발자|제한|모드|봇)",
        rf"(?:매니저|관리자|상사)(?:가|께서){_G}(?:승인|허가)",
        rf"(?:أنت الآن|انت الان){_G}(?:مسؤول|مدير|مطور|بدون قيود|وضع)",
        rf"(?:مديري|المدير|المشرف){_G}(?:وافق|صادق|اعتمد)",
        rf"(?:अब (?:तुम|आप)|(?:तुम|आप) अब){_G}(?:व्यवस्थापक|एडमिन|डेवलपर|प्रबंधक|बिना प्रतिबंध)",
    ],
    "skip_checks": [
        r"(?<!\w)без (?:\w+ )?(?:проверк|одобрени|подтверждени|согласовани|верификаци|эскалаци)",
        r"(?:不需要|不用|无需|無需|无须|無須|跳过|跳過|绕过|繞過|不经|不經|未经|未經)[^\u3002\uff01\uff1f\n]{0,4}?(?:审批|審批|批准|审核|審核|验证|驗證|检查|檢查|授权|授權)",
        r"(?:承認|審査|チェック|検証)(?:なし|無し|不要|を?スキップ|を?省略|せずに|しないで)",
        r"(?:승인|검증|검토|인증) ?(?:없이|생략|건너뛰)",
        r"(?:دون|بدون|من غير) (?:أي |اي )?(?:موافقة|تحقق|مراجعة|تصعيد|فحص|تدقيق|إذن|اذن)",
        r"बिना (?:किसी )?(?:मंज़ूरी|अनुमोदन|जांच|जाँच|सत्यापन|अनुमति)",
        r"(?<!\w)(?:zonder (?:controle|goedkeuring|verificatie)|bez (?:weryfikacji|zatwierdzenia|sprawdzania|kontroli)|onaysız|kontrolsüz)(?!\w)",
    ],
    "other_account": [
        r"(?<!\w)друг(?:ого|ому|ой|им) (?:клиент|пользовател|покупател)",
        r"(?:其他|别的|別的|另一个|另一個)(?:客户|客戶|用户|用戶|顾客|顧客)",
        r"(?:別の|他の)(?:顧客|お客様|ユーザー)",
        r"다른 (?:고객|사용자)",
        r"(?:عميل|مستخدم|حساب) آخر",
    ],
    "raise_limit": [
        rf"(?<!\w)(?:повысь|повысьте|увеличь|увеличьте|сними|снимите)(?!\w){_G}(?:лимит|ограничени|порог)",
        r"(?:提高|提升|取消|解除)[^\u3002\uff01\uff1f\n]{0,6}?(?:限额|限額|上限|额度|額度)",
        rf"(?:上限|限度額|限度){_G}(?:引き上げ|上げて|解除|撤廃)",
        rf"(?:한도|제한){_G}(?:올려|높여|해제)",
        r"(?:رفع|ارفع|زيادة|إلغاء) (?:\w+ )?(?:الحد|حد)(?!\w)",
    ],
    "role_play": [
        r"(?<!\w)(?:представь,? что ты|притворись|притворитесь)",
        r"(?:假装你是|假裝你是|扮演一个|扮演一個|角色扮演)",
        r"(?:ふりをして|になりきって)",
        r"(?:인 척|척해)",
        r"(?:تظاهر|تخيل أنك)",
    ],
    "mode_switch": [
        r"(?:режим (?:разработчика|администратора|бога)|开发者模式|開發者模式|管理员模式|管理員模式|開発者モード|管理者モード|개발자 모드|관리자 모드|وضع المطور|وضع المسؤول)",
    ],
    "approval_claim": [
        r"(?:уже (?:одобрен|согласован|подтвержден)|已经批准|已經批准|已批准|承認済み|이미 승인|تمت الموافقة)",
    ],
}
_SCRIPT_MARKERS = [r"(?m)^[\s>*#-]*(?:系统|系統|システム|시스템|система|النظام|सिस्टम)\s*:"]

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

_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")

_MAX_DEPTH = 2


# --------------------------------------------------------------------------- screening


def _excerpt(text: str, m: re.Match[str]) -> str:
    """A short window around a match, for reviewers, with every digit masked.

    The window is cut from the customer's text, so it may split a card or phone number
    where DLP patterns no longer recognise it; masking digits keeps such fragments out of
    audit rows and logs (the reason a text was flagged never needs its numbers).
    """
    return re.sub(r"\d", "#", text[max(0, m.start() - 10) : m.end() + 10].strip()[:80])


def _match_phrases(words: str, found: dict[str, str], table: dict[str, list[re.Pattern[str]]] | None = None) -> None:
    """Record the first match of every signal of ``table`` (default: the phrase patterns)
    not already found."""
    for signal, patterns in (_COMPILED if table is None else table).items():
        if signal in found:
            continue
        for pattern in patterns:
            m = pattern.search(words)
            if m:
                found[signal] = _excerpt(words, m)
                break


assert not any(re.search(r"[A-Z]", p) for v in _SCRIPT_PHRASES.values() for p in v)  # casefold-safe
_SCRIPT_COMPILED: dict[str, list[re.Pattern[str]]] = {
    k: [re.compile(_fold(p)) for p in v] for k, v in _SCRIPT_PHRASES.items()
}
_MARKERS_RE += [re.compile(_fold(p)) for p in _SCRIPT_MARKERS]


def _match_scripts(folded: str, found: dict[str, str]) -> None:
    """Like :func:`_match_phrases`, for the other-script patterns on the folded text."""
    _match_phrases(re.sub(r"\s+", " ", folded), found, _SCRIPT_COMPILED)


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


def _url_candidates(text: str) -> list[str]:
    """The text percent-decoded, when it carries several escapes (``ignore%20previous…``)."""
    if len(_PERCENT.findall(text)) < 3:
        return []
    decoded = urllib.parse.unquote_plus(text)
    return [decoded] if decoded != text else []


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
    _match_scripts(folded, found)
    if _RTL.search(text):  # right-to-left overrides show the reversed string to a reader
        _match_phrases(_words(folded[::-1]), found)

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
            ("obfuscated_url", _url_candidates(plain)),
            ("obfuscated_rot13", [codecs.encode(plain, "rot13")] if depth == 0 and re.search(r"[A-Za-z]{4}", plain) else []),
        ):
            for decoded in decoded_texts:
                # rot13 is its own inverse: its text is screened without decoding it again
                inner = _screen(decoded, _MAX_DEPTH if signal == "obfuscated_rot13" else depth + 1)
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
