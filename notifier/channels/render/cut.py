"""Cutting a message by meaning to a channel's budget (pure).

A long body is never cut mid-markup: the document is cut in stages (finished sub-steps
summarised, long error texts shortened, quiet steps collapsed, quiet transitions left out,
...), each bisected to the fewest cuts that make the rendered body fit, so it keeps as much
as the budget holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from notifier.channels.render.document import (
    MIN_BUDGET,
    Document,
    StepLine,
    is_problem,
    status_label,
)
from notifier.channels.render.escape import escape_text, shorten
from notifier.channels.render.markup import renderer_for

# -- cutting: stages of cuts, least valuable content first ----------------------------------
#
# Each stage offers ``count(doc)`` cuts of one kind (a finished sub-step summarised, a quiet
# transition left out, ...) in the order it wants them made; ``apply(doc, k)`` makes the first
# ``k``. :func:`fit` takes as few cuts as it needs, stage by stage, so a long message keeps
# as much as its budget holds instead of losing whole categories at once.


@dataclass(frozen=True)
class _Stage:
    name: str
    count: Callable[[Document], int]
    apply: Callable[[Document, int], Document]


def _sub_positions(
    doc: Document, statuses: frozenset[str], *, latest_first: bool
) -> list[tuple[int, int]]:
    positions = [
        (step_index, sub_index)
        for step_index, step in enumerate(doc.steps)
        for sub_index, sub in enumerate(step.sub_lines)
        if sub.status in statuses
    ]
    return positions[::-1] if latest_first else positions


def _summarise_stage(statuses: frozenset[str], *, latest_first: bool) -> _Stage:
    def count(doc: Document) -> int:
        return len(_sub_positions(doc, statuses, latest_first=latest_first))

    def apply(doc: Document, cuts: int) -> Document:
        chosen = set(_sub_positions(doc, statuses, latest_first=latest_first)[:cuts])
        if not chosen:
            return doc
        steps: list[StepLine] = []
        for step_index, line in enumerate(doc.steps):
            gone = [sub for i, sub in enumerate(line.sub_lines) if (step_index, i) in chosen]
            if gone:
                counts: dict[str, int] = dict(line.omitted)
                for sub in gone:
                    label = status_label(sub.status) if sub.status else "waiting"
                    counts[label] = counts.get(label, 0) + 1
                keep = tuple(
                    sub for i, sub in enumerate(line.sub_lines) if (step_index, i) not in chosen
                )
                line = replace(line, sub_lines=keep, omitted=tuple(counts.items()))  # noqa: PLW2901
            steps.append(line)
        return replace(doc, steps=tuple(steps))

    return _Stage(f"summarise {'/'.join(sorted(statuses))} sub-steps", count, apply)


def _message_stage(limit: int) -> _Stage:
    def count(doc: Document) -> int:
        return 0 if doc.message_limit and doc.message_limit <= limit else 1

    def apply(doc: Document, cuts: int) -> Document:
        return replace(doc, message_limit=limit) if cuts and count(doc) else doc

    return _Stage(f"messages to {limit} characters", count, apply)


def _quiet_steps(doc: Document) -> list[int]:
    return [
        index
        for index, step in enumerate(doc.steps)
        if not is_problem(step.status) and (step.sub_lines or step.omitted)
    ]


def _collapse_apply(doc: Document, cuts: int) -> Document:
    """Steps without a problem lose their sub-step lines (a count remains), earliest first."""
    chosen = set(_quiet_steps(doc)[:cuts])
    if not chosen:
        return doc
    steps: list[StepLine] = []
    for index, step in enumerate(doc.steps):
        if index in chosen:
            hidden = len(step.sub_lines) + sum(count for _, count in step.omitted)
            step = replace(  # noqa: PLW2901
                step, sub_lines=(), omitted=(), collapsed=step.collapsed + hidden
            )
        steps.append(step)
    return replace(doc, steps=tuple(steps))


def _transition_stage(name: str, select: Callable[[Document], list[int]]) -> _Stage:
    def apply(doc: Document, cuts: int) -> Document:
        chosen = set(select(doc)[:cuts])
        if not chosen:
            return doc
        keep = tuple(item for index, item in enumerate(doc.transitions) if index not in chosen)
        return replace(
            doc, transitions=keep, omitted_transitions=doc.omitted_transitions + len(chosen)
        )

    return _Stage(name, lambda doc: len(select(doc)), apply)


def _quiet_transitions(doc: Document) -> list[int]:
    """Transitions that are neither a failure nor a terminal state, oldest first."""
    return [index for index, item in enumerate(doc.transitions) if not item.important]


def _calm_transitions(doc: Document) -> list[int]:
    """Important transitions that are no problem, oldest first; the latest always stays."""
    last = len(doc.transitions) - 1
    return [
        index for index, item in enumerate(doc.transitions) if not item.problem and index != last
    ]


def _all_but_the_cause(doc: Document) -> list[int]:
    """Every transition but the first problem (the cause; the headline tells the outcome),
    newest first; without a problem, every transition but the latest."""
    problems = [index for index, item in enumerate(doc.transitions) if item.problem]
    keep = problems[0] if problems else len(doc.transitions) - 1
    return [index for index in reversed(range(len(doc.transitions))) if index != keep]


def _lone_steps(doc: Document) -> list[int]:
    return [
        index
        for index, step in enumerate(doc.steps)
        if not is_problem(step.status) and not step.sub_lines
    ]


def _drop_steps_apply(doc: Document, cuts: int) -> Document:
    chosen = set(_lone_steps(doc)[:cuts])
    if not chosen:
        return doc
    keep = tuple(step for index, step in enumerate(doc.steps) if index not in chosen)
    return replace(doc, steps=keep, omitted_steps=doc.omitted_steps + len(chosen))


def _drop_tree_apply(doc: Document, cuts: int) -> Document:
    return replace(doc, show_tree=False, truncated=True) if cuts and doc.show_tree else doc


def _drop_facts_apply(doc: Document, cuts: int) -> Document:
    if not cuts or len(doc.facts) <= 1:
        return doc
    return replace(doc, facts=doc.facts[:1], truncated=True)


_STAGES: Final[tuple[_Stage, ...]] = (
    _summarise_stage(frozenset({"finished"}), latest_first=False),
    _message_stage(200),
    _summarise_stage(frozenset({"waiting", ""}), latest_first=True),
    _message_stage(80),
    _Stage("collapse quiet steps", lambda doc: len(_quiet_steps(doc)), _collapse_apply),
    _transition_stage("leave out quiet transitions", _quiet_transitions),
    _Stage("leave out quiet steps", lambda doc: len(_lone_steps(doc)), _drop_steps_apply),
    _Stage("leave out the step tree", lambda doc: int(doc.show_tree), _drop_tree_apply),
    _Stage("keep one fact", lambda doc: int(len(doc.facts) > 1), _drop_facts_apply),
    _transition_stage("leave out calm transitions", _calm_transitions),
    _message_stage(30),
    _transition_stage("keep only the first failure", _all_but_the_cause),
)


def _reduce(doc: Document, cuts: Sequence[int]) -> Document:
    for stage, count in zip(_STAGES, cuts, strict=False):
        if count:
            doc = stage.apply(doc, count)
    return doc


def fit(doc: Document, fmt: str, budget: int, dialect: str = "commonmark") -> str:
    """Render ``doc``, cutting it by meaning until it fits ``budget`` characters.

    Stage by stage (:data:`_STAGES`), the fewest cuts that make the body fit are found by
    bisection; then the stages before the one that made it fit give back what they can (a
    step tree left out may leave room for transitions thinned earlier). The body is always
    rendered from the cut document, so markup is never split."""
    renderer = renderer_for(fmt, dialect)
    body = renderer.render(doc)
    if budget <= 0 or len(body) <= budget:
        return body
    budget = max(budget, MIN_BUDGET)
    rendered: dict[tuple[int, ...], str] = {}

    def attempt(cuts: Sequence[int]) -> str:
        key = tuple(cuts)
        if key not in rendered:
            rendered[key] = renderer.render(_reduce(doc, key))
        return rendered[key]

    def fewest(cuts: list[int], index: int, low: int, high: int) -> int:
        """The fewest cuts of stage ``index`` in [low, high] that fit (``high`` fits)."""
        while low < high:
            middle = (low + high) // 2
            cuts[index] = middle
            if len(attempt(cuts)) <= budget:
                high = middle
            else:
                low = middle + 1
        cuts[index] = high
        return high

    cuts = [0] * len(_STAGES)
    for index, stage in enumerate(_STAGES):
        available = stage.count(_reduce(doc, cuts))
        if not available:
            continue
        cuts[index] = available
        if len(attempt(cuts)) > budget:
            continue  # all of this stage is not enough: keep it, go on
        fewest(cuts, index, 1, available)
        for earlier in reversed(range(index)):
            if cuts[earlier]:
                fewest(cuts, earlier, 0, cuts[earlier])
        return attempt(cuts)
    doc = _reduce(doc, cuts)
    # Last resort: only the headline, cut on raw text so no markup is ever split.
    limit = budget
    while limit > 10:
        headline = tuple(
            (shorten(text, limit) if emphasis else text, emphasis)
            for text, emphasis in doc.headline
        )
        minimal = Document(
            headline=headline,
            transitions=(),
            omitted_transitions=len(doc.transitions) + doc.omitted_transitions,
            steps=(),
            omitted_steps=0,
            facts=(),
            show_tree=False,
            truncated=False,
        )
        body = renderer.render(minimal)
        if len(body) <= budget:
            return body
        limit = limit * 2 // 3
    return escape_text(shorten(body, budget)) if fmt == "text" else ""
