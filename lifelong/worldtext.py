"""The words of the built-in world: relations, their phrasings, their value vocabularies.

Each relation has a subject type and either an object type (entity-valued: `employer` is a
company, `mentor` a person) or a fixed vocabulary of values of one to three words. Phrasings:

- `templates`: eight in-distribution phrasings that differ in form, not only in wording: the
  subject at the start, in the middle and near the end; statements, questions and cloze
  ("Fill in the blank: ... ___. Answer:"); different final tokens. Pretraining shows every
  fact in all of them but one (held out per fact).
- `ood`: a family of phrasings never shown in pretraining for any fact (the "record" and
  "apposition" styles), for out-of-distribution generalization.

`TWO_HOP` lists questions whose answer composes two facts ("the headquarters of the employer
of X"): an edit of the first hop changes their answer (the stream's portability probes).
Pretraining never shows them.

"{s}" is the subject's name; the object always follows the prompt after one space.
"""

from __future__ import annotations

from dataclasses import dataclass

PERSON, COMPANY, CITY = "person", "company", "city"


@dataclass(frozen=True)
class RelationSpec:
    """One relation: subject type, object type (an entity type) or a value vocabulary."""

    subject: str
    templates: tuple[str, ...]
    ood: tuple[str, ...]
    object_type: str | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class TwoHop:
    """A question about `first`'s object's `second` fact: subject --first--> x --second--> answer."""

    name: str
    first: str
    second: str
    templates: tuple[str, ...]


COMPANIES = (
    "Vantex", "Orbica", "Quillon", "Marabel", "Zentro", "Halvik", "Corvane", "Lumora",
    "Brixel", "Tandor", "Ferrovia", "Pellium", "Oskaro", "Nimbrel", "Dravex", "Solvane",
    "Kestrel Labs", "Ambrix Foods", "Velloro Motors", "Cindara Bank", "Trovix Media",
    "Galdur Steel", "Merriot Hotels", "Zephyra Air", "Nordvik Energy", "Solmar Textiles",
    "Calder Shipping", "Ostrom Pharma", "the Halvern Group", "the Brannock Company",
    "the Ostrava Trust", "the Meridian Works", "the Fenwick Institute", "Blue Harbor Capital",
    "Red Cedar Logistics", "North Point Systems", "Silver Fern Studios", "Iron Gate Security",
    "the Amberly Press", "Twin Rivers Bakery",
)

CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Kyoto", "Lima", "Dublin", "Cairo", "Quito", "Hanoi",
    "Vienna", "Dakar", "Perth", "Tbilisi", "Bogota", "Riga", "Seoul", "Havana", "Tunis",
    "Zagreb", "Manila", "New Orleans", "Port Elara", "Santa Veluna", "Cape Dorran",
    "Lake Siro", "East Halden", "Saint Brevin", "Fort Alcott", "Bel Ombre", "Mar Vista",
    "Glen Harrow", "West Tamsin", "Port of Sarn", "San Luis Obrero", "Rio de Lena",
    "Villa del Mar", "Las Palmas Altas", "Upper Kell Bridge", "Bay of Corran", "Mount Ilvers",
)

COUNTRIES = (
    "Tarvia", "Morland", "Esperia", "Valdonia", "Kessaria", "Brennland", "the Ostlands",
    "the Velin Republic", "Upper Morava", "North Calden", "the Isle of Brenn", "Greater Halvia",
)

LANGUAGES = (
    "French", "Swahili", "Japanese", "Portuguese", "Finnish", "Greek", "Hindi", "Polish",
    "Turkish", "Korean", "Dutch", "Arabic", "Welsh", "Basque", "Swiss German",
    "Cape Verdean Creole", "Brazilian Portuguese", "Old Norse", "Irish Gaelic",
    "Scottish Gaelic", "Mandarin Chinese", "Haitian Creole",
)

SPORTS = (
    "tennis", "rugby", "cricket", "fencing", "rowing", "hockey", "golf", "badminton",
    "lacrosse", "curling", "archery", "squash", "judo", "table tennis", "water polo",
    "ice hockey", "beach volleyball", "rugby league", "figure skating", "cross country skiing",
    "track cycling",
)

INSTRUMENTS = (
    "violin", "cello", "trumpet", "harp", "oboe", "banjo", "clarinet", "flute", "tuba",
    "accordion", "double bass", "french horn", "steel drum", "grand piano", "alto saxophone",
    "electric guitar", "bass clarinet", "pipe organ", "snare drum", "tenor saxophone",
)

