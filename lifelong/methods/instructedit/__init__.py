"""`instructedit`: InstructEdit (Tian, Cheng, Liang, Zhang et al. 2024, "InstructEdit:
Instruction-based Knowledge Editing for Large Language Models", arXiv 2402.16123): MEND's
editor (`mend/`) trained on several tasks at once, with a task instruction before the
prompt whose fine-tuning gradient the editor reads, so that one editor serves every task,
including one it was not trained on.

What changes against MEND, and nothing else:
  * training: every train record's prompt becomes ``Task: <title>. <description> Input:
    <prompt>`` (`instructions.py`), the task read from the record (a stream line's
    ``meta.task``, which `lifelong streams merge --task NAME=FILE ...` writes and whose
    balance it sets), the description drawn from (seed, record id) among the task's first
    four (the fifth is held out). The edit loss stays on a plain rephrase and the locality
    KL on a plain locality prompt: the instruction shapes the editor's input, not what an
    edit must achieve.
  * editing: every stream edit's gradient is taken on its prompt with `task`'s
    instruction (its first description, or with ``instruction = "held-out"`` its fifth,
    never trained on); receipts' target losses are on the plain prompt.
The editor's initialisation and the order of training edits come from the same seeded
draws as MEND's, so `mend` and `instructedit` with one seed on one split differ in the
instructions alone. Trained editors are cached in their own folder (``instructedit``); the
entry's name leaves out `task` and `instruction` (the instructed records' hash holds what
they change in training).

Settings: MEND's, at MEND's values (`mend/__init__.py` lists them against the paper's,
with the deviations), and:

===========  ==================================  =====================================
setting      ours                                paper
===========  ==================================  =====================================
task         zsre (the stream's task)            the test set's task
instruction  seen (description 1 of 5)           a seen instruction; one held out per
                                                 task for the unseen-instruction check
===========  ==================================  =====================================

Deviations from the paper and its reference code (EasyEdit's MultiTaskDataset and
MultiTaskTrainer, read for the protocol, not copied):
  * the instruction texts are written here, four trained and one held out per task (the
    reference: ten per task, one held out; its own wording);
  * the tasks are balanced by the merged split (`streams merge` keeps the same number of
    records from each task by default), not by the sampler;
  * everything MEND's deviations list (`mend/__init__.py`), in particular far fewer editor
    updates (500) than the paper trains.

Layout: `instructions.py` (tasks, descriptions, which record gets which), `config.py`,
`method.py` (the two hooks MEND's `training_records` and `edit_prompt` offer).
"""

from .config import InstructEditConfig
from .method import InstructEdit

__all__ = ["InstructEdit", "InstructEditConfig"]
