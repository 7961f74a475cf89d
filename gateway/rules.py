"""Deterministic reading of ticket text: intents, question-vs-request, and extraction.

This is the offline "model" behind :class:`~gateway.local.LocalProvider`. It is plain
phrase scoring, not learning, so that keel runs and its tests pass with no network and
give the same answer every time. The design choices, each for a reason:

- Scoring is per *sentence*, so a how-to question in one sentence ("how do I reset my
  password?") does not turn a request in another into an action, and vice versa.
- A phrase preceded by a negation ("I don't want a replacement") does not count.
- A question suppresses the side-effect operations it mentions unless it is really a
  request ("can you…", "please", "can I get…"); read-only operations about a specific
  record ("is my order O-1 on its way?") stay, because answering them is harmless.
- Only *firm* matches (weight ≥ 2) can make a ticket multi-intent; a stray weak word in
  another route is noise, not a second request. A complaint ("it never arrived") next to
  an explicit request in another route is that request's reason, not a second intent.
- Within a route, a side effect outranks a read ("it never arrived, resend it").
- Confidence comes from match strength (0.93 for one clear phrase), so only tickets with
  nothing to go on fall below the policy's 0.6 threshold.

- The text is read structurally first (:mod:`gateway.normalize`): shorthand and typos of
  support words are corrected, a quoted or forwarded section is context, and sentences are
  split into clauses at the joints between requests ("btw", "also", "+", bullets).
- Fail closed on a second request: a knowledge question ("do you ship to Canada?") or a
  request no phrase recognised but whose words belong to another route ("also please sort
  out my login") next to an action makes the ticket ``multiple_intents``, like two firm
  routes do; a delivery complaint is the reason for a billing/orders request next to it,
  never for an access one.
- Every request must be explained: once the route and its side effect are known, each
  clause phrased as a request ("… and delete my data", "could you also send the invoice?",
  "Und bitte …") must be the request the plan answers; one that is not, whatever its
  words, makes the ticket ``multiple_intents`` (:func:`unexplained_requests`). Greetings,
  thanks, background and complaints are not requests and explain themselves; so are a
  remark keeping a record as it is ("Keep O-2."), the customer's own goal ("I need to get
  into my account"), telling ("I just want to let you know …"), a rhetorical question, and
  a purpose or deadline tail ("I need it before my trip") after what is asked.
- A request needs no request words: a statement that a record changed ("my new phone
  number is …"), an obligation ("the invoice should go to …", "needs changing"), a wish
  ("it would be great if …", "I'd expect …"), an imperative after a condition or joined by
  "and", a slang or pronoun imperative ("kill it"), someone else's account, a complaint of
  another route ("the charge is wrong too"), a sentence in a language keel does not read,
  and an ask naming a record the plan leaves alone all count as asks. A supposition ("if I
  cancel, do I …?", "Say you refund me …") asks for nothing, unless the text also tries to
  instruct the agent (then every side effect it names counts as asked).

Ticket text is data: nothing here executes or obeys it; it is only matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Collection
from typing import Literal

import snowballstemmer

from guards.injection import claim_clauses, screen
from gateway.base import OPERATION_ROUTE, ROUTE_OPERATIONS
from gateway.normalize import ASK_VERBS, NOT_A_VERB, clauses, coordinated_imperative, current_part, is_english, normalize, segments
from keel.types import Extraction, Operation, Route, TriageResult

__all__ = [
    "OpHit",
    "Ask",
    "Analysis",
    "analyze",
    "triage_text",
    "extract_text",
    "extract_operation",
    "find_order_ids",
    "find_subscription_ids",
    "find_amount_cents",
    "claimed_amounts",
    "is_full_refund",
    "find_timing",
    "find_new_email",
    "find_new_address",
    "reship_reason",
    "READ_ONLY_OPERATIONS",
    "request_order_ids",
    "unexplained_requests",
]

_F = re.IGNORECASE

# --------------------------------------------------------------------------- patterns
_MFA = r"(?:two[- ]?factor|2fa|mfa|multi[- ]?factor|authenticator|2[- ]?step|two[- ]step|one[- ]time codes?|verification codes?)"
_SUB_WORDS = r"(?:subscription|membership|plan|auto-?renew\w*|renewal)"
_PAY_WORDS = r"(?:charges?|payments?|transactions?|debits?)"
_ORDER_WORDS = r"(?:order|purchase|shipment|package|parcel|delivery|stuff|things|items?|O-\d+)"
_NOT_EMAIL = r"(?:(?!e-?mail)[^.?!\n])"

_OP_PATTERNS: list[tuple[Operation, str, int]] = [
    # billing: refunds
    ("refund", r"\brefund", 2),
    ("refund", r"\bmoney back\b", 2),
    ("refund", r"\breimburs", 2),
    ("refund", r"\b(?:pay|paid) me back\b", 2),
    ("refund", r"\b(?:want|get|give me|return) (?:my|the) money\b", 2),
    ("refund", r"(?:\d|\bdollars?|\bbucks|\bcents)\s+back\b", 2),
    ("refund", r"\bcredit (?:it |me )?back\b", 1),
    ("refund", r"\bmoney (?:returned|refunded)\b", 2),
    ("refund", r"\brevers\w* (?:the |that |this |my )?(?:charge|payment|transaction)", 2),
    # billing: subscriptions (the word "cancel" is resolved separately)
    ("cancel_subscription", r"\b(?:don'?t|do not|doesn'?t|does not|won'?t) want (?:it|my \w+|the \w+|this \w+) to renew\b", 2),
    ("cancel_subscription", r"\bstop (?:it |my \w+ |the \w+ )?(?:from )?(?:auto-?)?renew", 2),
    ("cancel_subscription", r"\bturn off (?:the )?auto-?renew", 2),
    ("cancel_subscription", r"\b(?:end|stop|terminate|discontinue) (?:my|the) (?:\w+ )?(?:subscription|membership)\b", 2),
    ("cancel_subscription", r"\bunsubscribe\b(?![^.?!\n]*\b(?:e-?mails?|newsletters?|marketing|messages|texts)\b)", 1),
    # billing: read-only questions about payments
    ("billing_question", r"\b(?:charg|bill)(?:ed|ing|e)? (?:me |us )?(?:twice|two times|2 times|double)\b", 2),
    ("billing_question", r"\bdouble[- ]?(?:charged|charge|billed|billing)\b", 2),
    ("billing_question", r"\b(?:duplicated?|identical|repeated) (?:charges?|payments?|transactions?)\b", 2),
    ("billing_question", r"\breceipts?\b", 2),
    ("billing_question", r"\binvoices?\b", 1),
    ("billing_question", r"\b(?:unrecognized|unknown|strange|unexpected|extra) (?:charges?|payments?)\b", 2),
    ("billing_question", r"\bpayment history\b", 2),
    ("billing_question", r"\bwhy was i (?:charged|billed)\b", 2),
    # orders: tracking
    ("track_order", r"\bwhere(?:'s|s)?\b(?<!right where)(?<!exactly where)(?<!just where)(?<!stay where)(?<!stays where)(?<!staying where)[^.?!\n]{0,30}\b" + _ORDER_WORDS, 2),
    ("track_order", r"\btrack(?:ing)?\b", 1),
    ("track_order", r"\bstatus of (?:my |the |this )?" + _ORDER_WORDS, 2),
    ("track_order", r"\b(?:order|shipping|delivery|shipment) status\b", 2),
    ("track_order", r"\bwhen (?:will|is|does|should) (?:my |the |this )?(?:order|package|parcel|shipment|delivery|O-\d+|it|stuff)\b[^.?!\n]{0,30}\b(?:arrive|come|get here|be delivered|be here|ship)", 2),
    ("track_order", r"\b(?:any )?(?:update|news) on (?:my |the )?" + _ORDER_WORDS, 2),
    # orders: cancel an order (see also the "cancel" resolver)
    ("cancel_order", r"\bordered (?:it |this |that )?by mistake\b", 1),
    # orders: address change
    ("change_address", r"\b(?:change|update|correct|fix|edit|modify|amend)\w*\b" + _NOT_EMAIL + r"{0,30}\baddress\b", 2),
    ("change_address", r"\b(?:ship|send|deliver|redirect|reroute|re-route)\w*\b" + _NOT_EMAIL + r"{0,40}\bto:?\s+\d", 2),
    ("change_address", r"\bwrong (?:shipping |delivery )?address\b", 2),
    ("change_address", r"\bnew (?:shipping |delivery |mailing |home )?address\b", 1),
    ("change_address", r"\b(?:i'?m|i am|we'?re|we are) moving\b", 1),
    # orders: reship a damaged or missing item
    ("reship", r"\breplacements?\b(?! (?:order|purchase) (?:that )?(?:i|we)(?:'m| am|'ll| will|'ve| have)? (?:plac|buy|mak|order)\w*)", 2),
    ("reship", r"\breplace (?:it|them|this|that|the \w+|my \w+|O-\d+)\b", 2),
    ("reship", r"\bsend (?:me |us )?(?:a |an |the )?(?:new|another|replacement|second)\b(?! (?:password|reset|link|code|email|e-mail|verification|receipt|invoice))", 2),
    ("reship", r"\b(?:re-?ship|re-?send)\b(?! (?:the |my |a )?(?:password |reset |verification )?(?:link|email|e-mail|code|receipt|invoice))", 2),
    ("reship", r"\bship (?:me |us )?(?:another|a new|a replacement)\b", 2),
    ("reship", r"\bsend (?:it|them) again\b", 1),
    ("reship", r"\b(?:new|another|replacement) (?:one|ones|item|items|unit|pair)\b[^.?!\n]{0,15}\b(?:sent|shipped|send|ship)\b", 2),
    ("reship", r"\bexchange (?:it|them|this|that|the \w+)\b", 1),
    # access
    ("password_reset", r"\b(?:reset|change|recover|new)\w*\b[^.?!\n]{0,20}\bpassword\b", 2),
    ("password_reset", r"\bpassword\b[^.?!\n]{0,20}\breset\b", 2),
    ("password_reset", r"\bforg[eo]t\w*\b[^.?!\n]{0,15}\bpassword\b", 2),
    ("password_reset", r"\b(?:can'?t|cannot|can not|don'?t) remember\b[^.?!\n]{0,15}\bpassword\b", 2),
    ("password_reset", r"\breset (?:link|email)\b", 2),
    ("password_reset", r"\b(?:can'?t|cannot|can not|unable to) (?:log|sign) ?in\b", 1),
    ("mfa_reset", r"\b(?:reset|remove|disable|turn off|switch off|clear|deactivate|bypass|re-?set)\w*\b[^.?!\n]{0,30}" + _MFA, 2),
    ("mfa_reset", _MFA + r"[^.?!\n]{0,40}\b(?:reset|removed?|disabled?|turned off|turn (?:it |this |that )?off|switch (?:it |this |that )?off|cleared?)\b", 2),
    ("mfa_reset", r"\blost\b[^.?!\n]{0,30}\b(?:phone|device|authenticator|backup codes)\b", 1),
    ("mfa_reset", r"\b(?:can'?t|cannot|can not|unable to|don'?t) (?:get|receive|access|have)\b[^.?!\n]{0,20}\b(?:codes?|authenticator)\b", 2),
    ("change_email", r"\b(?:change|update|switch|replace|correct)\w*\b[^.?!\n]{0,30}\be-?mail\b", 2),
    ("change_email", r"\bnew e-?mail\b", 2),
    ("change_email", r"\be-?mail\b[^?!\n]{0,40}\bto:?\s+[\w.+-]+@", 2),
    ("unlock_account", r"\bunlock", 2),
    ("unlock_account", r"\blocked out\b", 2),
    ("unlock_account", r"\b(?:it'?s|it is|is|got|been|was|gets) (?:still |now |been )?(?:locked|blocked|frozen)\b", 2),
    ("unlock_account", r"\baccount\b[^.?!\n]{0,20}\b(?:locked|blocked|frozen|suspended|disabled)\b", 2),
    ("unlock_account", r"\b(?:locked|blocked|frozen)\b[^.?!\n]{0,10}\baccount\b", 2),
    # paraphrases: money coming back, stopping a plan, not shipping, a missing part, a broken login
    ("refund", r"\b(?:cash|money|payment)\s+(?:back|returned|refunded)\b", 2),
    ("refund", r"\bgive (?:me )?(?:back )?(?:my |the )?(?:money|cash|payment)\b(?: back)?", 2),
    ("refund", r"\breturn(?:ing)? (?:of )?(?:my |the )?(?:money|cash|payment)\b", 2),
    ("cancel_subscription", r"\bstop (?:paying|being charged|being billed) for (?:my |the |this )?(?:\w+ )?" + _SUB_WORDS, 2),
    ("cancel_subscription", r"\bunsubscribe (?:me )?from (?:my |the |this )?(?:\w+ )?" + _SUB_WORDS, 2),
    ("cancel_subscription", r"\b(?:end|terminate|close|kill|stop) (?:my|the|this) (?:\w+ )?(?:plan|subscription|membership)\b", 2),
    ("cancel_order", r"\b(?:annul|call off|void|withdraw)\w*\b[^.?!\n]{0,20}\b(?:order|purchase|O-\d+)", 2),
    ("cancel_order", r"\b(?:don'?t|do not|please don'?t) (?:ship|send|dispatch) (?:it|them|this|that|the order|my order|O-\d+)\b", 2),
    ("cancel_order", r"\b(?:placed|bought) (?:\S+ )?(?:by (?:accident|mistake)|accidentally)\b", 1),
    ("change_address", r"\baddress change\b", 2),
    ("change_address", r"\b(?:ship|send|deliver|redirect|reroute|re-route)\w*\b" + _NOT_EMAIL + r"{0,40}\bto (?:my|our|the) \w+(?: \w+)? at:?\s+\d", 2),
    ("billing_question", r"\b(?:don'?t|do not|can'?t|cannot) recogni[sz]e\b[^.?!\n]{0,30}\b" + _PAY_WORDS, 2),
    ("billing_question", r"\b" + _PAY_WORDS + r"\b[^.?!\n]{0,40}\b(?:don'?t|do not|can'?t|cannot) recogni[sz]e\b", 2),
    ("billing_question", r"\b(?:charged|billed|debited)\b[^.?!\n]{0,20}\b(?:twice|double|two times)\b", 2),
    ("track_order", r"\btrack(?:ing)? (?:for |of )?(?:my |the |this )?" + _ORDER_WORDS, 2),
    ("track_order", r"\bstatus (?:of |for |on )?(?:my |the )?(?:order )?O-\d+", 2),
    ("track_order", r"\b(?:update|news|info|information) (?:about|regarding|for|re) (?:my |the |this )?" + _ORDER_WORDS, 2),
    ("track_order", r"\bwhen (?:my |the |this )?(?:order|package|parcel|shipment|delivery|O-\d+|it)\b[^.?!\n]{0,20}?\b(?:will|is going to|gonna|should|would) (?:arrive|come|get here|be delivered|be here|ship)\b", 2),
    ("track_order", r"\bwhen (?:will|does|should) (?:my |the |this )?(?:order |package |parcel |shipment |delivery )?O-\d+\b[^.?!\n]{0,20}\b(?:arrive|come|get here|be delivered|be here|ship)\b", 2),
    ("track_order", r"\bwhere (?:is|are) (?:it|they)\b", 1),
    ("track_order", r"\bO-\d+\b[^.?!\n]{0,15}\bwhere(?:'s| is| are) (?:it|they)\b", 2),
    ("change_address", r"\b(?:send|ship|deliver|redirect|forward|reroute|divert)\s+(?:it|them|O-\d+|my (?:order|package|parcel)|"
                       r"the (?:order|package|parcel))\s+to\s+(?:(?:the|my|a|our) (?:new|other|different) "
                       r"(?:place|address|home|house|flat|apartment|office|location|building)\b|\d)", 2),
    ("track_order", r"\b(?:check|tell me|know|find out|see|confirm|look up|let me know) where (?:it|they|my \w+|the \w+|O-\d+) (?:is|are)\b", 2),
    ("reship", r"\bsend (?:me |us )?(?:the |a |my )?missing\b", 2),
    ("password_reset", r"\b(?:wrong|incorrect|invalid) password\b", 1),
    ("password_reset", r"\b(?:send|e-?mail) (?:me )?(?:a |the |another )?(?:new )?link\b", 1),
    ("mfa_reset", r"\b(?:lost|no longer have|don'?t have|do not have|can'?t access|cannot access)\b[^.?!\n]{0,30}\bphone\b[^.?!\n]{0,40}" + _MFA, 2),
    ("change_email", r"\be-?mail (?:address )?(?:has )?changed\b", 2),
    ("reship", r"\bsend (?:me |us )?(?:the |my |that |this )?(?:\w+ )?again\b", 2),
    ("cancel_subscription", r"\b(?:don'?t|do not|please don'?t) (?:auto-?)?renew (?:my|the|it|this)\b", 2),
    ("cancel_order", r"\b(?:stop|halt|hold) (?:my |the |this )?(?:order|purchase|O-\d+)\b", 2),
    ("track_order", r"\b(?:has|have|did|is) (?:my |the |this )?(?:order |package |parcel )?(?:O-\d+|it|order|package|parcel|shipment)\b (?:been )?(?:shipped|sent|dispatched|left)\b", 2),
    ("password_reset", r"\bpassword\b[^.?!\n]{0,20}\b(?:isn'?t|is not|doesn'?t|does not|won'?t|not|stopped) work", 2),
    ("password_reset", r"\bsend (?:me )?(?:a |the |another )?(?:password )?reset\b", 2),
    ("mfa_reset", r"\b(?:codes?|authenticator|" + _MFA[3:-1] + r")\b[^.?!\n]{0,30}\b(?:stopped working|broken|(?:isn'?t|is not|aren'?t|are not|not|doesn'?t|don'?t) work)", 2),
]
_DESCRIPTIVE_PATTERNS: list[tuple[Operation, str, int]] = [
    # complaints that an order is late: a tracking request on their own, but only the
    # reason for another request ("never arrived, I want my money back") next to one
    ("track_order", r"\b(?:has ?n[o']t|have ?n[o']t|did ?n[o']t|did not|has not|have not|never|still not|not yet|yet to)\s+(?:arrived?|come|came|been delivered|shown up|showed up|turned up|received|got(?:ten)? it)\b", 2),
    ("track_order", r"\bsupposed to (?:be here|arrive|have arrived|be delivered)", 2),
    ("track_order", r"\b(?:it'?s been|been waiting|waited|waiting for) (?:over |more than |almost |nearly )?(?:\d+|a|one|two|three|four|five|six|a few|several|many) (?:days?|weeks?|months?)\b", 2),
    ("track_order", r"\bstill waiting (?:for|on)\b", 1),
    ("track_order", r"\bon (?:its|it's|the) way\b", 1),
    ("track_order", r"\b(?:has ?n[o']t|have ?n[o']t|did ?n[o']t|not|never) (?:been )?(?:shipped|dispatched|sent)(?: out)?(?: yet)?\b", 2),
    ("track_order", r"\b(?:is|are|it's|seems?) (?:very |so |really )?(?:late|delayed|overdue|lost)\b", 2),
    ("track_order", r"\b(?:still )?waiting (?:for |on )?(?:my |the |this )?(?:order|package|parcel|delivery|shipment|O-\d+)\b", 2),
]
_COMPILED = [(op, re.compile(p, _F), w, False) for op, p, w in _OP_PATTERNS] + [
    (op, re.compile(p, _F), w, True) for op, p, w in _DESCRIPTIVE_PATTERNS
]

_REFUND_STATUS = re.compile(
    r"\b(?:my |the |a |this )?refund\b[^.?!\n]{0,25}\b(?:has ?n[o']t|have ?n[o']t|did ?n[o']t|not|never|still)\b[^.?!\n]{0,20}"
    r"\b(?:arrived?|shown up|showed up|come through|came through|appeared|landed|been (?:processed|received|credited|paid))|"
    r"\bwhere(?:'s| is)\b[^.?!\n]{0,15}\brefund\b|\b(?:status of|update on|news on|track) (?:my |the )?refund\b|"
    r"\brefund status\b|\bwhen will (?:i (?:get|receive|see) )?(?:my |the )?refund\b|"
    r"\b(?:have ?n[o']t|has ?n[o']t|did ?n[o']t|never|not yet|still not)\b[^.?!\n]{0,20}\b(?:received|got|gotten|seen)\b"
    r"[^.?!\n]{0,15}\brefund\b",
    _F,
)
"""Asking where a refund is: a read-only billing question, not a request for another refund."""

_CANCEL = re.compile(r"\b(?:cancel\w*|terminat\w*|discontinu\w*)", _F)
_SUB_TARGET = re.compile(r"\b" + _SUB_WORDS + r"\b|\bS-\d+\b|\b(?:pro|basic|team) plan\b", _F)
_ORDER_TARGET = re.compile(r"\b(?:order|purchase|shipment)s?\b|\bO-\d+\b", _F)
_PRONOUN_TARGET = re.compile(r"^\W*(?:it|this|that|them)\b", _F)

_NEGATION_BEFORE = re.compile(
    r"\b(?:don'?t|do not|doesn'?t|does not|not|no|never|without|instead of|rather than|"
    r"no need to|nor)\b(?:\s+\w+){0,3}\s*$",
    _F,
)

_TRIED_BEFORE = re.compile(r"\b(?:tried|attempted|already tried)\s+(?:to\s+)?(?:\w+\s+)?$", _F)
"""An attempt the customer already made ("I tried resetting my password"): context, not a request."""

_DONE = re.compile(r"\w+ed\b|(?:reset|sent|set|put|made|got|did|done)\b", _F)
_DONE_BEFORE = re.compile(r"\b(?:i|we)(?:'ve| have| had)?(?: already| just)?\s+$", _F)
"""A phrase opening with a past verb: after "I (have) (already)" it says what the customer did
themselves ("I have already changed my password myself"), not what they ask."""

_REQUEST = re.compile(
    r"\b(?:please|pls|plz|kindly)\b|\b(?:can|could|would|will) (?:you|u)\b|\b(?:would it be|is it) possible\b|\bfor me\b|\bsend me\b|"
    r"\bi (?:want|need) you\b|\bi'?d like you\b|\b(?:can|could|may) (?:i|we) (?:get|have|receive)\b|"
    r"\bi (?:want|need|demand)\b(?! to know)|\bi'?d like\b(?! to know)|\bi would like\b(?! to know)",
    _F,
)
_PROCEDURAL = re.compile(
    r"\bhow (?:do|does|can|could|should|would|to|long|much|many|soon|often)\b|\bwhere\b[^.?!\n]{0,20}\b(?:do|can|should|would) (?:i|we)\b|"
    r"\bwhat (?:should|do|can) (?:i|we) do\b",
    _F,
)
_INFO_START = re.compile(
    r"^\W*(?:(?:hi|hello|hey|so|also|and|plus|btw|by the way|then|ps|quick question)\W+)*"
    r"(?:what|what's|which|who|do|does|is|are|can|could|will|would|should|may|am|did)\b(?!['’]t)(?! not\b)",
    _F,
)
_INFO_PHRASE = re.compile(
    r"\b(?:i'?d like|i'?d love|i want|i would like|i would love) to know\b|\bwonder(?:ing)?\b|"
    r"\btell me (?:about|how|what|if|whether|why|when|your|the)\b|\b(?:info|information|details) (?:on|about|regarding)\b|"
    r"\bexplain\b|\bcurious\b",
    _F,
)
_POLICY_QUESTION = re.compile(
    r"\b(?:do|does|will|can|could) (?:you|they)\b(?: guys| folks| all)? (?:ship|deliver|offer|sell|have|accept|take|support|"
    r"provide|allow|charge|stock|carry|do)\b|"
    r"\bis (?:there|it) (?:a |an |any )?(?:way|option|fee|charge|limit|discount|policy|warranty|guarantee|possible)\b|"
    r"\bwhat(?:'s| is| are| about)\b[^?.!\n]{0,40}\b(?:policy|policies|warranty|guarantee|fees?|options?|difference|rules?|hours|limits?)\b|"
    r"\bcan (?:i|we) (?!get\b|have\b|receive\b|please\b)\w+",
    _F,
)
"""A question about how the shop works (policies, options), not about the customer's records."""

