"""Checkpoint selection: which checkpoints a training keeps and the scores that choose them."""

from __future__ import annotations

import math

# The checkpoints a training keeps, by the name the config uses for them.
CHECKPOINT_FILES = {
    "final": "checkpoint_final.pth",
    "best_combined": "checkpoint_best_combined.pth",
    "best_f1": "checkpoint_best_f1.pth",
}
# What each training stage writes: its final weights and the checkpoints its selection scores keep (stage 1 has no
# classification head, so no macro-F1).
STAGE1_CHECKPOINTS = ("final", "best_combined")
STAGE2_CHECKPOINTS = ("final", "best_combined", "best_f1")
# Which checkpoint keeps the best value of each selection score.
SCORE_CHECKPOINTS = {"combined": CHECKPOINT_FILES["best_combined"], "macro_f1": CHECKPOINT_FILES["best_f1"]}


def combined_score(metrics: dict[str, float]) -> float:
    """Mean of whole-pancreas and lesion Dice; with classification, averaged 50/50 with macro-F1."""
    seg = (metrics["whole_dice"] + metrics["lesion_dice"]) / 2
    return (seg + metrics["macro_f1"]) / 2 if "macro_f1" in metrics else seg


class CheckpointSelector:
    """Remembers the best value of each selection score; improvements are strict (the earliest best wins)."""

    def __init__(self, scores: tuple[str, ...]):
        self.best = {score: -math.inf for score in scores}

    def update(self, metrics: dict[str, float]) -> list[str]:
        improved = []
        for score, best in self.best.items():
            value = metrics.get(score)
            if value is not None and not math.isnan(value) and value > best:
                self.best[score] = value
                improved.append(score)
        return improved

    def restore(self, history: list[dict]) -> None:
        """Rebuild the best values from the full-validation history (used when a training resumes)."""
        for entry in history:
            self.update(entry)
