"""Word-boundary lexicon that says whether a text describes a child (anyone under 16).

This is the first, exact line of the legal policy: it labels training captions for the learned probes and blocks
queries outright. Choices (each is a deliberate trade-off; the law favours recall):

* Words are matched on word boundaries, case-insensitively, with plural and possessive endings
  ("a girl's bike", "KIDS", "Childrens", "boys'"), so compounds that merely contain a word do not match:
  cowboy, busboy, tomboyish, playboy, kidney, kidnap, totally, boyfriend, Jackson, person.
* "girl"/"boy" count as children even though Flickr captions sometimes call young women "girls": a false block
  costs one image, a miss breaks the law.
* "babysitter"/"babysitting" DO count: the word implies a child in care in the picture.
* "baby" in fixed adult phrases (baby blue/pink, baby grand, baby carrots/back ribs/spinach/powder), young animals
  ("a baby elephant"), baby's breath, objects named after children ("a dog in a kiddie pool", "baby pool"),
  "tater tots" and names / idioms (girls' night out, Girl Scout cookies, Teenage Mutant Ninja Turtles, Kid Rock)
  do not count.
* Informal words (lad, lass, bairn, nipper, rugrat, munchkin, sprog), roles only children have (trick-or-treaters,
  ring bearer, t-ball) and being carried or held by a parent ("on his dad's shoulders", "holding her mother's
  hand", "in mommy's arms") count.
* "minor" is ambiguous ("minor injury", "minor league"): only "minors", "underage" and "a/the minor" used as a
  noun (followed by punctuation, end of text, or a verb/preposition) count.
* Ages: "a 5 year old", "ten-year-old", "5-years-old", "18-month-old", "aged 12", "age 7", "7yo", "under-12s"
  count when the age is below 16 (months < 192, weeks < 832, any days); "twenty-five-year-old", "40 year old",
  "16-year-old" do not.
* Not in the lexicon (left to the learned text probe because they are often adults): student, pupil, sibling,
  brother, sister, nephew, niece, high school, freshman, young man/woman.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["mentions_child", "is_child_text", "child_terms", "CHILD_AGE_LIMIT"]

#: Anyone younger than this (in years) is a child under the legal rule.
CHILD_AGE_LIMIT = 16

# Stems matched with an optional plural / possessive ending ("s", "'s", "s'", "es").
_END = r"(?:'s|’s|s'|s’|s|'|’)?"
_STEMS = [
    r"child", r"children", r"childrens?", r"grandchild(?:ren)?", r"schoolchild(?:ren)?", r"stepchild(?:ren)?",
    r"kid", r"kiddo", r"kiddie", r"kiddy", r"kiddies", r"grandkid", r"schoolkid",
    r"bab(?:y|ies)", r"infant", r"new[- ]?born", r"neonate", r"toddler", r"tot", r"tyke", r"little[- ]ones?",
    r"boy", r"girl", r"schoolboy", r"schoolgirl", r"school[- ](?:boy|girl|kid)",
    r"teen", r"teenager", r"teenage[d]?", r"teen-aged", r"pre-?teen", r"tween", r"adolescent",
    r"youngster", r"youth", r"juvenile", r"minors", r"underage", r"under-age",
    r"son", r"daughter", r"grandson", r"granddaughter", r"stepson", r"stepdaughter",
    r"pre-?schooler", r"pre-?school", r"kindergart(?:e)?n(?:er)?", r"nursery[- ]school", r"day[- ]?care",
    r"(?:elementary|grade|middle)[- ]school(?:er)?", r"junior[- ]high",
    r"little[- ]league(?:r)?", r"pee[- ]?wee", r"cub[- ]scout",
    r"babysitter", r"babysitting", r"babysit", r"baby-sitter", r"baby-sitting",
    # informal / regional words for a child, and roles only children have
    r"lass(?:es)?", r"laddie", r"bairn", r"nipper", r"rugrat", r"sprog", r"munchkin", r"whippersnapper",
    r"trick[- ]or[- ]treaters?", r"ring[- ]bearer", r"t-?ball", r"tee[- ]ball",
]
_ORDINALS = (r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|1st|2nd|3rd|4th|5th|6th|7th|8th"
             r"|9th|10th")
_WORDS = re.compile(
    r"(?<!\w)(?:" + "|".join(_STEMS) + r")" + _END + r"(?!\w)"
    # "first grader(s)", "3rd-grade class"
    + r"|(?<![\w-])(?:" + _ORDINALS + r")[- ]grade(?:rs?|rs'?)?(?![\w])"
    # "a minor" used as a noun: followed by punctuation / end / a verb or preposition
    + r"|\b(?:a|the|one|any)\s+minor(?=\s*(?:$|[.,;:!?)])|\s+(?:is|was|who|in|on|at|with|and|or|playing|sitting|"
    r"standing|walking|running|holding|wearing|being|smiling|looking)\b)"
    # carried by / held by a parent: "on his dad's shoulders", "holding her mother's hand", "in mommy's arms"
    + r"|\b(?:on|in|holding|holds|holding\s+onto|clutching|grabbing)\s+(?:his|her|their|my|a|the)?\s*"
    r"(?:mom|mommy|mum|mummy|mother|dad|daddy|father|papa|mama|parent|grandpa|grandma|grandmother|grandfather)"
    r"(?:'s|’s|s'|s’)\s+(?:hands?|shoulders?|lap|back|arms|hip|knee)\b",
    re.IGNORECASE,
)
_ANIMALS = (r"animals?|elephants?|giraffes?|birds?|chicks?|ducks?|ducklings?|goats?|seals?|turtles?|tortoises?|"
            r"monkeys?|gorillas?|chimps?|chimpanzees?|deer|lions?|tigers?|bears?|pandas?|rhinos?|hippos?|zebras?|"
            r"horses?|ponies|pony|cows?|pigs?|piglets?|lambs?|sheep|dogs?|pupp(?:y|ies)|cats?|kittens?|rabbits?|"
            r"bunn(?:y|ies)|owls?|penguins?|dolphins?|whales?|kangaroos?|koalas?|squirrels?|foxes|fox|wolf|wolves|"
            r"otters?|sloths?|camels?|llamas?|alpacas?|bats?|snakes?|crocodiles?|alligators?|sharks?|robins?|swans?|"
            r"geese|goose|eagles?|hawks?|falcons?|herons?|gulls?|seagulls?|pelicans?|flamingos?|ravens?|crows?|orangutans?|leopards?|cheetahs?|meerkats?|hedgehogs?|calf|calves|foals?|cubs?")
# Fixed phrases where a lexicon word does not describe a child.
_NOT_CHILD = re.compile(
    r"\bbaby[- ](?:blue|pink|grand|carrots?|back|spinach|powder|shower[- ]curtain|boomers?|bok)\b"
    r"|\b(?:kiddie|kiddy|baby)[- ]pools?\b|\btater[- ]tots?\b|\boh[, ]+boy\b|\bkid[- ]gloves?\b"
    # young animals ("a baby elephant"), plants, and names / idioms that use a child word for adults or things
    r"|\b(?:bab(?:y|ies)|juvenile|newborn)(?:'s|’s)?[- ]"
    r"(?:(?!(?:and|or|with|in|on|at|next|near|by|the|a|an|his|her|their|its|to|from|of|for|holding|"
    r"feeding|petting|hugging|and)\b)[a-z]+[- ])?(?:" + _ANIMALS + r")\b|\bbaby(?:'s|’s)[- ]breath\b"
    r"|\bbaby[- ](?:corn|potato(?:es)?|octopus|squid|bella|kale|arugula|greens|tomato(?:es)?|onions?|zucchini|"
    r"artichokes?|bump|yoda|ruth)\b|\bkid[- ]goats?\b|\bgoat[- ]kids?\b|\bkid[- ]leather\b|\bchild(?:'s|’s)[- ]pose\b"
    r"|\b(?:adult|grown|grown[- ]up|middle[- ]aged|elderly|retired)[- ](?:step)?(?:sons?|daughters?)\b"
    r"|\b(?:sons?|daughters?)[- ]in[- ]law\b"
    r"|(?<!-)(?<!year )(?<!years )(?<!month )(?<!months )(?<!week )(?<!weeks )\bold[- ](?:boys?|girls?)(?:'|’)?\b|\bgirl[- ](?:power|boss)\b|\bbad[- ]boys?\b|\bboys[- ]in[- ]blue\b"
    r"|\bone[- ]of[- ]the[- ](?:boys|girls)\b|\b(?:girls?|boys?)(?:'|’|'s|’s)?[- ](?:weekend|trip|holiday)\b"
    r"|\b(?:girls?|boys?|lads)(?:'|’|'s|’s)?[- ]night(?:[- ]out)?\b|\bgirl[- ]scout[- ]cookies?\b"
    r"|\bteenage[- ]mutant\b|\bkid[- ]rock\b|\bthe[- ]kid[- ]in[- ](?:me|us|him|her|them|you)\b",
    re.IGNORECASE,
)

_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = r"twenty|thirty|forty|fourty|fifty|sixty|seventy|eighty|ninety|hundred"
_NUM = r"\d{1,3}(?:\.\d+)?|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_AGE = re.compile(
    # "<tens>-five-year-old" is captured whole so that "five-year-old" inside it is not read as 5.
    r"(?<![\w.,-])(?:(?P<tens>" + _TENS + r")[\s-]+(?:and[\s-]+)?)?(?P<num>" + _NUM + r")"
    r"(?:[\s-]+and[\s-]+a[\s-]+half)?[\s-]*"
    r"(?:(?P<unit>years?|yrs?|months?|mos?|weeks?|wks?|days?)[\s-]*olds?"
    r"|(?P<yo>yo|y/o|y\.o\.?))(?![a-z])"
    # "aged 12", "age 7", "ages 3", "under-12s" ("under two trees" must not count, so "under" needs a hyphen)
    r"|\b(?:(?:aged?|ages)[\s-]+|under-)(?P<num2>\d{1,2}|" + "|".join(k for k in _NUMBER_WORDS if len(k) > 2) + r")"
    r"(?:s|'s)?\b",
    re.IGNORECASE,
)
_UNIT_LIMIT = {"y": CHILD_AGE_LIMIT, "m": CHILD_AGE_LIMIT * 12, "w": CHILD_AGE_LIMIT * 52, "d": float("inf")}


def _as_number(token: str) -> float:
    token = token.lower()
    return float(_NUMBER_WORDS[token]) if token in _NUMBER_WORDS else float(token)


def _child_ages(text: str) -> list[str]:
    found = []
    for m in _AGE.finditer(text):
        if m.group("num2") is not None:
            limit = 19 if m.group(0).lower().startswith("under") else CHILD_AGE_LIMIT  # "under-18s" are minors
            if _as_number(m.group("num2")) < limit:
                found.append(m.group(0))
            continue
        if m.group("tens"):
            continue
        unit = (m.group("unit") or "y")[0].lower()
        if _as_number(m.group("num")) < _UNIT_LIMIT[unit]:
            found.append(m.group(0))
    return found


def child_terms(text: str) -> list[str]:
    """The lexicon words / age phrases in `text` that mark it as describing a child (for audit logs and tests)."""
    cleaned = _NOT_CHILD.sub(" ", text)
    return [m.group(0) for m in _WORDS.finditer(cleaned)] + _child_ages(cleaned)


def is_child_text(text: str) -> bool:
    """True when `text` mentions a child (word-boundary lexicon or an age below 16)."""
    cleaned = _NOT_CHILD.sub(" ", text)
    return _WORDS.search(cleaned) is not None or bool(_child_ages(cleaned))


def mentions_child(texts: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Vectorised `is_child_text` over a list of texts -> (n,) bool array."""
    return np.fromiter((is_child_text(t) for t in texts), dtype=bool, count=len(texts))