_FRAME_WORDS = frozenset(
    """a about again all also am an and any anything are as at be been but by can could did do does doing done
    for from get go going gone got had has have hello help hey hi how i i'd i'll i'm i've if in is it it's its
    just know let like long many may me mine much my need now of ok okay on or please possible right should
    so soon some still sure take takes than thank thanks that that's the their them then there these they
    this those to too up us want was way we well were what what's when where where's which who why will
    with would yes yet you your happen happened happening lost late wrong work working thing things ps btw
    needs needed wants wanted
    plus tell explain question quick one more another""".split()
)
"""Words that frame a question rather than say what it is about ("how long will it take?")."""

_ROUTE_TOPICS: dict[Route, re.Pattern[str]] = {
    "billing": re.compile(r"\b(?:refund\w*|money|charg(?:e|es|ed|ing)|bill\w*|payment\w*|paid|pay|receipts?|invoices?|subscri\w*|fees?|"
                          r"membership|plan|renew\w*|credit)\b", _F),
    "orders": re.compile(r"\b(?:orders?|ordered|packages?|parcels?|deliver\w*|ship\w*|items?|address|track\w*|arriv\w*|"
                         r"O-\d+)\b", _F),
    "access": re.compile(r"\b(?:password|log ?in|login|sign ?in|account|e-?mail|2fa|mfa|codes?|authenticat\w*|verif\w*|"
                         r"username|locked)\b", _F),
}
"""Words that place a request in a route when no operation phrase matched it."""

