"""Candidate concepts from the Wikipedia articles of regions, through the wikipedia-api client.

Each region's article is fetched (lead plus sections on geography, climate, vegetation,
architecture, transport, culture, agriculture ...) and mined with a deterministic heuristic: a
visual cue noun from the keyword table plus up to two modifiers before it ("terraced rice
paddies" -> "terraced rice paddy"), kept with the sentence it came from and the article URL.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import wikipediaapi

from ...errors import GeoconceptError
from ..regions import Region
from .cache import ResponseCache
from .http import CachingTransport, RetryPolicy
from .normalize import KEYWORDS, Candidate, singularize

USER_AGENT = "geoconcept/0.1 (https://example.invalid)"
SOURCE = "wikipedia"

# A section is mined when its heading contains one of these stems.
SECTION_TOPICS = (
    "geograph",
    "topograph",
    "climate",
    "flora",
    "fauna",
    "vegetation",
    "wildlife",
    "biodiversity",
    "ecolog",
    "environment",
    "landscape",
    "hydrolog",
    "architect",
    "transport",
    "infrastructure",
    "culture",
    "agricultur",
    "farming",
    "religion",
    "urban",
    "settlement",
)

_STOPWORDS = frozenset(
    """
    a an the and or but nor not no of in on at to from by with without for as into onto over
    under between among across around along about within per than then via is are was were be
    been being has have had do does did can could may might must shall should will would this
    that these those which who whom whose where when while there here it its their his her our
    your my they them he she we you i also both each every all any only very much many more
    most other others several some such various numerous few one two three four five six seven
    eight nine ten hundred hundreds thousand thousands million millions large larger largest
    small smaller smallest major main great greater greatest big bigger biggest new first second
    third last own same different whole entire total important famous notable known called
    named including include includes included especially mainly mostly partly well like
    world region regions area areas part parts percent number type types kind kinds form forms
    country countries state states national international local public private except near
    populous capital autonomous adjacent surrounding remote diverse similar dominant moderate
    extensive absolute certain particular specific general common typical nearby distant
    north south east west northern southern eastern western central northeast northwest
    southeast southwest upper lower inner outer
    """.split()
)
# Words ending in "est" that are not superlatives ("largest", "second-largest" are).
_NOT_SUPERLATIVE = frozenset({"forest", "harvest", "crest"})
# A capitalised modifier is kept only when it looks like an adjective ("Buddhist", "Gothic",
# "Cyrillic", "Mediterranean"), not a name ("Sahara").
_CAPITAL_ADJECTIVE = re.compile(r"(?:ist|ic|ian|ean|ese|ish|an|ine)$")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_SPACE = re.compile(r"\s+")
MAX_MODIFIERS = 2
MAX_EVIDENCE = 300


@dataclass(frozen=True)
class Article:
    """A fetched region article: its URL and the (section title, text) blocks worth mining."""

    region: Region
    title: str
    url: str
    blocks: tuple[tuple[str, str], ...]


def open_client(
    cache: ResponseCache,
    policy: RetryPolicy,
    *,
    api_url: str | None = None,
    timeout: float = 30.0,
) -> wikipediaapi.Wikipedia:
    """An English wikipedia-api client whose HTTP goes through the cache and our retries.

    wikipedia-api 0.16 forwards extra keyword arguments to ``httpx.Client``, so the cache sits in
    a custom ``transport``; ``api_url`` (e.g. a mirror's ``.../w/api.php``) replaces the default
    https://en.wikipedia.org/w/api.php. Its own retries are off: ours apply instead.
    """
    transport = CachingTransport(
        SOURCE,
        cache,
        policy,
        base_url=api_url,
        describe=lambda url: (
            f"wikipedia {url.params.get('prop', 'request')} of article "
            f"{url.params.get('titles', '')!r} ({url.copy_with(query=None)})"
        ),
    )
    return wikipediaapi.Wikipedia(
        user_agent=USER_AGENT,
        language="en",
        extract_format=wikipediaapi.ExtractFormat.WIKI,
        max_retries=0,
        timeout=timeout,
        transport=transport,
    )


def _is_relevant(title: str) -> bool:
    lowered = title.lower()
    return any(topic in lowered for topic in SECTION_TOPICS)


def _blocks(
    sections: list[wikipediaapi.WikipediaPageSection], inherited: bool
) -> list[tuple[str, str]]:
    """Texts of relevant sections, depth first; a relevant section makes its subsections so."""
    out: list[tuple[str, str]] = []
    for section in sections:
        relevant = inherited or _is_relevant(section.title)
        if relevant and section.text.strip():
            out.append((section.title, section.text))
        out.extend(_blocks(section.sections, relevant))
    return out


def fetch_article(wiki: wikipediaapi.Wikipedia, region: Region) -> Article | None:
    """The region's article (lead and relevant sections), or None if Wikipedia has no such page."""
    page = wiki.page(region.article)
    try:
        if not page.exists():
            return None
        url = page.fullurl or ""
        blocks = [("", page.summary), *_blocks(page.sections, inherited=False)]
    except (KeyError, TypeError, wikipediaapi.WikipediaException) as err:
        raise GeoconceptError(
            f"wikipedia: unexpected reply for article {region.article!r} ({type(err).__name__})"
        ) from err
    return Article(region=region, title=page.title, url=url, blocks=tuple(blocks))


def sentences(text: str) -> list[str]:
    """Split text into sentences (per paragraph, on . ! ? followed by a capital or digit)."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        paragraph = _SPACE.sub(" ", paragraph).strip()
        if paragraph:
            out.extend(s for s in _SENTENCE_BREAK.split(paragraph) if s)
    return out


def _modifier_ok(word: str, sentence_start: bool) -> bool:
    """Whether a word may modify a cue noun (not a function word, adverb, superlative, name)."""
    lowered = word.lower()
    if lowered in _STOPWORDS or lowered.endswith("ly") or len(lowered) < 3 or "'" in word:
        return False
    if lowered.endswith("est") and lowered not in _NOT_SUPERLATIVE:
        return False
    if word[0].isupper() and not sentence_start:
        return bool(_CAPITAL_ADJECTIVE.search(lowered))
    return True


def _is_cue(tokens: list[re.Match[str]], i: int, sentence: str) -> bool:
    """Whether token ``i`` exists, directly follows token ``i - 1`` and is a lower-case cue."""
    if i >= len(tokens) or sentence[tokens[i - 1].end() : tokens[i].start()].strip():
        return False
    word = tokens[i].group()
    return not word[0].isupper() and singularize(word.lower()) in KEYWORDS


def cue_phrases(sentence: str) -> list[str]:
    """Noun phrases of a sentence whose head is a visual cue keyword, normalised, in order."""
    tokens = list(_WORD.finditer(sentence))
    phrases = []
    for i, token in enumerate(tokens):
        word = token.group()
        head = singularize(word.lower())
        if (
            head not in KEYWORDS
            or (word[0].isupper() and i > 0)
            or _is_cue(tokens, i + 1, sentence)
        ):
            continue  # not a cue, a name, or a modifier of the next cue ("rice" in "rice paddy")
        words = [head]
        j = i - 1
        while j >= 0 and len(words) <= MAX_MODIFIERS:
            gap = sentence[tokens[j].end() : tokens[j + 1].start()]
            if gap.strip() or not _modifier_ok(tokens[j].group(), j == 0):
                break
            words.insert(0, tokens[j].group().lower())
            j -= 1
        phrases.append(" ".join(words))
    return phrases


def extract_candidates(article: Article) -> list[Candidate]:
    """Candidates of one article: each phrase once per region key, scored by relative mentions.

    The score is the phrase's mention count over the most-mentioned phrase's, in (0, 1]; the
    evidence is the first sentence mentioning it.
    """
    counts: Counter[str] = Counter()
    evidence: dict[str, str] = {}
    for _, text in article.blocks:
        for sentence in sentences(text):
            for phrase in cue_phrases(sentence):
                counts[phrase] += 1
                evidence.setdefault(phrase, sentence[:MAX_EVIDENCE])
    if not counts:
        return []
    top = max(counts.values())
    out = []
    for phrase in sorted(counts):
        category, subcategory = KEYWORDS[phrase.rsplit(" ", 1)[-1]]
        for key in article.region.keys:
            out.append(
                Candidate(
                    concept=phrase,
                    category=category,
                    subcategory=subcategory,
                    source=SOURCE,
                    region=key,
                    evidence=evidence[phrase],
                    url=article.url,
                    score=counts[phrase] / top,
                )
            )
    return out
