"""`lifelong streams import`: the click command (added to the `streams` group by lifelong/cli.py)."""

from __future__ import annotations

import click

from ..config import from_mapping
from .convert import COPIED_REPHRASE, FORMATS, ImportOptions, import_file, write_events

_IMPORT_HELP = ("Convert a knowledge-editing data set (JSON array or JSONL) into an edit stream.\n\n"
                "Formats:\n\n" + "\n\n".join(f"{f.name}: {f.summary}" for f in FORMATS.values()))


@click.command("import", help=_IMPORT_HELP)
@click.argument("input_file", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL stream to write")
@click.option("-f", "--format", "fmt", type=click.Choice(["auto", *FORMATS]), default="auto",
              show_default=True, help="input format (auto: from the first record's keys)")
@click.option("--spacing", type=float, help="seconds between consecutive edits  [default: 3600]")
@click.option("--start", help="timestamp of the first edit, ISO-8601 or seconds  [default: 2030-01-01T00:00:00Z]")
@click.option("--shuffle", is_flag=True, help="shuffle the records (seeded) instead of keeping file order")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of --shuffle")
@click.option("--skip", type=click.IntRange(min=0), help="leave out the first N edits (after "
              "shuffling, before --edits): a second, disjoint slice of the same file")
@click.option("--edits", type=click.IntRange(min=1), help="keep only the first N edits (after shuffling and --skip)")
@click.option("--skip-bad", is_flag=True, help="skip invalid records (counted and reported)")
@click.option("--sentiment", type=click.Choice(["alternate", "positive", "negative"]), default="alternate",
              show_default=True, help="convsent: target sentiment (alternate: odd records positive)")
def streams_import(input_file, output, fmt, spacing, start, shuffle, seed, skip, edits, skip_bad,
                   sentiment):
    given = {"format": fmt, "spacing": spacing, "start": start, "shuffle": shuffle, "seed": seed,
             "skip": skip, "edits": edits, "skip_bad": skip_bad, "sentiment": sentiment}
    opts = from_mapping(ImportOptions, {k: v for k, v in given.items() if v is not None},
                        "streams import")
    result = import_file(input_file, opts)
    for what, lines in (("skipped", result.skipped), ("note", result.notes)):
        for line in lines[:20]:
            click.echo(f"  {what}: {line}", err=True)
        if len(lines) > 20:
            click.echo(f"  ... and {len(lines) - 20} more", err=True)
    write_events(result.events, output)
    order = f"shuffled with seed {opts.seed}" if opts.shuffle else "file order"
    order += f", the first {opts.skip} edits left out" if opts.skip else ""
    unread = result.unread
    if unread["records"]:
        click.echo(f"  note: {unread['records']} record(s) have no locality/portability probe "
                   f"that format {result.format} reads, but {unread['probes']} under field(s) "
                   f"it does not read ({', '.join(unread['fields'])}); another --format may "
                   "read them", err=True)
    copies = sum(n.endswith(COPIED_REPHRASE) for n in result.notes)
    same = f", {copies} rephrase(s) the same as the prompt" if copies else ""
    why = f" ({len(result.notes) - copies} with an empty answer{same}, {unread['probes']} under " \
        "fields the format does not read)" if result.dropped else ""
    left = result.left_out
    keys = " (" + ", ".join(f"{k} in {_count(n, 'record')}" for k, n in left.items()) + ")" if left else ""
    shared = f", {result.shared} of them shared by several records" if result.shared else ""
    click.echo(f"{output}: {len(result.events)} edits from {result.records} records of "
               f"{input_file} (format {result.format}, {order}{shared}); "
               f"{_count(len(result.skipped), 'invalid record')} skipped, "
               f"{_count(result.dropped, 'probe')} dropped{why}, "
               f"{_count(len(left), 'input key')} not carried over{keys}{_many(result.many_valued)}")


def _many(many: dict[str, int]) -> str:
    """The summary's clause on many-valued relations (empty when there are none)."""
    if not many:
        return ""
    shown = ", ".join(f"{r!r} in {_count(n, 'edit')}" for r, n in list(many.items())[:5])
    more = f", and {len(many) - 5} more" if len(many) > 5 else ""
    return (f"; {_count(sum(many.values()), 'edit')} of {_count(len(many), 'many-valued relation')} "
            f"({shown}{more}) have one fact per old value")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"