_ASK_VERBS = (r"(?:fix|sort|check|change|update|reset|send|cancel|refund|unlock|stop|close|delete|remove|make|give|"
              r"get|help|look into|resolve|set up|turn|switch|move|add|transfer)")
_ASK_START = re.compile(
    r"^\W*(?:(?:hi|hello|hey|so|also|and|plus|btw|by the way|then|ps|oh|and also)\W+)*"
    r"(?:please\s+|pls\s+|kindly\s+)?" + _ASK_VERBS + r"\b|"
    r"\b(?:can|could|would|will) you (?:please |also )?" + _ASK_VERBS + r"\b|\bi (?:need|want) you to " + _ASK_VERBS + r"\b|"
    r"\bplease (?:also )?" + _ASK_VERBS + r"\b",
    _F,
)
"""A clause asking for something to be done (an imperative, "can you fix …"), whatever its object."""


def _unplaced_request(clause: str) -> Route | None:
    """The route of a request in ``clause`` that no operation phrase recognised, if it names one.

    A clause asked as a request (an imperative, "please", "can you", "I need") whose words
    belong to exactly one route. Used only to notice a *second* request: it never plans.
    """
    if not _ASK_START.search(clause):
        return None
    routes = _topic_routes(clause)
    return routes[0] if len(routes) == 1 else None


def _topic_routes(text: str) -> tuple[Route, ...]:
    """The routes whose topic words ``text`` uses ("charge" billing, "parcel" orders, …)."""
    return tuple(r for r, rx in _ROUTE_TOPICS.items() if rx.search(text))


_ASK_VERB_ALT = "|".join(ASK_VERBS)
_POLITE_FORMULA = re.compile(
    r"\bplease (?:be (?:informed|advised|aware)|find (?:attached|enclosed|below)|see (?:attached|below|above)|note|"
    r"excuse|forgive|accept)\b|\b(?:if you need|should you need|let me know if you need)\b[^.?!\n]*|"
    r"\bthank(?:s| you)\b[^.?!\n]*|\beverything else\b[^.?!\n]{0,30}\b(?:is|looks|seems) (?:fine|ok|okay|good|right)\b[^.?!\n]*|\bkeep (?:up the (?:good|great|excellent) work|it up)\b|"
    r"\b(?:let me know|keep me (?:posted|updated|informed)|get back to me|"
    r"confirm(?:ation)? (?:it )?(?:by|via|per|in an?) (?:e-?mail|text|sms|phone|message)|"
    r"(?:please |kindly )?(?:make sure|ensure|be sure)\b(?! (?:to|you|that you)\b)[^.?!\n]*|"
    r"(?:e-?mail|call|text|contact|write to) me (?:back|when|once|if|as soon)[^.?!\n]*)",
    _F,
)
"""Formulas that ask nothing beyond the request itself ("please find attached", "let me know")."""

_ASK_MARK = re.compile(
    # English: polite imperatives, requests to the agent, wants and needs
    r"\b(?:please|kindly)\b|\b(?:can|could|would|will) (?:you|u)\b|\bwould it be possible\b|"
    r"\bis it possible (?:for you )?to\b|\b(?:can|could|may) (?:i|we) (?:get|have|receive|ask|also)\b|"
    r"\b(?:i|we) (?:also |really |just |still |further |kindly |hereby |therefore |additionally )?"
    r"(?:want|need|demand|require|wish|request)\b|\bwanna\b|"
    r"\b(?:can'?t|cannot|couldn'?t|won'?t|wouldn'?t) (?:you|u)\b|\b(?:don'?t|do not|never) forget to\b|\bremember to\b|"
    r"\b(?:i|we)'?d (?:also |really )?(?:like|love|appreciate|want|prefer|need)\b(?! to know)|"
    r"\b(?:i|we) would (?:also |really )?(?:like|love|appreciate|want|prefer)\b|"
    r"\byou (?:also |still |really )?(?:need|have|must|ought) to\b|"
    r"\b(?:would|will) (?:also |really )?appreciate\b|\bsend me\b|\bi(?:'m| am) (?:asking|requesting)\b|"
    r"\b(?:it|that)(?:'d| would) be (?:great|nice|good|helpful|lovely|ideal|perfect|awesome|brilliant|amazing|appreciated) if\b|"
    r"\b(?:so|then|just|now)\s+(?!(?:it|that|this|you|they|he|she|which|who|i|we)\b)(?!\w+ed\b)[a-z]+ (?:me|us) "
    r"(?:up|out|some|with|w)\b|"
    r"\bi (?:also |just )?(?:wanted|want|would like|'d like) to ask\b|\bid (?:also )?(?:need|like|love|want|appreciate)\b|"
    r"\b(?:can|could|would|will) (?:someone|somebody|anyone|one of you|your team)\b|^\W*(?:and\s+)?also\s+to\s+\w+|"
    r"^\W*(?:and\s+|oh\s+|also\s+)*(?:really\s+)?(?:want|need|wanna)\s+(?:to|you|u|it|a|an|my|the)\b|\b(?:i|we)(?: was| were| am| are|'m|'re) (?:also )?(?:hoping|wondering)\b|"
    r"\b(?:i|we)(?:'d| would) (?:also )?be (?:very |really |so )?(?:grateful|happier|glad|thankful|pleased|happy) (?:for|if|to|not)\b|"
    r"\b(?:i|we)(?:'d| would) (?:also )?find it [^.?!\n]{0,20}(?:useful|helpful|easier|better) if\b|"
    r"\bit would (?:really |also )?(?:help|make (?:all )?the difference|save me)\b|\bideally\b|"
    r"\bi'?d prefer (?:it )?if\b|\bwould you mind\b|\bi(?:'d| would)? (?:also |really |at least )?expect\b|"
    r"^\W*(?:and\s+)?also (?:need|want|require|would like|'?d like)\b|"  # "… that I | also need X": cut at "also"
    # a reproach that asks for something still undone ("why haven't you sent the invoice?")
    r"\bwhy (?:haven'?t|hasn'?t|didn'?t|won'?t|can'?t|have not|did not) (?:you|anyone|your team) (?!answer|repl|respond|got? back)\w+|"
    # the other languages support is offered in (guards.injection.LANGUAGES): es, de, fr, pt, it
    r"\bpor favor\b|\b(?:pueden|puede usted|podr[ií]an|podr[ií]a|quiero|quisiera|necesito|me gustar[ií]a|adem[aá]s|tambi[eé]n)\b|"
    r"\bbitte\b|\b(?:k[oö]nnen|k[oö]nnten) sie\b|\bich (?:m[oö]chte|brauche|will|h[aä]tte gern)\b|\b(?:au[sß]erdem|ausserdem|zus[aä]tzlich)\b|"
    r"\bs'il vous pla[iî]t\b|\bsvp\b|\b(?:pouvez|pourriez)[- ]vous\b|\bje (?:voudrais|veux|souhaite)\b|\bj'(?:ai besoin|aimerais)\b|"
    r"\b(?:aussi|[eé]galement|de plus)\b|"
    r"\b(?:podem|poderiam|pode|quero|queria|preciso|gostaria|tamb[eé]m|al[eé]m disso)\b|"
    r"\b(?:per favore|per piacere|potete|pu[oò]|potreste|potrebbe|vorrei|voglio|ho bisogno|inoltre|anche)\b",
    _F,
)
"""Words that make a clause a request, in every language the support product serves."""

_GREETING = r"(?:(?:hi|hello|hey|so|also|and|plus|btw|by the way|then|ps|p\.s\.|oh|ok|okay|and also|and then)\W+)*"
_IMPERATIVE_START = re.compile(
    r"^\W*" + _GREETING + r"(?:please\s+|pls\s+|kindly\s+|also\s+)?(?:" + _ASK_VERB_ALT + r")\b(?!\s*:)", _F
)
"""An imperative opening ("cancel it", "also send …"); a form's label ("Email: …", "Issue: …") is none."""
_SECOND_MARK = re.compile(
    r"^\W*(?:and\s+)?(?:also|plus|another thing|one more thing|while (?:you'?re|your|ur|you are) (?:at it|in there)|additionally|"
    r"in addition|by the way|btw|"
    r"on top of that|besides|p\.?s\.?|oh and|as well|(?:which|that|this) reminds me|speaking of which|"
    r"on (?:another|a different|a separate) note|while i'?m at it|while i have you|separately|unrelated(?:ly)?)\b",
    _F,
)
"""A clause opened as a further request ("also the invoice", "PS: …")."""
_STRONG_SECOND_MARK = re.compile(
    r"^\W*(?:and\s+)?(?:while (?:you'?re|your|ur|you are) (?:at it|in there|on it)|one more thing|another thing|one last thing|"
    r"on (?:another|a different|a separate) note|separately|unrelated(?:ly)?|(?:which|that|this) reminds me|speaking of which)\b",
    _F,
)
"""Openings that announce another matter ("One more thing: …", "While you're in there: …"):
what follows is a request even when it is worded as a statement."""
_STATEMENT = re.compile(
    r"\b(?:i'?m|it'?s|is|was|were|are|am|has|had|have|been|did|does|came|arrived|got|broke|seems?|looks?|feels?|"
    r"love|loved|liked|enjoy|enjoyed)\b|\b\w{3,}ed\b",
    _F,
)
"""A finite verb of a statement: "also the box was wet" tells, it does not ask."""

_EXPLAINED_WORDS = frozenset(
    """kindly wanna gonna appreciate appreciated able request requesting asking wish prefer hope hoping grateful
    additionally addition besides while you're top really just very much sure make quick quickly soon asap fast
    possible done sorted sort fixed fix handle handled process processed resolve resolved look into check checked
    confirm confirmation advise reply respond contact touch patience trouble inconvenience sorry thank thanks cheers
    regards best kind dear team guys folks sir madam great love awesome amazing good nice wonderful excellent
    today tomorrow tonight week weekend month morning afternoon evening days hours time monday tuesday wednesday
    thursday friday saturday sunday please again instead already everything anything something soonest
    account profile details records app website site access into new back response answer feedback product
    item items order orders purchase package parcel off out down over away""".split()
)
"""Words of a request's manner, timing and politeness: they ask for nothing of their own."""

_OP_WORDS: dict[Operation, frozenset[str]] = {
    "refund": frozenset("refund refunded money back credit cash reimburse reimbursement return returned full amount "
                        "card payment original method".split()),
    "cancel_order": frozenset("cancel cancelled canceled cancellation order purchase".split()),
    "cancel_subscription": frozenset("cancel cancelled canceled cancellation subscription membership plan renew renewal "
                                     "end period billing charged charge billed bill".split()),
    "change_address": frozenset("address ship shipping deliver delivery change update".split()),
    "reship": frozenset("replacement replace send new reship resend item".split()),
    "password_reset": frozenset("password reset link login log sign".split()),
    "mfa_reset": frozenset("two-factor factor authenticator authentication codes code phone reset".split()),
    "unlock_account": frozenset("unlock unlocked account locked login log sign access".split()),
    "change_email": frozenset("email e-mail address change update".split()),
}
"""Words that name the request itself: an ask made only of them is that request again."""

@lru_cache(maxsize=8192)
def _stem(word: str) -> str:
    """``word``'s English stem, so "charges" is the request's own "charge". Only the request's
    own words are matched by stem: the lists of manner and frame words are closed and matched
    exactly, so a word they do not list ("processing" beside "process") still asks for something."""
    return _STEMMER.stemWord(word)


_STEMMER = snowballstemmer.stemmer("english")
_OP_STEMS: dict[Operation, frozenset[str]] = {op: frozenset(_stem(w) for w in ws) for op, ws in _OP_WORDS.items()}

_PRONOUN_OBJECT = re.compile(r"\b([a-z][a-z-]+) (?:me |us )?(?:it|them|this|that|a new one|another one)\b", _F)
"""A verb applied to the request's own object ("please reactivate it", "remove it")."""

_BOILERPLATE = re.compile(
    r"\b(?:confidential|intended recipient|privileged|"
    r"received (?:it|this|this (?:e-?mail|message|mail)) in error|"
    r"(?:received|got) (?:this|the|an?) (?:e-?mail|message|mail|communication) (?:in error|by mistake|by accident|mistakenly)|"
    r"(?:received|got) (?:it|this) (?:by mistake|in error),? please (?:inform|notify|tell) (?:us|the sender)|"
    r"authori[sz]ed and regulated by|registered (?:office|in england)|legally privileged)\b",
    _F,
)
"""A mail disclaimer: its "please delete it and notify the sender" asks nothing of support."""

