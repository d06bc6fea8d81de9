"""Give each ConvSent edit locality probes: the opinion question of the next two records'
entities (in file order, wrapping), answered by those records' own target sentences.

    python reports/convsent-t1/add_locality.py streams/real/convsent-test.jsonl \
        streams/real/convsent-test-loc.jsonl

For the chunked protocol at T = 1 only: there every other entity is unedited in an edit's
chunk, so its question measures what the edit did to unrelated opinions (agreement with the
unedited model, as every locality probe). In a whole-stream run those entities are edited too.
"""

import json
import sys

from lifelong.importers import CONVSENT_PROMPT


def main(src: str, dst: str, k: int = 2) -> None:
    edits = [json.loads(line) for line in open(src, encoding="utf-8") if line.strip()]
    with open(dst, "w", encoding="utf-8") as out:
        for i, e in enumerate(edits):
            others = [edits[(i + j) % len(edits)] for j in range(1, k + 1)]
            e["locality"] = [{"prompt": CONVSENT_PROMPT.format(o["subject"]), "answer": o["target"]}
                             for o in others]
            out.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
