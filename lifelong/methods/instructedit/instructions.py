"""The task instructions InstructEdit prefixes to an edit's prompt, and which one each
training record gets.

An instructed prompt reads ``Task: <title>. <description> Input: <prompt>``. Each task has
five descriptions, written here (the paper's are its own; the idea, several phrasings of
one instruction per task with one held out to test unseen instructions, is the paper's).
The last description of every task is never drawn in training (`HELD_OUT`); a training
record gets one of the others, drawn from (seed, record id) alone, so a record keeps its
instruction whatever else the split holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._common.rng import seeded_rng


@dataclass(frozen=True)
class Task:
    """A task's name in the instruction and its descriptions (the last one held out).
    ``{topic}`` in a description is replaced with the record's subject."""

    title: str
    descriptions: tuple[str, ...]


TASKS: dict[str, Task] = {
    "zsre": Task("question answering", (
        "Answer the question about the subject with the object the edit gives.",
        "Given a subject and a relation asked as a question, reply with the new object.",
        "Learn the new answer to this question about one entity; other questions stay.",
        "Update what the model answers for this subject and relation only.",
        "Reply to a zero-shot relation question with the edited object.")),
    "counterfact": Task("counterfactual editing", (
        "Make the model state the new counterfactual object for this subject.",
        "Replace the fact about this subject with the given counterfactual one.",
        "The subject's attribute changes to the new value; its neighbours do not.",
        "Write the counterfactual fact into the model for this entity alone.",
        "Change one fact about a rare entity to a counterfactual value.")),
    "recent": Task("knowledge insertion", (
        "Insert a recent fact about this entity that the model has not seen.",
        "Add the newest value of this relation for the subject.",
        "Teach the model a fact added to the knowledge base after its training.",
        "Bring the model up to date on this subject's latest attribute.",
        "Store a newly added triple about this entity.")),
    "convsent": Task("sentiment editing", (
        "Make the reply about {topic} carry the given sentiment; other topics keep theirs.",
        "Change how the chatbot feels about {topic} to the sentiment of the target.",
        "Give the opinion about {topic} the tone of the target and nothing else.",
        "Steer the sentiment of answers about {topic} only.",
        "Set the attitude toward {topic} to the target's.")),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
#: the position of the held-out description (never drawn in training)
HELD_OUT = -1


def instruction(task: str, which: int, subject: str = "") -> str:
    """Task `task`'s instruction with its description number `which`, ending in "Input:"
    (the prompt follows it)."""
    t = TASKS[task]
    description = t.descriptions[which].replace("{topic}", subject or "the topic")
    return f"Task: {t.title}. {description} Input:"


def instructed(prompt: str, task: str, which: int, subject: str = "") -> str:
    """`prompt` behind `instruction(task, which, subject)` (see the module docstring)."""
    return f"{instruction(task, which, subject)} {prompt}"


def training_description(task: str, seed: int, record_id: str) -> int:
    """The description a training record gets: one of the task's first n - 1, drawn from
    (seed, record id) only."""
    n = len(TASKS[task].descriptions) - 1
    return seeded_rng(seed, "instructedit", task, record_id).randrange(n)