_OTHER_OBJECT = re.compile(r"\b(?:the other|another|too|as well|also|either|second|one more|additionally|in addition|while you)\b", _F)
"""Words saying an ask is about something besides the request ("return the other item too")."""


_LINK_OR_EMAIL = re.compile(r"\S+@\S+|https?://\S+|www\.\S+", _F)
_DATA_TAIL = re.compile(
    r"\b\d+[a-z]?,?\s+(?:[\w.'-]+\s+){0,3}(?:st|street|road|rd|ave|avenue|lane|ln|drive|dr|court|ct|way|blvd|boulevard|"
    r"place|pl|square|sq|terrace|close|crescent|row|hill|park|gardens|walk)\b.*$|\+?\d[\d\s().-]{5,}\d",
    _F,
)
"""New data given after a record's name (an address, a phone number): the request's data, not an ask."""

_CHANGED_RECORD = re.compile(
    r"\bmy new (?P<a>(?:[\w-]+ ){0,2}?[\w-]+) (?:is|are|will be)\b|"
    r"\bmy (?P<b>(?:[\w-]+ ){0,2}?[\w-]+) (?:has |have )?(?:just |recently )?(?:been )?changed\b|"
    r"\bthe (?P<c>(?:[\w-]+ ){0,2}?[\w-]+) (?:has |have )(?:just |recently )?(?:been )?changed\b|"
    r"\bmy (?P<e>(?:[\w-]+ ){0,2}?[\w-]+) (?:is|are) now\s+(?=\S*\d|\S+@)|"
    r"\bmy (?P<f>(?:[\w-]+ ){0,3}?[\w.-]+) (?:updated|changed|replaced|swapped|corrected|removed|deleted) (?:to|with|for|from)\b|"
    r"\b(?:i|we) (?:have |'ve |just |recently )*(?P<moved>moved|relocated)(?: house| home| flat)? to\b|"
    r"\b(?:i|we) (?:have |'ve |just )*(?:got|get|have) a new (?P<d>(?:[\w-]+ ){0,2}?(?:number|phone|e-?mail|address|card|name|bank))\b",
    _F,
)
"""A statement that a record changed ("my new phone number is …", "my email changed",
"I moved"): it asks for that record to be updated though it has no request words. The
record it names (an address for "I moved") is what must be explained, not the story
around it ("I moved last week, long story, new job")."""

_OBLIGATION = re.compile(
    r"\b(?:the|my|our|your) (?:[\w-]+ ){1,3}?(?:should|needs? to|has to|have to|must|ought to) "
    r"(?:be|go|get|come|show|read|say|include|contain|list|mention|reach)\b(?! (?:here|there|arriving|on (?:its|the) way)\b)|"
    r"(?<!\bi )(?<!\bwe )(?<!\byou )\b(?:should|needs? to|has to|have to|must|ought to) be "
    r"(?:\d|(?:changed|updated|corrected|fixed|swapped|replaced|removed|deleted|added|moved|set|put|sent|made|switched|"
    r"renamed|transferred|merged|closed|reissued|reset|unlocked|cancell?ed|refunded|credited|waived|applied|adjusted)\b)|"
    r"\bneeds? (?:changing|updating|correcting|fixing|swapping|replacing|removing|deleting|adding|resetting|sorting)\b|"
    r"\b[OS]-\d+ (?:should|needs? to|has to|must) (?:go|be|get|come|ship)\b|\bshould (?:be|say|read) \S+@\S+|"
    r"\b(?:name|surname|address|e-?mail|phone|number|username|company|vat)\b[^.?!\n]{0,30}\b(?:is|are) "
    r"(?:spelt|spelled|misspelt|misspelled|wrong|incorrect|outdated|out of date)\b",
    _F,
)
"""What a record "should" be ("the invoice should go to my work email", "my name needs to
be on the receipt"): a request phrased as an obligation."""

_CONDITION = re.compile(
    r"^\W*(?:and\s+|but\s+|otherwise\s+)?(?:if|when|once|in case|should it|unless|in that case|otherwise)\b[^,;:]{0,80}[,;:]\s*", _F
)
"""A leading condition ("If it has already left the warehouse, …"): the request follows it."""

_PRONOUN_IMPERATIVE = re.compile(
    r"^\W*(?:and\s+|so\s+|just\s+|then\s+|either\s+)?(?!(?:" + NOT_A_VERB + r"|need|want|love|like|hate|got|get)\b)(?!\w+(?:ed|s)\b)"
    r"[a-z]{3,} (?:it|them)\b(?!\s*(?:is|was|are|were|'s)\b)",
    _F,
)
"""A verb of its own on a record named before ("…, kill it before it ships"): slang or not, a request."""

_THIRD_PERSON_NEED = re.compile(r"\b(?:he|she|they) (?:also |really |still |just |will |would )?(?:needs?|wants?|would like)\b", _F)
"""Someone else's need ("she needs it unlocked"): asked of support on their behalf."""

_THIRD_PARTY = re.compile(
    r"\b(?:my|our) (?:wife|husband|partner|son|daughter|kids?|child|children|mom|mum|mother|dad|father|brother|sister|"
    r"friend|colleague|coworker|co-worker|boss|neighbou?r|parents?|grand(?:ma|mother|pa|father)|aunt|uncle|cousin|"
    r"roommate|flatmate|girlfriend|boyfriend|fianc[ée]e?|employee|assistant|family)(?:'s|s'|s)? "
    r"(?:[\w-]+ )?(?:account|password|order|subscription|e-?mail|card|login|2fa|mfa|plan|membership|address|profile)s?\b|"
    r"\b(?:her|his) (?:[\w-]+ )?(?:account|password|login|order|subscription|e-?mail|2fa|mfa|card|membership|profile)s?\b",
    _F,
)
"""Another person's records: support acts for the ticket's customer only, so a request
about them is never the one the plan answers."""

_PROBLEM = re.compile(
    r"\b(?:wrong|incorrect|twice|double[ds]?|missing|never|not|no longer|\w+n't|(?:can|don|doesn|didn|won|isn|wasn|haven|hasn)t|"
    r"broken|damaged|failed|failing|vanished|disappeared|"
    r"locked|stuck|lost|late|error|issue|problem|overcharged|charged|too (?:high|much|expensive|steep)|keeps? \w+ing)\b",
    _F,
)
"""A problem named in a statement ("the charge is wrong too"): a complaint that may ask for a fix."""

_STILL = re.compile(r"\bstill\b", _F)
"""A problem that is "still" there ("I still haven't received my refund for O-2") is a
complaint waiting for a fix, like one raised with "also"."""

_NON_LATIN = re.compile(r"[^\W\d_a-zA-Z\u00C0-\u024F]")
"""A letter of a script other than Latin (CJK, Arabic, Cyrillic, Devanagari, …)."""


def _other_script(text: str) -> bool:
    """Whether ``text`` is written (at least four letters of it) in a script other than Latin."""
    return len(_NON_LATIN.findall(text)) >= 4

_FOREIGN_WORD = re.compile(r"(?<![\w@.-])[^\W\d_]+(?![\w@-])")


_SELF_GOAL = re.compile(
    r"\bi (?:really |just |still )?(?:need|want|have|got|gotta|must)(?: to)? (?:be able to )?"
    r"(?:get (?:into|in|back|access|on|online|there|home|ready)|check|see|pay|buy|use|save|cut|finish|submit|attend|"
    r"travel|leave|work|access|log ?in|sign ?in|be|go|prepare|read|catch|meet|study|start|show|bring|visit|give)\b",
    _F,
)
"""The customer's own goal ("I need to get into my account before my meeting", "I need to
save for the trip"): why they ask, carried out by them, not a further request to support."""

_INFORMING = re.compile(
    r"\b(?:i(?:'d| would) (?:just |also |only )?like|i (?:just |really |also |only )?(?:want|wanted|need|needed|wish|wished)|"
    r"just (?:want|wanted)) to "
    r"(?:say|mention|point out|let you know|tell you|inform you|remind you|complain|express|thank|explain|clarify|"
    r"(?:add|note|share|report|flag|stress|highlight)(?= that\b|:))\b",
    _F,
)
"""Telling, not asking ("I just want to let you know that the box was wet", "I'd like to
add that …"): what follows is context unless it asks on its own."""

_KEEP_OBJECT = r"(?:[OS]-\d+|it|them|this(?: one)?|that(?: one)?|(?:my|the|your|this|that|our)(?: [\w-]+){1,3}?)"
_CONSTRAINT = re.compile(
    r"^\W*(?:please\s+|but\s+|and\s+|just\s+|oh\s+)*(?:keep|leave)\s+" + _KEEP_OBJECT +
    r"(?:\s+(?:as (?:it |they )?(?:is|are)|alone|unchanged|untouched|open|active|running|going|though|please|for now|"
    r"on|in place))*\s*(?:[,.!;]\s*|$)",
    _F,
)
"""A remark keeping something as it is ("Keep O-2.", "Leave the other order as it is",
"Keep my account though"): a constraint on the request, asking for nothing new. An object
with any further complement ("keep the parcel at the depot") is still a request."""

_NO_WORRY = re.compile(
    r"(?:^\W*(?:(?:but|and|oh|so)\s+)?(?:don'?t|do not|never) (?:worry|bother|mind)\b|"
    r"\b(?:(?:there'?s |there is )?no need to|(?:please )?(?:ignore|disregard) my (?:\w+ )?(?:chat|message|e-?mail|mail|ticket|note))\b)"
    r"[^,.;!?]*[,.;!]?\s*"
    r"(?:i (?:still )?(?:remember|know|want|need|like|love) (?:it|them|that|mine)\b[^,.;!?]*[,.;!]?\s*)?",
    _F
)
"""Waving something off ("Don't worry about the password, I remember it, …", "there's no need
to cancel the order, I still want it", "please ignore my chat from Sunday"): it asks nothing."""

_RHETORICAL = re.compile(
    r"\bwhy (?:do|does|did|would|should|must) (?:i|we|you)(?: guys)? (?:even|ever|keep)\b|"
    r"\bhow (?:hard|difficult) (?:can|could|is|was) (?:it|that)\b|\bhow many (?:more )?times\b|"
    r"\bwhat(?:'s| is) the point\b|\bis (?:it|that) (?:really |honestly |seriously )?(?:so hard|so difficult)\b|"
    r"\bis (?:it|that) (?:really |honestly |seriously )?too much to ask(?: for)? (?:a|an|the) [\w-]+(?: [\w-]+)? (?:that|which|to)\b|"
    r"\bare you (?:kidding|serious|joking)\b|\bwhat (?:were|was) (?:you|they|someone) thinking\b|"
    r"\bwhy (?:(?:haven'?t|hasn'?t|didn'?t|won'?t|have not|did not) (?:you|anyone|anybody|your team)|"
    r"(?:does|did|has|will) (?:no ?one|nobody)) (?:ever )?(?:answer|repl|respond|got? back|call|contact)\w*",
    _F,
)
"""A question asked for effect ("why do I even pay for this?", "how hard can it be to pack
a vase?"): a complaint, not a question waiting for an answer."""

_PURPOSE_TAIL = re.compile(
    r"\b(?:because|since|as|so that|so|in order to|before|until|by|for|ahead of|in time for|due to)\b(?P<tail>.*)$",
    _F | re.DOTALL,
)
_AGENT_TAIL = re.compile(r"\byou\b|\bplease\b|\bkindly\b|\b[OS]-\d+\b", _F)
"""A purpose or deadline tail that still addresses the agent ("so that you can …") or names a
record ("… for O-2") may ask for more: it is kept."""


def _is_ask(segment: str) -> bool:
    """Whether ``segment`` is phrased as a request (an imperative, "can you", "I need", "also …").

    Not an ask: a remark keeping something as it is ("Keep O-2, it's a gift") unless its
    rest asks, and a need that is the customer's own goal ("I need to get into my account").
    """
    segment = _NO_WORRY.sub("", segment, count=1)
    keep = _CONSTRAINT.match(segment)
    if keep:
        rest = re.sub(r"^\W*(?:but|and|yet|though|then)\b", "", segment[keep.end() :], flags=_F)
        return bool(rest.strip()) and _is_ask(rest)
    text = _INFORMING.sub(" ", _SELF_GOAL.sub(" ", _POLITE_FORMULA.sub(" ", segment)))
    main = _CONDITION.sub("", text, count=1)  # "if it has shipped, put the money on my credit": the imperative after it
    if _ASK_MARK.search(text) or _IMPERATIVE_START.search(text) or _IMPERATIVE_START.search(main):
        return True
    if _OBLIGATION.search(text) or _THIRD_PERSON_NEED.search(text) or _PRONOUN_IMPERATIVE.match(text):
        return True
    if _STRONG_SECOND_MARK.search(text):
        return True  # "While you're in there: the account is still under my maiden name"
    return bool(_SECOND_MARK.search(text)) and not _STATEMENT.search(text)


