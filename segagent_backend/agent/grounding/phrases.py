"""The noun phrase of a referring expression: what SAM 3's text encoder is given.

SAM 3 grounds short noun phrases ("red car"), not referring expressions ("the red car on the left of the
bus"): it returns every instance of the phrase, and choosing among them is the policy's job (it sees the
whole expression). The rule here is deliberately small and predictable: lower-case, drop the leading
determiners, conjunctions and positional words, and cut at the first word that starts a relation (a
preposition, a relative pronoun, a participle such as "wearing"). The last four words are kept: an English
noun phrase ends with its noun.
"""
from __future__ import annotations

import re

__all__ = ["noun_phrase"]

MAX_WORDS = 4
# words that add nothing for SAM 3: determiners, conjunctions inside a phrase ("brown and white dog"), intensifiers
FILLERS = frozenset(
    "a an the this that these those his her their its my our your some any one two three and or very".split())
# words that locate an instance among others: SAM 3 finds them all, the policy picks one
POSITIONAL = frozenset(
    "left right leftmost rightmost middle center centre top bottom front back first second third last "
    "closest nearest farthest furthest far near upper lower".split())
# words that start a relation to something else: the head noun phrase ends before them
RELATION = frozenset(
    "on in at with without near by behind beside besides next under over above below from of to for "
    "between among against along across inside outside into onto toward towards around "
    "that who which whose where while but "
    "is are was were being "
    "wearing holding sitting standing walking riding looking carrying eating playing lying laying running "
    "facing using covered".split())
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def noun_phrase(expression: str) -> str:
    """``"the man on the left in a red shirt"`` -> ``"man"``; ``"Red car"`` -> ``"red car"``; ``""`` -> ``""``.

    Relation and positional words before the first content word are skipped (``"left of the bus"`` ->
    ``"bus"``); a phrase is empty only when the expression has no other words.
    """
    words = _WORD.findall(expression.lower())
    head: list[str] = []
    for word in (w for w in words if w not in FILLERS):
        if word in RELATION and head:
            break
        if word not in POSITIONAL and word not in RELATION:
            head.append(word)
    return " ".join(head[-MAX_WORDS:])
