"""Importers: published knowledge-editing data sets -> `lifelong` edit streams.

`lifelong streams import --format F INPUT -o STREAM.jsonl` reads a JSON array (record = its
1-based index) or a JSONL file (record = its 1-based line) in one of the formats below and
writes one `edit` event per record (MQuAKE: one per distinct rewrite of a case, see
mquake.py and cases.py). The data sets have no timestamps: the importer gives the k-th edit
`start + k * spacing`, in file order or in a seeded shuffle (of records: a case's edits stay
together). Every edit keeps where it came from in `meta` (`source`, `record`, and the data
set's `case_id` where it has one), and its id is `SOURCE-RECORD` (`SOURCE-RECORD-K` for the
K-th rewrite of a case; stable under shuffling).

Formats, one module per family; each module's docstring gives its field mapping (the
stream field <- the format's field):

=====================================  ==================================================
format                                 module
=====================================  ==================================================
zsre                                   zsre.py (MEND/ROME zsRE)
knowedit                               knowedit.py (KnowEdit ZsRE / WikiData-CounterFact /
                                       WikiData-Recent / WikiBio)
counterfact, rome-counterfact          counterfact.py (EasyEdit and ROME CounterFact)
wise-temporal, wise-hallucination      wise.py (WISE Temporal and hallucination)
convsent                               convsent.py (ConvSent, blender)
mquake                                 mquake.py (MQuAKE-CF-3k, MQuAKE-CF, MQuAKE-T)
=====================================  ==================================================

`--format auto` (the default) takes the first format whose required keys the first record
has (`Format.expects` / `Format.detect`; the most specific layouts are tried first); a first
record that no format can read is refused in one line that names the file, the record's keys
and the keys each format expects, rather than read in the nearest format and every record
rejected.

The rest: common.py (reading records, problems, field coercion, timestamps, `Format`),
convert.py (options, the format registry and detection, records -> stream), facts.py (fact
ids, many-valued relations), cases.py (records of several edits: shared edits, probes with
`needs`) and cli.py (the click command).

`fact` (re-edit identity): the data set's subject+relation where it has one (ROME
CounterFact: subject|relation_id), else subject|prompt (a prompt that would make it longer
than 256 characters, such as a passage, by its SHA-1: subject|sha1:16 hex digits), else
SOURCE:case_id, else the edit's own id. Records
with the same fact are re-edits (the later one wins in replay). A relation that is many-valued
in the data being imported (one subject has records of it with different old values: the
twin cities of a city) gives each edit that has a `previous` the fact
`subject|relation|previous` instead (facts.py), so that replacing one twin city does not
count as re-editing another; the summary line (`ImportResult.many_valued`) says how many.

Text: every string is taken with surrounding whitespace removed (the stream joins prompt
and target with one space), never truncated: a string longer than the stream format's
MAX_CHARS is a problem of its record. Tolerated: extra keys, missing optional fields, a
string where a list is allowed and the other way round, answers as strings, lists or lists
of alias lists, empty optional strings (treated as absent). A locality/portability answer
with several aliases keeps them all on the probe (the stream's list form of `answer`, first
alias canonical, duplicates removed); a probe whose answer is empty is dropped with a note
(the record's edit stays). Required fields that are missing, empty or of the wrong type are
problems `FILE:RECORD: FIELD: what is wrong`; every bad record is listed in one
`StreamError`, or skipped and counted with `skip_bad`.

Nothing is dropped silently: the summary line of `lifelong streams import` counts invalid
records skipped, probes dropped (empty answers, probe fields the format does not read) and
the input keys not carried over into the stream, with the number of records that had each
(`ImportResult.left_out`: top-level keys the format does not map, such as zsRE's `cond`, and
keys of KnowEdit probe objects besides prompt and answer; for MQuAKE, the chain before the
edits, the Wikidata triples, single-hop aliases and hops through unedited facts).
"""

from __future__ import annotations

from .cli import streams_import
from .common import Format, read_records
from .convert import (
                      FORMATS,
                      ImportOptions,
                      ImportResult,
                      convert_records,
                      detect_format,
                      import_file,
                      write_events,
)
from .convsent import CONVSENT_PROMPT, CONVSENT_REPHRASES

__all__ = ["CONVSENT_PROMPT", "CONVSENT_REPHRASES", "FORMATS", "Format", "ImportOptions",
           "ImportResult", "convert_records", "detect_format", "import_file", "read_records",
           "streams_import", "write_events"]
