"""The teacher's targets for every training batch, held in a bounded amount of memory.

Outputs and feature maps of a detector or a recognizer take megabytes per
sample; kept for a thousand samples they outgrow the machine. Batches are kept
in order until ``budget_bytes`` is spent; the teacher runs again on the rest
whenever training reaches them (an onnxruntime forward pass, cheap next to the
student's forward and backward passes in torch).
"""

from __future__ import annotations

import numpy as np

from onnxslim.progress import track


class TeacherTargets:
    """``targets[i]``: the teacher's values of ``names`` on training batch ``i``."""

    def __init__(self, runner, names: list[str], batches: list[dict], budget_bytes: int, *, show_progress: bool = False):
        self.runner, self.names, self.batches = runner, names, batches
        self.kept: dict[int, list[np.ndarray]] = {}
        self.kept_bytes = 0
        self.sample: list[list[np.ndarray]] = []  # the first few batches' targets, whatever the budget: output kinds are judged on them
        full = False
        for index, batch in enumerate(track(batches, "teacher outputs", enabled=show_progress)):
            if full and len(self.sample) >= 8:
                continue  # computed when training reaches it (the bar still runs to its end)
            values = self.runner.run(batch, names)
            if len(self.sample) < 8:
                self.sample.append(values)
            size = sum(int(np.asarray(v).nbytes) for v in values)
            if not full and self.kept_bytes + size <= budget_bytes:
                self.kept[index] = values
                self.kept_bytes += size
            else:
                full = True

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[np.ndarray]:
        kept = self.kept.get(index)
        return kept if kept is not None else self.runner.run(self.batches[index], self.names)

    @property
    def recomputed(self) -> int:
        """Batches whose targets are computed again at every epoch."""
        return len(self.batches) - len(self.kept)