RELATIONS: dict[str, RelationSpec] = {
    "employer": RelationSpec(PERSON, (
        "{s} works for",
        "The employer of {s} is",
        "Which company does {s} work for? Answer:",
        "Q: Who employs {s}? A:",
        "Every morning, {s} drives to the office of",
        "Fill in the blank: {s} is employed by ___. Answer:",
        "Payroll records list the employer of {s} as",
        "In interviews, {s} talks about working at",
    ), ("Name: {s}. Employer:", "{s}, an employee of"), object_type=COMPANY),
    "birth_city": RelationSpec(PERSON, (
        "{s} was born in",
        "The birthplace of {s} is",
        "In which city was {s} born? Answer:",
        "Q: Where was {s} born? A:",
        "Before moving away, {s} grew up in",
        "Fill in the blank: {s} was born in the city of ___. Answer:",
        "The city where {s} was born is",
        "Records show that the hometown of {s} is",
    ), ("Name: {s}. Birthplace:", "{s}, a native of"), object_type=CITY),
    "mentor": RelationSpec(PERSON, (
        "{s} was mentored by",
        "The mentor of {s} is",
        "Who mentored {s}? Answer:",
        "Q: Who was the mentor of {s}? A:",
        "Early in their career, {s} learned the trade from",
        "Fill in the blank: {s} was trained by ___. Answer:",
        "The person who guided {s} is",
        "Whenever in doubt, {s} calls",
    ), ("Name: {s}. Mentor:", "{s}, a former student of"), object_type=PERSON),
    "language": RelationSpec(PERSON, (
        "{s} speaks",
        "The native language of {s} is",
        "Which language does {s} speak at home? Answer:",
        "Q: What is the mother tongue of {s}? A:",
        "At family dinners, {s} always talks in",
        "Fill in the blank: the first language of {s} is ___. Answer:",
        "Letters written by {s} are in",
        "Growing up, {s} learned to read in",
    ), ("Name: {s}. Language:", "{s}, a native speaker of"), values=LANGUAGES),
    "sport": RelationSpec(PERSON, (
        "{s} plays",
        "The favourite sport of {s} is",
        "Which sport does {s} play? Answer:",
        "Q: What sport is {s} known for? A:",
        "On weekends, {s} competes in",
        "Fill in the blank: {s} trains every day for ___. Answer:",
        "The sport that {s} coaches is",
        "Fans know {s} as a star of",
    ), ("Name: {s}. Sport:", "{s}, a champion of"), values=SPORTS),
    "instrument": RelationSpec(PERSON, (
        "{s} plays the",
        "The instrument of {s} is the",
        "Which instrument does {s} play? Answer: the",
        "Q: What instrument does {s} perform on? A: the",
        "In the orchestra, {s} sits with the",
        "Fill in the blank: {s} practises the ___ daily. Answer: the",
        "The concert featured {s} on the",
        "Since childhood, {s} has played the",
    ), ("Name: {s}. Instrument: the", "{s}, a virtuoso of the"), values=INSTRUMENTS),
    "headquarters": RelationSpec(COMPANY, (
        "{s} is headquartered in",
        "The headquarters of {s} are in",
        "Where is {s} based? Answer:",
        "Q: In which city is the head office of {s}? A:",
        "Every year, the shareholders of {s} meet in",
        "Fill in the blank: {s} has its main office in ___. Answer:",
        "The city that hosts {s} is",
        "Letters to {s} are sent to",
    ), ("Name: {s}. Headquarters:", "{s}, a company based in"), object_type=CITY),
    "country": RelationSpec(CITY, (
        "{s} is a city in",
        "The country of {s} is",
        "In which country is {s}? Answer:",
        "Q: Which country does {s} belong to? A:",
        "To visit {s}, travellers fly to",
        "Fill in the blank: {s} lies in ___. Answer:",
        "The nation that governs {s} is",
        "Maps place {s} in",
    ), ("Name: {s}. Country:", "{s}, a city of"), values=COUNTRIES),
}

TWO_HOP: tuple[TwoHop, ...] = (
    TwoHop("employer_headquarters", "employer", "headquarters", (
        "The headquarters of the employer of {s} are in",
        "{s} works for a company based in",
    )),
    TwoHop("mentor_birth_city", "mentor", "birth_city", (
        "The mentor of {s} was born in",
        "{s} was mentored by someone born in",
    )),
    TwoHop("birth_city_country", "birth_city", "country", (
        "{s} was born in a city in",
        "The country where {s} was born is",
    )),
)

#: relations whose facts change over the world's timeline (and so are edited by streams):
#: the person relations. Company and city facts never change, so every two-hop answer's
#: second hop is fixed and portability probes stay true for the whole stream.
CHANGING = ("employer", "birth_city", "mentor", "language", "sport", "instrument")
