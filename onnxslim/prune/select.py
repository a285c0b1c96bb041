"""Which channel classes to remove: pure functions of the groups, their scores and the settings.

Local scope removes the same share of every group's lowest-scoring classes;
global scope ranks all classes against each other (each score divided by its
group's mean) under one budget; cost scope ranks them by that normalized score
per multiply-accumulate a class's removal saves, and removes ``ratio`` of the
prunable multiply-accumulates (no group losing more than ``MAX_COST_CUT`` times
the ratio): channels are taken where they cost much and matter little. Channels of grouped convolutions are always
removed equally from every group, ranked locally. Every group gets a report
line: how many channels it keeps, and why any were left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from onnxslim.prune.groups import Group, Groups
from onnxslim.reasons import Reason
from onnxslim.records import Record


class GroupOutcome(Enum):
    """What selection did with a group."""

    PRUNED = "pruned"  # lost channels, none held back
    UNCHANGED = "unchanged"  # free to lose channels, none chosen at this ratio
    PARTLY_BLOCKED = "partly_blocked"  # some channels cannot be removed; the rest were considered
    BLOCKED = "blocked"  # no channel can be removed (the tracer's reason)
    NOT_SELECTED = "not_selected"  # left out by --only
    GROUP_STRUCTURE = "group_structure"  # grouped convolutions whose groups cannot lose channels equally


MAX_COST_CUT = 2.0


@dataclass(frozen=True)
class GroupReport(Record):
    """One group's result: its producers, channels before and after, and why channels were left.

    ``score_removed``: the share of the group's importance the removed channels
    carried (an estimate of the loss at its consumers); ``macs_removed``: the
    multiply-accumulates their removal saves, where known. The counts are of classes, channels that go together (a head,
    a GroupNorm group), each ``channels_per_class`` channels wide in every layer.
    """

    producers: list[str]
    channels_before: int
    channels_after: int
    outcome: GroupOutcome = GroupOutcome.PRUNED
    skipped: str | None = None
    score_removed: float | None = None
    macs_removed: float | None = None
    channels_per_class: int = 1

    @property
    def reason(self) -> Reason | None:
        return Reason(self.outcome, self.skipped) if self.skipped else None


@dataclass(frozen=True)
class SelectionSettings:
    """The part of the pruning settings that selection reads."""

    scope: str = "local"
    only: str = "all"
    round_to: int = 1


def keep_count(total: int, ratio: float, round_to: int = 1) -> int:
    """How many of ``total`` channels to keep at pruning ``ratio``, a multiple of ``round_to`` where possible."""
    keep = total - int(np.floor(total * ratio + 1e-9))
    if round_to > 1:
        keep = int(np.ceil(keep / round_to) * round_to)
    return int(min(total, max(1, keep)))


def class_multiple(group: Group, round_to: int) -> int:
    """How many of ``group``'s classes to keep a multiple of, so that its layers keep channel counts at multiples of ``round_to``
    (a head of 32 channels keeps any count of heads at a multiple of 32 channels)."""
    return max(1, round_to // math.gcd(round_to, group.channels_per_class))


def select_local(scores: Mapping[int, float], prunable: list[int], ratio: float, round_to: int = 1) -> set[int]:
    """The lowest-scoring classes of one group, leaving ``keep_count`` of them."""
    keep = keep_count(len(prunable), ratio, round_to)
    ranked = sorted(prunable, key=lambda root: (scores[root], root))
    return set(ranked[: len(prunable) - keep])


def select(
    groups: Groups, scores: Mapping[int, float], ratio: float, settings: SelectionSettings, costs: Mapping[int, float] | None = None
) -> tuple[set[int], list[GroupReport]]:
    """The classes to remove at ``ratio`` and a report per group; ``costs``: multiply-accumulates each class's removal saves (needed by scope 'cost')."""
    prunable_by_group = {group.producers: considered(group, settings) for group in groups.groups}
    multiples = {group.producers: class_multiple(group, settings.round_to) for group in groups.groups}
    removed: set[int] = set()
    if settings.scope == "global":
        removed = _select_global(prunable_by_group, scores, ratio, multiples)
    elif settings.scope == "cost":
        if costs is None:
            raise ValueError("scope 'cost' needs the classes' costs")
        removed = _select_global(prunable_by_group, scores, ratio, multiples, costs)
    reports = []
    for group in groups.groups:
        prunable = prunable_by_group[group.producers]
        multiple = multiples[group.producers]
        outcome, reason = GroupOutcome.PRUNED, None
        if prunable and any(r in group.blocks for r in prunable):
            removed -= set(prunable)  # grouped convolutions: equal removal per group, always ranked locally
            chosen = _select_blocked(group, prunable, scores, ratio, multiple)
            if isinstance(chosen, str):
                outcome, reason, prunable = GroupOutcome.GROUP_STRUCTURE, chosen, []
            else:
                removed |= chosen
        elif settings.scope == "local" and prunable:
            removed |= select_local(scores, prunable, ratio, multiple)
        gone = sum(1 for r in prunable if r in removed)
        if not prunable and reason is None:
            blocked = group.block_reason(group.roots)
            outcome = GroupOutcome.BLOCKED if blocked else GroupOutcome.NOT_SELECTED
            reason = blocked or f"not selected by --only {settings.only}"
        elif prunable and len(prunable) < len(group.roots):
            outcome = GroupOutcome.PARTLY_BLOCKED
            reason = f"{len(group.roots) - len(prunable)} channel(s) kept: {group.block_reason([r for r in group.roots if r not in prunable])}"
        elif prunable and not gone:
            outcome = GroupOutcome.UNCHANGED
        total = sum(scores.get(r, 0.0) for r in group.roots)
        share = sum(scores.get(r, 0.0) for r in group.roots if r in removed) / total if total > 0 else None
        saved = sum(costs.get(r, 0.0) for r in group.roots if r in removed) if costs is not None else None
        reports.append(GroupReport(list(group.producers), len(group.roots), len(group.roots) - gone, outcome, reason, share, saved, group.channels_per_class))
    return removed, reports


