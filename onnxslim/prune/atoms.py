"""Channels as atoms, and the equivalence of channels that must be removed together.

Every output channel of a prunable producer (a Conv filter, a Gemm/MatMul
output feature) is an atom. A tensor's channel axis is described by its
layout: the atom at each position. Ops that combine tensors position by
position (a residual Add, a squeeze-and-excitation Mul) tie the atoms at equal
positions; a union-find keeps these ties, so a removable unit is a class of
tied atoms. Atoms can be blocked (a channel reaches a graph output, or an op
without a rule) and a blocked atom blocks its whole class.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Layout:
    """The channel axis of a tensor and the atom at each position of it (``None``: not prunable)."""

    axis: int
    atoms: tuple[int | None, ...]
    # each channel position spans this many consecutive positions after a Flatten into features
    repeat: int = 1

    def __len__(self) -> int:
        return len(self.atoms)


@dataclass
class AtomTable:
    """Every channel atom, the union-find of atoms that must go together, and why blocked atoms must stay."""

    producers: list[tuple[str, int]] = field(default_factory=list)  # atom -> (producer node, channel)
    parent: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)  # atom -> reason

    def new(self, producer: str, count: int) -> tuple[int, ...]:
        start = len(self.producers)
        for channel in range(count):
            self.producers.append((producer, channel))
            self.parent.append(start + channel)
        return tuple(range(start, start + count))

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def tie(self, a: int | None, b: int | None) -> None:
        """Atoms ``a`` and ``b`` must be removed together; a None side blocks the other."""
        if a is None and b is None:
            return
        if a is None or b is None:
            self.block(b if a is None else a, "tied to a channel that cannot be removed")
            return
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_a] = root_b

    def block(self, atom: int | None, reason: str) -> None:
        if atom is not None:
            self.blocked.setdefault(atom, reason)

    def block_layout(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for atom in layout.atoms:
                self.block(atom, reason)

    def classes(self) -> dict[int, list[int]]:
        result: dict[int, list[int]] = {}
        for atom in range(len(self.producers)):
            result.setdefault(self.find(atom), []).append(atom)
        return result

    def class_block_reason(self, members: list[int]) -> str | None:
        for atom in members:
            if atom in self.blocked:
                return self.blocked[atom]
        return None