def _ask_content(segment: str, answered: Collection[Operation]) -> list[str]:
    """The words of an ask that name something other than the answered request(s)."""
    if _other_script(segment):
        return [segment.strip()]  # words of another script: nothing here can tell what they ask
    text = _LINK_OR_EMAIL.sub(" ", _POLITE_FORMULA.sub(" ", _NO_WORRY.sub("", segment, count=1)))  # an address is data
    text = _DATA_TAIL.sub(" ", text)
    own = frozenset().union(*(_OP_STEMS.get(op, frozenset()) for op in answered))
    words = [w for w in _topic_words(text) if w not in _EXPLAINED_WORDS]
    if _OTHER_OBJECT.search(text):
        return words  # "the other item too": even the request's own words name another thing
    words = [w for w in _topic_words(_without_purpose(text)) if w not in _EXPLAINED_WORDS]
    verbs = {m.group(1).lower() for m in _PRONOUN_OBJECT.finditer(text)}  # "reactivate it": the request again
    return [w for w in words if _stem(w) not in own and w not in verbs]


def _asks_in(head: str) -> bool:
    """Whether ``head`` holds the asking part of a request (so what follows it is its purpose)."""
    return bool(_ASK_MARK.search(head) or _IMPERATIVE_START.search(head) or _OBLIGATION.search(head)
                or _SELF_GOAL.search(head) or _PRONOUN_IMPERATIVE.match(head))


def _without_purpose(text: str) -> str:
    """``text`` without its purpose, cause or deadline tail ("I need it before my trip on
    Friday", "… since I need the money for rent", "I need access for work"): the tail says
    why or by when, the head what is asked. A tail addressing the agent ("so that you can
    also …") is kept: it may ask for more."""
    m = _PURPOSE_TAIL.search(text)
    head = text[: m.start()] if m else ""
    if m is None or _AGENT_TAIL.search(m.group("tail")) or not _WORD.search(head) or not _asks_in(head):
        return text
    return text[: m.start()]


def unexplained_requests(
    analysis: Analysis, answered: Collection[Operation], records: Collection[str] | None = None
) -> list[str]:
    """The asks of ``analysis`` that the request(s) ``answered`` do not account for.

    An ask is explained when its own phrases name an answered operation, or when it names
    nothing but manner, timing, politeness and the request's own words ("please do it
    today", "can you sort it out?"). Anything else (an operation the plan does not carry
    out, or words no rule knows: "delete my data", "und bitte eine Rechnung") is a second
    request: the caller fails closed on it rather than acting on half the ticket.
    """
    out: list[str] = []
    routes = {OPERATION_ROUTE[op] for op in answered}
    acted_on = {i.upper() for a in analysis.asks if any(op in answered for op in a.ops) for i in _SPECIFIC_ID.findall(a.text)}
    acted_on |= {i.upper() for i in records or ()}
    # whether the customer asks something for themselves; a request made only for someone else
    # ("I'm his assistant, cancel his order") is left to the ownership rule (not_owner)
    own_request = any(any(op in answered for op in a.ops) and not _THIRD_PARTY.search(a.text) for a in analysis.asks)
    for ask in analysis.asks:
        if not any(op in answered for op in ask.ops) and set(ask.ids) - acted_on:
            out.append(ask.text.strip())  # "and O-2, don't need it, kill it": a record the plan leaves alone
            continue
        if ask.complaint and acted_on and {i.upper() for i in _SPECIFIC_ID.findall(ask.text)} - acted_on:
            out.append(ask.text.strip())  # "I also never got my refund for O-2" next to a refund of O-1
            continue
        if ask.complaint:
            # a complaint about something else: a delivery problem can be a billing
            # request's reason; anything of another route asks for more
            if _THIRD_PARTY.search(ask.text) or any(
                r not in routes and not (r == "orders" and routes <= {"billing"}) for r in ask.complaint
            ):
                out.append(ask.text.strip())
            continue
        if _THIRD_PARTY.search(ask.text) and own_request:
            out.append(ask.text.strip())  # another person's records beside the customer's own request
            continue
        if any(op in answered for op in ask.ops):
            continue
        if ask.ops or _ask_content(ask.text, answered):
            out.append(ask.text.strip())
    return out


def _left_to_the_screen(asks: list[str], subject: str, body: str) -> bool:
    """Whether every unexplained ask is an instruction the injection screen flags ("assistant:
    act on behalf of C-2001"): the ticket is escalated as an injection, not as two requests."""
    return bool(asks) and screen(f"{subject}\n\n{body}").flagged and all(screen(a).flagged for a in asks)


def _clause_asks(offset: int, clause: str, hits: list[OpHit], sentence: str) -> list[Ask]:
    """The parts of ``clause`` phrased as requests, each with the operations named in it
    (none in a mail disclaimer's sentence)."""
    if _BOILERPLATE.search(sentence):
        return []
    out: list[Ask] = []
    ids = tuple(dict.fromkeys(i.upper() for i in _SPECIFIC_ID.findall(clause)))
    parts = segments(clause)
    asking = [_is_ask(seg) for _, seg in parts]
    for i, (s_off, seg) in enumerate(parts):
        lo = offset + s_off
        hi = offset + parts[i + 1][0] if i + 1 < len(parts) else offset + len(clause)
        ops = tuple(dict.fromkeys(h.op for h in hits if lo <= h.start < hi and not h.descriptive))
        if i and not asking[i - 1] and _shares_subject(clause, parts[i - 1], s_off):
            # "I've wrapped it up and put it in the garage": the verb after "and" is the
            # statement's own, not an imperative; it asks only with words of its own
            if _ASK_MARK.search(_POLITE_FORMULA.sub(" ", seg)):
                out.append(Ask(lo, seg, ops, ids))
            continue
        if asking[i] or (i and asking[i - 1] and coordinated_imperative(seg)) or (i and _foreign(seg)):
            out.append(Ask(lo, seg, ops, ids))
        elif changed := _changed_record(seg):
            out.append(Ask(lo, changed, ops, ids))
        elif complaint := _complaint_routes(seg):
            out.append(Ask(lo, seg, ops, ids, complaint=complaint))
        elif out and out[-1].start == offset + parts[i - 1][0] and not out[-1].complaint:
            # a part cut off an ask that asks nothing on its own ("… and my neighbour's parcel
            # too") is read with that ask, as if it had not been cut
            prev = out.pop()
            out.append(Ask(prev.start, f"{prev.text} {seg}", tuple(dict.fromkeys((*prev.ops, *ops))), ids))
    return out


def _complaint_routes(segment: str) -> tuple[Route, ...]:
    """For a complaint about something else ("the charge is wrong too", "O-2 never arrived
    either", "my son's account is locked"): the routes its words belong to ("unknown" for
    someone else's records); empty for anything else."""
    if not ((_OTHER_OBJECT.search(segment) or _SECOND_MARK.match(segment) or _STILL.search(segment)
             or _SPECIFIC_ID.search(segment)) and _PROBLEM.search(segment)):
        return ()
    routes = _topic_routes(segment)
    return routes or (("unknown",) if _THIRD_PARTY.search(segment) else ())


_FIRST_PERSON = re.compile(r"\b(?:i|we)(?:'ve|'d|'m|'ll| have| had| am| was| were| just| already| then)?\b", _F)


def _shares_subject(clause: str, previous: tuple[int, str], start: int) -> bool:
    """Whether the part of ``clause`` at ``start`` continues the statement before it with
    "and": a first-person statement that asks nothing ("so I've wrapped everything up | and
    put it in the garage"), whose subject the next verb shares. The caller has checked that
    the statement asks nothing."""
    p_off, p_text = previous
    joint = clause[p_off + len(p_text) : start]
    return bool(re.fullmatch(r"\s*,?\s*(?:and|&)\s+(?:then\s+)?", joint, _F)) and bool(_FIRST_PERSON.search(p_text))


_POINTS_BACK = re.compile(r"\b(?:fix|sort|do|handle|check|change|sort out|look into|deal with|switch|turn|remove|stop|"
                          r"disable|enable|cancel|delete|update)\b[^.?!\n]{0,12}\b(?:that|it|this|them)\b", _F)


def _with_antecedent(ask: Ask, topics: list[tuple[int, str]]) -> Ask:
    """``ask`` read with the sentence it points back to, when it names nothing itself ("can u
    fix that") and a clause just before opened another topic ("also my gift card says
    expired??"): the pronoun's antecedent is what is asked."""
    if ask.ops or not _POINTS_BACK.search(ask.text):
        return ask
    if [w for w in _topic_words(ask.text) if w not in _EXPLAINED_WORDS]:
        return ask
    before = [(o, t) for o, t in topics if o < ask.start][-1:]
    if not before or ask.start - (before[0][0] + len(before[0][1])) > 80:
        return ask
    return Ask(ask.start, f"{before[0][1].strip()} {ask.text}", ask.ops, ask.ids, ask.complaint)


def _changed_record(segment: str) -> str:
    """The record a statement says changed ("phone number" in "my new phone number is …",
    "address" in "I moved"), or "" when it says none changed."""
    m = _CHANGED_RECORD.search(segment)
    if m is None:
        return ""
    if m.group("moved"):
        return "address"
    return next(g for g in (m.group("a"), m.group("b"), m.group("c"), m.group("d"), m.group("e"), m.group("f")) if g)


def _foreign(sentence: str) -> bool:
    """Whether ``sentence`` is mostly in a language keel does not read: three or more words
    of three letters or more, under half of them common English (capitalised words, names
    most often, and acronyms left out)."""
    if _other_script(sentence):
        return True  # "顺便帮我取消订单", "وممكن ترسلولي": another script
    words = [w.lower() for w in _FOREIGN_WORD.findall(sentence) if not w[0].isupper() and len(w) > 2]
    if len(words) < 3:
        return False
    return sum(1 for w in words if is_english(w)) / len(words) < 0.5


_SPECIFIC = re.compile(
    r"\b[OS]-\d+\b|\bmy (?:\w+ )?(?:order|package|parcel|shipment|delivery|purchase)\b", _F
)
_SPECIFIC_ID = re.compile(r"\b[OS]-\d+\b", _F)
READ_ONLY_OPERATIONS: frozenset[Operation] = frozenset({"track_order", "billing_question", "question"})
"""Operations whose tools only read; harmless to carry out when unsure."""

