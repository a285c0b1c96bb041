"""What every graph pass returns.

A pass is a function ``model -> PassResult`` that changes the model it is
given (onnxslim always hands passes its own copy) and says what it changed
and, for each place it looked at and left alone, why.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decline:
    """A place a pass looked at and did not change, and why."""

    where: str
    reason: str

    def to_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason}


@dataclass
class PassResult:
    name: str
    changes: list[str] = field(default_factory=list)
    declined: list[Decline] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return bool(self.changes)

    def change(self, text: str) -> None:
        self.changes.append(text)

    def decline(self, where: str, reason: str) -> None:
        self.declined.append(Decline(where, reason))

    def summary(self) -> str:
        """One line: the change itself, or how many and the first."""
        if len(self.changes) == 1:
            return self.changes[0]
        return f"{len(self.changes)} changes, e.g. {self.changes[0]}"

    def to_dict(self) -> dict:
        return {
            "pass": self.name,
            "modified": self.modified,
            "changes": list(self.changes),
            "declined": [d.to_dict() for d in self.declined],
        }