def considered(group: Group, settings: SelectionSettings) -> list[int]:
    """The group's classes selection may remove: its removable ones, less those --only leaves out."""
    if (settings.only == "heads" and not group.heads) or (settings.only == "channels" and group.heads):
        return []
    return list(group.removable)


def _select_blocked(group: Group, prunable: list[int], scores: Mapping[int, float], ratio: float, round_to: int) -> set[int] | str:
    """Equal removal from every group of a grouped convolution, or the reason it cannot be done."""
    ids = [group.blocks.get(r) for r in prunable]
    if any(i is None or i == (0, 0) for i in ids) or len({i[0] for i in ids}) != 1:
        return "channels of grouped convolutions with different group structures"
    by_block: dict[int, list[int]] = {}
    for root, (_, block) in zip(prunable, ids):
        by_block.setdefault(block, []).append(root)
    if len(by_block) != ids[0][0]:
        return "a group of a grouped convolution has no removable channel"
    smallest = min(len(members) for members in by_block.values())
    cut = smallest - keep_count(smallest, ratio, round_to)
    removed = set()
    for members in by_block.values():
        removed |= set(sorted(members, key=lambda r: (scores[r], r))[:cut])
    return removed


def _select_global(
    prunable_by_group: Mapping[tuple, list[int]], scores: Mapping[int, float], ratio: float, multiples: Mapping[tuple, int],
    costs: Mapping[int, float] | None = None,
) -> set[int]:
    """Rank every class by its score over its group's mean (per unit of cost, with ``costs``) and remove the lowest.

    Without costs, ``ratio`` of all classes go; with costs, ``ratio`` of their total cost,
    no group losing more than ``MAX_COST_CUT * ratio`` of its classes.
    """
    normalized = []
    for key, prunable in prunable_by_group.items():
        if not prunable:
            continue
        mean = np.mean([scores[r] for r in prunable]) or 1.0
        for r in prunable:
            value = scores[r] / mean
            if costs is not None:
                value /= max(costs.get(r, 0.0), 1e-9)
            normalized.append((value, r, key))
    normalized.sort()
    weight = (lambda r: costs.get(r, 0.0)) if costs is not None else (lambda r: 1.0)
    budget = (sum(weight(r) for _, r, _ in normalized) * ratio) if costs is not None else int(np.floor(len(normalized) * ratio + 1e-9))
    cap = min(0.9, MAX_COST_CUT * ratio) if costs is not None else 1.0
    removed, per_group, spent = set(), {}, 0.0
    for _, root, key in normalized:
        if spent >= budget - 1e-9:
            break
        total = len(prunable_by_group[key])
        count = per_group.get(key, 0)
        round_to = multiples[key]
        if total - count <= max(1, round_to if total > round_to else 1) or count + 1 > cap * total:
            continue
        removed.add(root)
        per_group[key] = count + 1
        spent += weight(root)
    for key, prunable in prunable_by_group.items():
        if multiples[key] > 1:
            count = per_group.get(key, 0)
            keep = keep_count(len(prunable), count / len(prunable) if prunable else 0, multiples[key])
            excess = (len(prunable) - keep) - count
            if excess < 0:  # give channels back, most important first
                chosen = sorted((r for r in prunable if r in removed), key=lambda r: -scores[r])[:-excess]
                removed -= set(chosen)
    return removed