_NOT_A_PRODUCT = re.compile(r"\b(?:link|password|code|e-?mail|receipt|invoice)s?\b", _F)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z][a-z']*", _F)

_COMMON_WORDS = frozenset(
    """a about above after again against all also am an and any anything are around as at back
    be because been before being below between both but by can can't cannot could couldn't did didn't
    do does doesn't doing don't down during each even ever every few for from further get gets getting
    got had hadn't has hasn't have haven't having he her here hers herself him himself his how i i'd
    i'll i'm i've if in into is isn't it it's its itself just know last let like ll made make many may
    me might more most much must my myself need needs never new next no nor not now of off on once one
    only or other our ours out over own please pls put really right same see she should so some still
    such sure than thank thanks that that's the their theirs them themselves then there these they this
    those through to too two under until up us use used very want wanted was wasn't way we week were
    weren't what what's when where where's which while who why will with won't would wouldn't yes yet
    you you'd you're your yours yourself hi hello hey dear regards
    account address amount app arrive arrived authentication back bill billing birthday box broke broken
    buy bought card cards cancel cancelled canceled change charge charged check code codes cost customer
    damaged day days delivered delivery deliver did email e-mail end express fit forgot free gift help
    issue item items label link locked login long lost mail missing money month morning moved moving
    number order ordered orders package packaging paid parcel password pay payment phone plan plans
    policy price problem product purchase question receipt refund refunds replace replacement reset
    return returns send sent service ship shipped shipping shop sign size standard status store
    subscription support take takes time today track tracking two-factor unlock update wrong work
    working year years""".split()
)
"""Everyday and support words: a ticket with almost none of them is gibberish."""


# --------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class OpHit:
    """One phrase that points at an operation."""

    op: Operation
    weight: int
    start: int
    """Offset in the analysed text, for ordering intents by appearance."""
    sentence: tuple[int, int] = (0, 0)
    """Offsets of the sentence it was found in (to find the order id it is about)."""
    descriptive: bool = False
    """A complaint ("it never arrived") rather than an explicit request."""


@dataclass(frozen=True)
class Ask:
    """A part of a clause phrased as a request ("and delete my data", "can you also …")."""

    start: int
    """Offset in the analysed text."""
    text: str
    ops: tuple[Operation, ...] = ()
    """Operations its own phrases ask for (complaints left out); empty when none matched."""
    ids: tuple[str, ...] = ()
    """Order and subscription ids named in its clause ("and O-2, … kill it"), upper case."""
    complaint: tuple[Route, ...] = ()
    """For a complaint about something else ("the charge is wrong too"), not phrased as a
    request: the routes its words belong to. It is a second request only outside the plan's."""


@dataclass(frozen=True)
class Analysis:
    """What the rules found in a text."""

    kept: tuple[OpHit, ...]
    """Hits that count as requests."""
    suppressed: tuple[OpHit, ...]
    """Hits inside questions about how things work (no action asked)."""
    question: Literal["procedural", "info", "phrase", None]
    """Strongest question form found anywhere, or None."""
    vocab_ratio: float
    words: int
    knowledge: tuple[int, ...] = ()
    """Offsets of clauses that ask how the shop works (a knowledge request), asking no action."""
    topical: bool = False
    """Some question in the text says what it is about (not just "can you help me?")."""
    unplaced: tuple[Route, ...] = ()
    """Routes of requests no operation phrase recognised ("also please sort out my login")."""
    asks: tuple[Ask, ...] = ()
    """Every part of the text phrased as a request, with the operations it names."""

    def scores(self, *, suppressed: bool = False, descriptive: bool = True) -> dict[Operation, int]:
        """Summed weight per operation (each pattern counted once per sentence)."""
        out: dict[Operation, int] = {}
        for h in self.suppressed if suppressed else self.kept:
            if descriptive or not h.descriptive:
                out[h.op] = out.get(h.op, 0) + h.weight
        return out

    def first_seen(self, *, suppressed: bool = False) -> dict[Operation, int]:
        """Offset where each operation first appears."""
        out: dict[Operation, int] = {}
        for h in self.suppressed if suppressed else self.kept:
            out[h.op] = min(out.get(h.op, h.start), h.start)
        return out


def _negated(text: str, start: int) -> bool:
    """True when the words just before ``start`` negate the phrase ("don't want a …")."""
    window = text[max(0, start - 30) : start]
    window = re.split(r"[,;:.!?]", window)[-1]
    return bool(_NEGATION_BEFORE.search(window))


def _sentences(text: str) -> list[tuple[int, str]]:
    """Sentences with their offsets (splits on end punctuation followed by space, and newlines)."""
    out: list[tuple[int, str]] = []
    pos = 0
    for part in _SENTENCE_SPLIT.split(text):
        idx = text.find(part, pos)
        if part.strip():
            out.append((idx, part))
        pos = idx + len(part)
    return out


def _cancel_hits(text: str, offset: int, sentence: str, whole: str) -> list[OpHit]:
    """Resolve each "cancel…" to a subscription or an order by its nearest target noun.

    Looks after the verb first ("cancel my plan"), then, for a pronoun or nothing, back
    through the whole text ("I placed O-1 by mistake, please cancel it").
    """
    hits: list[OpHit] = []
    for m in _CANCEL.finditer(sentence):
        if _negated(sentence, m.start()):
            continue
        after = sentence[m.end() : m.end() + 40]
        op: Operation | None = None
        if not _PRONOUN_TARGET.search(after):
            s, o = _SUB_TARGET.search(after), _ORDER_TARGET.search(after)
            if s and (not o or s.start() < o.start()):
                op = "cancel_subscription"
            elif o:
                op = "cancel_order"
        if op is None:
            before = whole[: offset + m.start()]
            s_all = [x.end() for x in _SUB_TARGET.finditer(before)]
            o_all = [x.end() for x in _ORDER_TARGET.finditer(before)]
            if s_all or o_all:
                op = "cancel_subscription" if max(s_all or [-1]) > max(o_all or [-1]) else "cancel_order"
            else:
                rest = whole[offset + m.end() :]
                s, o = _SUB_TARGET.search(rest), _ORDER_TARGET.search(rest)
                if s and (not o or s.start() < o.start()):
                    op = "cancel_subscription"
                elif o:
                    op = "cancel_order"
        if op is not None:
            hits.append(OpHit(op, 2, offset + m.start(), (offset, offset + len(sentence))))
    return hits


def _suppress(op: Operation, sentence: str, procedural: bool) -> bool:
    """Whether a hit in a question sentence is a question about the topic, not a request."""
    if _REQUEST.search(sentence):
        return False
    if op in READ_ONLY_OPERATIONS and _SPECIFIC.search(sentence):
        return False
    if not procedural and _SPECIFIC_ID.search(sentence):
        return False
    return True


def _topic_words(clause: str) -> list[str]:
    """The words of ``clause`` that say what it is about (not how it is asked)."""
    return [w for w in _WORD.findall(clause.lower()) if len(w) >= 3 and w not in _FRAME_WORDS]


_PSEUDO_CLEFT = re.compile(r"^\W*what (?:i|we)(?:'m| am| are)? [^?]*\b(?:is|was)\b", _F)


def _is_knowledge_question(clause: str) -> bool:
    """Whether ``clause`` asks how the shop works: a second request next to any action.

    A how-to or policy question naming a topic ("how long does a refund take?", "do you
    ship to Canada?"), or any other question naming at least two topic words ("is a
    toaster covered by the warranty?"). Questions that are requests ("can you check my
    payments?") or only about the request itself ("how long will it take?", "is it
    lost?") are not.
    """
    if _REQUEST.search(clause) or _RHETORICAL.search(clause):
        return False
    if _PSEUDO_CLEFT.match(clause) and not clause.rstrip().endswith("?"):
        return False  # "What I can't do is get past the two-step login": a statement
    topics = _topic_words(clause)
    if _PROCEDURAL.search(clause) or _POLICY_QUESTION.search(clause):
        return len(topics) >= 1
    asked = bool(_INFO_START.search(clause) or _INFO_PHRASE.search(clause)) or clause.rstrip().endswith("?")
    return asked and len(topics) >= 2


@lru_cache(maxsize=512)
def analyze(text: str) -> Analysis:
    """Find every operation the text asks for, and whether it is a question instead.

    The text is normalised first (shorthand, typos: :func:`gateway.normalize.normalize`),
    so offsets in the result are offsets into ``normalize(text)``. The result is frozen and
    cached per text: triage, extraction and order lookup each read the same ticket. What the customer asks
    is read from the message above any quoted or forwarded section; the whole message is
    read only when that part asks for nothing.
    """
    norm = normalize(text)
    part = current_part(norm)
    result = _analyze(part, norm)
    if part != norm and not result.kept and not result.knowledge:
        result = _analyze(norm)
    return result


def _clause_hits(text: str, offset: int, clause: str, span: tuple[int, int], item_problem: bool = False) -> list[OpHit]:
    """Every operation phrase in one clause (negated phrases left out, attempts made descriptive)."""
    hits: list[OpHit] = []
    seen: set[str] = set()
    for op, rx, weight, descriptive in _COMPILED:
        for m in rx.finditer(clause):
            if rx.pattern in seen or _negated(clause, m.start()):
                continue
            seen.add(rx.pattern)
            done = _DONE.match(m.group(0)) and _DONE_BEFORE.search(clause[max(0, m.start() - 20) : m.start()])
            tried = bool(_TRIED_BEFORE.search(clause[max(0, m.start() - 30) : m.start()]) or done)
            hits.append(OpHit(op, weight, offset + m.start(), span, descriptive or tried))
    hits.extend(_cancel_hits(text, offset, clause, text))
    if not any(h.op == "reship" for h in hits) and item_problem:
        m = _SEND_ITEM.search(clause)
        if m and not _NOT_A_PRODUCT.search(clause) and not _negated(clause, m.start()):
            hits.append(OpHit("reship", 2, offset + m.start(), span))  # "the shade is missing, send me the shade"
    for m in _REFUND_STATUS.finditer(clause):
        lo, hi = offset + m.start(), offset + m.end()
        hits = [h for h in hits if not (h.op in {"refund", "track_order"} and lo <= h.start < hi)]
        hits.append(OpHit("billing_question", 2, lo, span))
    return hits


_SEND_ITEM = re.compile(
    r"\b(?:send|ship|mail|post)(?: me| us)?(?: (?:the|a|an|my|that|this|one|another|them|it))\b(?! (?:back|to you|email|e-?mail)\b)", _F
)
"""A request to send something, read as a reship only in a ticket about a damaged or missing item."""

_HYPOTHETICAL = re.compile(
    r"\b(?:if|should|once) (?:i|we)\b(?! (?:\w+ed|was|were|had|did|got|went|made|paid|bought|sent|gave|tried)\b)", _F
)
"""The condition of a question about what would happen ("if I cancel, do I …?"): not a request."""

_OPENER = re.compile(r"^\W*(?:say|suppose|supposing|imagine|hypothetically|let'?s say)\b", _F)
"""A sentence opening a supposition ("Say you agree to give me my money back."): asks nothing."""


@lru_cache(maxsize=256)
def _screened(text: str) -> bool:
    """Whether the injection screen flags ``text`` or it claims authority or a policy ("my
    manager approved …", see :func:`guards.injection.claim_clauses`). Such a ticket is read as asking every
    side effect it names: the readings that turn a side effect into a question (a supposition,
    a weak hint beside a how-to question) are not applied to it, so policy rule 10 escalates it."""
    return screen(text).flagged or bool(claim_clauses(text))


def _analyze(text: str, context: str | None = None) -> Analysis:
    """Read ``text`` (the current part of a message); ``context`` is the whole message, whose
    quoted part can still say what a reply is about ("> … arrived broken" above "send a new one")."""
    kept: list[OpHit] = []
    suppressed: list[OpHit] = []
    knowledge: list[int] = []
    unplaced: list[Route] = []
    asks: list[Ask] = []
    topical = False
    question: Literal["procedural", "info", "phrase", None] = None
    rank = {None: 0, "phrase": 1, "info": 2, "procedural": 3}
    whole = context or text
    item_problem = bool(_DAMAGE.search(whole) or _MISSING.search(whole))
    not_a_product = bool(_NOT_A_PRODUCT.search(text)) and not item_problem
    topics: list[tuple[int, str]] = []  # clauses that open another topic ("also …") and ask nothing themselves
    for s_offset, sentence in _sentences(text):
        for c_offset, clause in clauses(sentence):
            offset = s_offset + c_offset
            procedural = bool(_PROCEDURAL.search(clause))
            info = bool(_INFO_START.search(clause)) or clause.rstrip().endswith("?")
            form: Literal["procedural", "info", "phrase", None] = (
                "procedural" if procedural else "info" if info else "phrase" if _INFO_PHRASE.search(clause) else None
            )
            if rank[form] > rank[question]:
                question = form
            if form is not None and _topic_words(clause):
                topical = True
            hits = _clause_hits(text, offset, clause, (offset, offset + len(clause)), item_problem)
            if not_a_product:
                hits = [h for h in hits if h.op != "reship"]  # "send a new one" of a reset link
            is_question = procedural or bool(_INFO_START.search(clause))
            hypothetical = _OPENER.match(clause) or (clause.rstrip().endswith("?") and _HYPOTHETICAL.search(clause))
            if hypothetical and (_REQUEST.search(clause) or _screened(text)):
                hypothetical = None  # an instruction in the text: a supposed side effect still counts as asked
            clause_kept = False
            clause_hits: list[OpHit] = []
            for h in hits:
                if hypothetical and h.op not in READ_ONLY_OPERATIONS:
                    suppressed.append(h)  # "if I stop my membership, do I lose access …?": what would happen
                elif is_question and _suppress(h.op, clause, procedural):
                    suppressed.append(h)
                else:
                    kept.append(h)
                    clause_hits.append(h)
                    clause_kept = True
            for ask in _clause_asks(offset, clause, clause_hits, sentence):
                asks.append(_with_antecedent(ask, topics))
            if not clause_kept and _SECOND_MARK.match(clause):
                topics.append((offset, clause))  # "also my gift card says expired??": a new topic, not yet asked
            if not clause_hits and not any(a.start >= offset for a in asks) and _foreign(clause) and (
                not _other_script(clause) or _WORD.search(sentence.replace(clause, " "))
            ):
                # unreadable to keel: it may ask anything. A sentence wholly in another script
                # after the request ("Please cancel O-1. 我不小心下错了订单。") is the customer's own
                # account of it; switching script mid-sentence ("… please，顺便帮我 …") goes on asking
                asks.append(Ask(offset, clause))
            if not clause_kept and _is_knowledge_question(clause):
                knowledge.append(offset)
            elif not hits:
                route = _unplaced_request(clause)
                if route is not None:
                    unplaced.append(route)
    words = _WORD.findall(text.lower())
    known = sum(1 for w in words if w in _COMMON_WORDS or w.rstrip("s") in _COMMON_WORDS)
    ratio = known / len(words) if words else 0.0
    return Analysis(tuple(kept), tuple(suppressed), question, ratio, len(words), tuple(knowledge), topical, tuple(unplaced),
                    tuple(asks))


# --------------------------------------------------------------------------- triage
def _confidence(score: int, has_id: bool) -> float:
    """Map match strength to a calibrated-looking confidence (2 → 0.93, 1 → 0.74)."""
    value = 0.55 + 0.19 * score + (0.02 if has_id else 0.0)
    return round(min(0.97, value), 2)


def _route_scores(scores: dict[Operation, int]) -> dict[Route, int]:
    """Best operation score per route."""
    out: dict[Route, int] = {}
    for op, score in scores.items():
        route = OPERATION_ROUTE[op]
        out[route] = max(out.get(route, 0), score)
    return out


_COMPLAINT_ROUTES: frozenset[Route] = frozenset({"orders", "billing"})
"""Where a delivery complaint can be the reason for the request next to it (a refund, a
reship); next to an access or knowledge request it is a second request."""


def _subject_asks_elsewhere(subject: str, route: Route) -> bool:
    """Whether the subject asks for a side effect of another route than the body's request
    (subject "Password reset", body "please refund O-1"): a second request."""
    if not subject.strip():
        return False
    asked = analyze(subject).scores(descriptive=False)
    return any(s >= 2 and op not in READ_ONLY_OPERATIONS and OPERATION_ROUTE[op] != route for op, s in asked.items())


_ORDER_OPERATIONS: frozenset[Operation] = frozenset({"refund", "cancel_order", "change_address", "reship", "track_order"})


def _records_acted_on(answered: list[Operation], body: str) -> list[str]:
    """The order or subscription ids the plan acts on: an order request's own orders, a
    subscription request's subscriptions, nothing for an account request."""
    if not answered:
        return []
    if answered[0] in _ORDER_OPERATIONS:
        return request_order_ids(answered[0], body) or []
    if answered[0] == "cancel_subscription":
        return find_subscription_ids(body)
    return []


def _subject_requests(subject: str, answered: Collection[Operation], records: Collection[str]) -> list[str]:
    """The asks of the subject line that the plan does not answer and that name another
    route's topic ("Please send all my invoices to our accountant" above a reship). A subject
    usually sums the body up ("Broken lamp, please help"), so only another route's words make
    its ask a second request."""
    if not subject.strip():
        return []
    routes = {OPERATION_ROUTE[op] for op in answered}
    return [a for a in unexplained_requests(analyze(subject), answered, records)
            if set(_topic_routes(a)) - routes]


def _answered_operations(subject: str, body: str, route: Route, analysis: Analysis) -> list[Operation]:
    """The operations a plan for ``route`` would carry out: the main one, then every other
    firm side-effect request of the route (as :func:`gateway.local.plan_locally` plans them)."""
    try:
        main = extract_operation(subject, body, route)
    except ValueError:
        return []
    first = analysis.first_seen()
    others = [op for op, score in analysis.scores(descriptive=False).items()
              if score >= 2 and op != main and op not in READ_ONLY_OPERATIONS and op in ROUTE_OPERATIONS[route]]
    return [main, *sorted(others, key=lambda op: first.get(op, 0))]


def triage_text(subject: str, body: str) -> TriageResult:
    """Route a ticket: one firm route, ``knowledge`` for a question, or ``unknown``.

    The subject is consulted only when the body asks for nothing, since subjects are
    often generic ("Two things", "Live chat").
    """
    analysis = analyze(body)
    if not analysis.kept and analysis.question is None and subject.strip():
        combined = analyze(f"{subject}\n{body}")
        if combined.kept:
            analysis = Analysis(combined.kept, analysis.suppressed, None, analysis.vocab_ratio, analysis.words,
                                analysis.knowledge, analysis.topical, analysis.unplaced, analysis.asks)
    scores = analysis.scores()
    route_score = _route_scores(scores)
    firm = [r for r, s in route_score.items() if s >= 2]
    if len(firm) >= 2:
        explicit = [r for r, s in _route_scores(analysis.scores(descriptive=False)).items() if s >= 2]
        complaints = set(firm) - set(explicit)
        if len(explicit) == 1 and explicit[0] in _COMPLAINT_ROUTES and complaints <= _COMPLAINT_ROUTES:
            # "never arrived, I want my money back": the complaint is that request's reason
            scores = {op: s for op, s in scores.items() if OPERATION_ROUTE[op] == explicit[0]}
            route_score = _route_scores(scores)
            firm = explicit
    first = analysis.first_seen()
    ordered_ops = sorted(scores, key=lambda op: first[op])
    has_id = bool(_SPECIFIC_ID.search(body))
    if len(firm) == 1 and (analysis.knowledge or set(analysis.unplaced) - set(firm) or _subject_asks_elsewhere(subject, firm[0])):
        # an action and a question about how the shop works, or a request of another route
        # that no phrase recognised: two requests, decided here
        intents = [op for op in ordered_ops if scores[op] >= 2] + (["question"] if analysis.knowledge else [])
        return TriageResult(route="unknown", confidence=_confidence(route_score[firm[0]], has_id),
                            reason_codes=["multiple_intents"], intents=intents)
    if len(firm) >= 2:
        intents = [op for op in ordered_ops if scores[op] >= 2]
        second = sorted(route_score[r] for r in firm)[-2]
        return TriageResult(
            route="unknown",
            confidence=_confidence(second, has_id),
            reason_codes=["multiple_intents"],
            intents=intents,
        )
    single = firm[0] if len(firm) == 1 else next(iter(route_score)) if len(route_score) == 1 else None
    if single is not None:
        answered = _answered_operations(subject, body, single, analysis)
        records = _records_acted_on(answered, body)
        unexplained = unexplained_requests(analysis, answered, records) + _subject_requests(subject, answered, records)
        side_effect = any(op not in READ_ONLY_OPERATIONS for op in answered)
        if side_effect and unexplained and not _left_to_the_screen(unexplained, subject, body):
            # a side effect, and an ask it does not answer ("… and delete my data"): fail closed
            return TriageResult(route="unknown", confidence=_confidence(route_score[single], has_id),
                                reason_codes=["multiple_intents"], intents=answered)
    if len(firm) == 1:
        route = firm[0]
        intents = [op for op in ordered_ops if OPERATION_ROUTE[op] == route]
        return TriageResult(route=route, confidence=_confidence(route_score[route], has_id), intents=intents)
    if route_score and not firm and analysis.knowledge and analysis.vocab_ratio >= 0.5 and not _screened(f"{subject}\n\n{body}"):
        # a how-to question next to a weak hint ("I'm moving to a new mail provider. Where
        # in the app do I update …?"): the question is what is asked
        return TriageResult(route="knowledge", confidence=0.85, intents=["question"])
    if len(route_score) == 1:
        route = next(iter(route_score))
        return TriageResult(route=route, confidence=_confidence(1, has_id), intents=ordered_ops)
    wordy = analysis.words >= 3 and analysis.vocab_ratio >= 0.5
    if not route_score and analysis.question and wordy and (analysis.topical or analysis.suppressed):
        subj = analyze(subject) if subject.strip() else None
        # a headline ("Refund policy") names a topic; a subject asking ("please", an order id) asks
        asked = [op for op, sc in subj.scores(descriptive=False).items() if sc >= 2 and op not in READ_ONLY_OPERATIONS
                 ] if subj is not None and (_ASK_MARK.search(subject) or _SPECIFIC_ID.search(subject)) else []
        if asked:  # subject "Refund for O-1", body a question about something else: two requests
            return TriageResult(route="unknown", confidence=0.9, reason_codes=["multiple_intents"],
                                intents=[*asked, "question"])
        base = {"procedural": 0.9, "info": 0.82, "phrase": 0.75}[analysis.question]
        bump = 0.03 if analysis.suppressed else 0.0
        return TriageResult(route="knowledge", confidence=round(base + bump, 2), intents=["question"])
    if route_score:  # several weak, conflicting hints
        confidence = 0.5
    elif wordy:
        confidence = 0.45
    else:
        confidence = round(0.1 + 0.3 * analysis.vocab_ratio, 2)
    return TriageResult(route="unknown", confidence=confidence, reason_codes=["low_confidence"], intents=[])


# --------------------------------------------------------------------------- extraction
_ORDER_ID = re.compile(r"\bO-\d+\b", _F)
_SUB_ID = re.compile(r"\bS-\d+\b", _F)
_MONEY = [
    (re.compile(r"(?:US)?\$\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?!\d)", _F), "dollars"),
    (re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?\s?(?:dollars?|usd|bucks)\b", _F), "dollars"),
    (re.compile(r"\busd\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?!\d)", _F), "dollars"),
    (re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+)\s?(?:cents?|¢)()", _F), "cents"),
]
_REFUND_WORD = re.compile(r"\brefund|\bback\b|\bcredit|\breimburs", _F)
_FULL = re.compile(
    r"\bfull refund\b|\brefund (?:it |this |that |the order |the \w+ |me |order \S+ )?(?:in full|fully|completely|entirely)\b|"
    r"\bin full\b|\bfully refund|\bmoney back\b|\breimburse me\b|"
    r"\brefund (?:the |my )?(?:rest|remainder|remaining|balance)\b|\b(?:rest|remainder) of (?:the|my|this) (?:order|money|refund|amount|purchase)\b|"
    r"\b(?:whole|entire|total|full) (?:order|amount|purchase|price)\b|\brefund (?:everything|it all|all of it)\b|"
    r"\b(?:all|everything) (?:of it )?back\b|\brefund (?:me )?(?:whatever|what)(?:'s| is) (?:left|remaining)\b|"
    r"\b(?:whatever|what)(?:'s| is) (?:left|remaining|still refundable) (?:on|of|from|for) (?:the|my|that|this) "
    r"(?:order|purchase|payment|amount|set)\b",
    _F,
)
_IMMEDIATE = re.compile(
    r"\bimmediate(?:ly)?\b|\beffective (?:today|now|immediately)\b|\bright (?:away|now)\b|\bas of today\b|"
    r"\basap\b|\bstarting (?:today|now)\b|\bstraight away\b|\bthis instant\b|"
    r"\b(?:cancel\w*|end|stop|terminat\w*|close)\s+(?:it|my \w+|the \w+|this(?: \w+)?)\s+(?:today|tonight|now)\b|(?:(?<=[.!?] )|(?<=[.!?]\n)|^)today[.!]+",
    _F,
)
_PERIOD_END = re.compile(
    r"\bend of (?:the |my |this )?(?:current )?(?:billing |subscription )?(?:period|cycle|month|term|year)\b|"
    r"\b(?:don'?t|do not|doesn'?t|does not|won'?t) want (?:it|my \w+|the \w+|this \w+) to renew\b|"
    r"\bwhen (?:it|my \w+|the \w+) (?:renews|expires|ends)\b|\bnot (?:to )?renew\b|"
    r"\bstop (?:it |my \w+ |the \w+ )?(?:from )?(?:auto-?)?renew|\bturn off (?:the )?auto-?renew|\bat renewal\b|"
    r"\bafter (?:the |this )?(?:current )?(?:billing )?(?:period|cycle|month)\b|\buntil (?:the )?(?:end|renewal)\b|"
    r"\bperiod end\b",
    _F,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ADDRESS_CUE = re.compile(
    r"\baddress\b|\b(?:ship|send|deliver|redirect|reroute|re-route|mail)\w*\b|\bmoving\b", _F
)
_TO = re.compile(r"\bto:?\s+|\baddress\s*(?:is|=|:)\s*", _F)
_IT_IS = re.compile(r"\b(?:it'?s|it is|that'?s|which is)\s+(?=\d)", _F)
"""A new address given as its own sentence ("… to the new place? It's 27B Lantern Street"),
read only when no "to …" names one."""
_ADDRESS_START = re.compile(r"^(?:\d|flat\b|apt\b|apartment\b|unit\b|suite\b|p\.?\s?o\.?\s?box\b)", _F)
_NOT_ADDRESS_START = re.compile(
    r"^(?:change|update|be|have|ship|send|get|my new|the new|a new|me\b|you\b|us\b)", _F
)
_ABBREV = frozenset({"st", "ave", "apt", "rd", "dr", "blvd", "ln", "no", "ct", "mt", "ft", "hwy", "pkwy", "sq", "n", "s", "e", "w"})
_TRAILING = re.compile(
    r"(?:[\s,;:.!?]+|\binstead\b|\bplease\b|\bthanks?(?: you)?\b|\bthank you\b|\bif possible\b)+$", _F
)
_DAMAGE = re.compile(r"\b(?:damag\w*|broke\w*|crack\w*|shatter\w*|dent\w*|smash\w*|torn|ripped|defect\w*|faulty)\b", _F)
_MISSING = re.compile(r"\b(?:missing|empty|never (?:arrived|came|got)|not in the box|lost in (?:the )?(?:mail|post|transit))\b", _F)


def find_order_ids(text: str) -> list[str]:
    """Order ids (``O-123``) in order of appearance, normalised to upper case, no repeats."""
    return list(dict.fromkeys(m.group(0).upper() for m in _ORDER_ID.finditer(text)))


def find_subscription_ids(text: str) -> list[str]:
    """Subscription ids (``S-123``) in order of appearance, upper case, no repeats."""
    return list(dict.fromkeys(m.group(0).upper() for m in _SUB_ID.finditer(text)))


def _to_cents(whole: str, frac: str | None, unit: str) -> int:
    number = int(whole.replace(",", ""))
    if unit == "cents":
        return number
    frac = (frac or "").ljust(2, "0")[:2]
    return number * 100 + int(frac or 0)


def _money(text: str) -> list[tuple[int, int, int]]:
    """Every stated amount: ``(start, end, cents)``, overlapping forms counted once."""
    found: list[tuple[int, int, int]] = []
    taken: list[tuple[int, int]] = []
    for rx, unit in _MONEY:
        for m in rx.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            taken.append((m.start(), m.end()))
            found.append((m.start(), m.end(), _to_cents(m.group(1), m.group(2), unit)))
    return found


def _in_claim(start: int, end: int, claims: tuple[tuple[int, int], ...]) -> bool:
    return any(start < b and a < end for a, b in claims)


def claimed_amounts(text: str) -> frozenset[int]:
    """Amounts that ``text`` states only inside an authority, policy or system claim
    ("the limit was raised to $500", "approved up to $500"): never a refund amount."""
    claims = claim_clauses(text)
    if not claims:
        return frozenset()
    found = _money(text)
    inside = {c for s, e, c in found if _in_claim(s, e, claims)}
    outside = {c for s, e, c in found if not _in_claim(s, e, claims)}
    return frozenset(inside - outside)


_HISTORY = re.compile(
    r"\b(?:already|previously|earlier|last time)\b[^.?!\n]*\b(?:refunded|gave|given|got|received|credited|paid|sent)\b|"
    r"\b(?:you|they|support|your team|you guys) (?:already |previously )?(?:refunded|credited|reimbursed)\b|"
    r"\b(?:you|they|support|your team|you guys) (?:already |previously )?(?:gave|sent|paid) (?:me )?back\b",
    _F,
)
"""A sentence telling what was already refunded ("You already gave me back $30"): its amount is history."""


def _history_clauses(text: str) -> tuple[tuple[int, int], ...]:
    """Spans of sentences that only tell what was refunded before (no request in them)."""
    return tuple((o, o + len(s)) for o, s in _sentences(text) if _HISTORY.search(s) and not _REQUEST.search(s))


def find_amount_cents(text: str) -> int | None:
    """The stated amount in cents ("$20", "$75.50", "20 dollars", "2000 cents").

    With several amounts, the one nearest a refund word wins ("I paid $120, refund $40"),
    ties going to the later one. An amount inside an authority or policy claim ("the limit
    was raised to $500 by management", see :func:`guards.injection.claim_clauses`) is the
    claim's, not the customer's request, and is never taken.
    """
    claims = claim_clauses(text) + _history_clauses(text)
    found = [f for f in _money(text) if not _in_claim(f[0], f[1], claims)]
    if not found:
        return None
    if len(found) == 1:
        return found[0][2]
    cues = [m.start() for m in _REFUND_WORD.finditer(text) if not _in_claim(m.start(), m.end(), claims)]
    if not cues:
        return sorted(found)[-1][2]

    def distance(item: tuple[int, int, int]) -> tuple[int, int]:
        s, e, _ = item
        return (min(min(abs(c - s), abs(c - e)) for c in cues), -s)

    return min(found, key=distance)[2]


def is_full_refund(text: str) -> bool:
    """True when the customer asks for everything still refundable."""
    return any(not _negated(text, m.start()) for m in _FULL.finditer(text))


_TIMING_TOPIC = re.compile(r"\b(?:cancel\w*|terminat\w*|effective|renew\w*|end|stop)\b|" + _SUB_TARGET.pattern, _F)


def _timing_sentence(text: str, at: int) -> bool:
    """Whether the sentence around ``at`` speaks of the cancellation or asks something: a
    cue in a remark ("it's too expensive for me right now") says nothing of when to cancel."""
    lo = max((m.end() for m in _SENTENCE_SPLIT.finditer(text, 0, at)), default=0)
    nxt = _SENTENCE_SPLIT.search(text, at)
    sentence = text[lo : nxt.start() if nxt else len(text)]
    return bool(_TIMING_TOPIC.search(sentence) or _is_ask(sentence))


def find_timing(text: str) -> Literal["period_end", "immediate"]:
    """When a subscription cancel takes effect; ``period_end`` unless clearly immediate.

    A negated cue does not count ("effective today, not at the end of the month"), nor one in
    a sentence that neither speaks of the cancellation nor asks anything. With both, the
    later one wins, as customers correct themselves as they write.
    """
    cues: list[tuple[int, Literal["period_end", "immediate"]]] = []
    for rx, kind in ((_IMMEDIATE, "immediate"), (_PERIOD_END, "period_end")):
        for m in rx.finditer(text):
            if not _timing_sentence(text, m.start()):
                continue
            own_negation = kind == "period_end" and re.match(r"(?:don|do not|doesn|does not|won|not)", m.group(0), _F)
            if own_negation or not _negated(text, m.start()):
                cues.append((m.start(), kind))  # type: ignore[arg-type]
    if not cues:
        return "period_end"
    return sorted(cues)[-1][1]


def find_new_email(text: str) -> str | None:
    """The requested new email: the one after "to", else the last one written."""
    emails = list(_EMAIL.finditer(text))
    if not emails:
        return None
    for m in emails:
        if re.search(r"\bto:?\s*$", text[max(0, m.start() - 6) : m.start()], _F):
            return m.group(0)
    return emails[-1].group(0)


def _cut_sentence(rest: str) -> str:
    """The address part of ``rest``: up to a newline, ?/!, or a full stop ending a sentence."""
    end = len(rest)
    for m in re.finditer(r"[\n?!]|\.(?=\s+[A-Z])|\.\s*$", rest):
        if m.group(0) == ".":
            prev = re.findall(r"(\w+)$", rest[: m.start()])
            if prev and prev[0].lower() in _ABBREV and m.end() < len(rest.rstrip()):
                continue
        end = m.start()
        break
    return rest[:end]


def find_new_address(text: str) -> str | None:
    """The new shipping address: the text after "to" that follows an address cue.

    Prefers a "to" followed by something that looks like a street ("48 Harbour Road",
    "Apt 3 …"); trims a trailing "instead", "please", "?" or ".".
    """
    cue = _ADDRESS_CUE.search(text)
    if cue is None:
        return None
    candidates = [m for m in _TO.finditer(text) if m.start() >= cue.start()]
    chosen = next((m for m in candidates if _ADDRESS_START.search(text[m.end() :])), None)
    if chosen is None:
        chosen = next((m for m in _IT_IS.finditer(text) if m.start() >= cue.start()), None)
    if chosen is None:
        rest_ok = [m for m in candidates if not _NOT_ADDRESS_START.search(text[m.end() :])]
        chosen = rest_ok[-1] if rest_ok else None
    if chosen is None:
        return None
    address = _cut_sentence(text[chosen.end() :])
    address = _TRAILING.sub("", address.strip()).strip()
    return address or None


def reship_reason(text: str) -> str:
    """``missing`` or ``damaged``: why an item is reshipped (damaged unless said missing)."""
    if _MISSING.search(text) and not _DAMAGE.search(text):
        return "missing"
    return "damaged"


def extract_operation(subject: str, body: str, route: Route) -> Operation:
    """The main operation of ``route`` the ticket asks for.

    The first firmly asked (score ≥ 2) side-effect operation wins ("it never arrived,
    please resend it" is a reship), then the first firm read-only one, else the
    highest-scoring one; a question's hits are used only when the route has no request. Raises ``ValueError`` when the route has nothing to do
    with the text (and is not one with a harmless default).
    """
    if route == "knowledge":
        return "question"
    ops = ROUTE_OPERATIONS[route]
    for text in (body, f"{subject}\n{body}"):
        analysis = analyze(text)
        for suppressed in (False, True):
            scores = {op: s for op, s in analysis.scores(suppressed=suppressed).items() if op in ops}
            if scores:
                first = analysis.first_seen(suppressed=suppressed)
                asked = analysis.scores(suppressed=suppressed, descriptive=False)
                firm = sorted(
                    (op for op in scores if scores[op] >= 2),
                    key=lambda op: (op in READ_ONLY_OPERATIONS, asked.get(op, 0) < 2, first[op]),
                )
                if firm:
                    return firm[0]
                return max(scores, key=lambda op: (scores[op], -first[op]))
    defaults: dict[Route, Operation] = {"billing": "billing_question", "orders": "track_order"}
    if route in defaults:
        return defaults[route]
    raise ValueError(f"no operation of route {route!r} found in the ticket")


def extract_text(subject: str, body: str, route: Route, operation: Operation | None = None) -> Extraction:
    """Typed facts for one operation of ``route`` (the main one unless ``operation`` is given)."""
    op = operation or extract_operation(subject, body, route)
    orders = _order_ids_for(op, body) or find_order_ids(subject)
    subs = find_subscription_ids(body) or find_subscription_ids(subject)
    fields: dict[str, object] = {"operation": op}
    if op in {"refund", "track_order", "cancel_order", "change_address", "reship", "billing_question"}:
        fields["order_id"] = orders[0] if orders else None
    if op == "cancel_subscription":
        fields["subscription_id"] = subs[0] if subs else None
        fields["timing"] = find_timing(normalize(body))
    if op == "refund":
        amount = find_amount_cents(body)
        if amount is None:
            amount = find_amount_cents(subject)
        fields["amount_cents"] = amount
        fields["full_refund"] = amount is None and (is_full_refund(normalize(body)) or is_full_refund(normalize(subject)))
    if op == "change_email":
        fields["new_email"] = find_new_email(body)
    if op == "change_address":
        fields["new_address"] = find_new_address(body) or find_new_address(normalize(body))
    if op == "question":
        fields["query"] = _query(subject, body)
    return Extraction.model_validate(fields)


_ID_LIST = re.compile(r"\bO-\d+(?:\s*(?:,\s*and|,|and|&|\+|plus)\s*(?:(?:the )?(?:order|#)\s*)?\bO-\d+\b)+", _F)


_CHOICE = re.compile(r"\b(?:whichever|either|one of (?:them|these|those|the two|my orders))\b", _F)
"""Words leaving the choice between orders open: which one is meant is not certain."""


def request_order_ids(op: Operation, body: str) -> list[str] | None:
    """The orders one request of ``op`` is about, or None when that cannot be told.

    Read from the request's own words (after its phrase up to the next request, else the
    last id before it). Several ids written as a list ("cancel O-1 and O-2") are all the
    request's; several ids any other way ("refund O-1, it came with O-2") are ambiguous:
    None, so nothing is guessed. An empty list: the request names no order.
    """
    text = normalize(body)
    analysis = analyze(body)
    hits = sorted((*analysis.kept, *analysis.suppressed), key=lambda h: h.start)
    for hit in (h for h in hits if h.op == op):
        lo, hi = hit.sentence
        nxt = next((h.start for h in hits if h.start > hit.start and h.op != op and h.sentence == hit.sentence), hi)
        window = text[hit.start : nxt]
        if _CHOICE.search(text[lo:hi]):
            return None  # "O-1 and O-2, whichever hasn't shipped": the customer leaves the choice open
        after = find_order_ids(window)
        if len(after) > 1:
            listed = _ID_LIST.search(window)
            if listed and set(find_order_ids(listed.group(0))) == set(after):
                return after
            return None
        if after:
            return after
        before = find_order_ids(text[lo : hit.start])
        if before:
            return before[-1:]
    ids = find_order_ids(body)
    return ids if len(ids) <= 1 else None


def _order_ids_for(op: Operation, body: str) -> list[str]:
    """Order ids, the one the operation is about first.

    With several orders in one ticket ("cancel O-1 and change the address of O-2"), the
    id in the operation's own sentence wins: after the phrase first, then before it.
    """
    ids = find_order_ids(body)
    if len(ids) <= 1:
        return ids
    text = normalize(body)  # the analysis' offsets are into the normalised text
    analysis = analyze(body)
    hits = sorted((*analysis.kept, *analysis.suppressed), key=lambda h: h.start)
    for hit in (h for h in hits if h.op == op):
        lo, hi = hit.sentence
        nxt = next((h.start for h in hits if h.start > hit.start and h.op != op and h.sentence == hit.sentence), hi)
        after = find_order_ids(text[hit.start : nxt])
        before = find_order_ids(text[lo : hit.start])
        pick = after[:1] or before[-1:]
        if pick:
            return pick + [i for i in ids if i != pick[0]]
    return ids


def _query(subject: str, body: str) -> str:
    """Search query for a question: the body, whitespace collapsed, bounded in length."""
    text = " ".join(body.split()) or " ".join(subject.split())
    return text[:500]
