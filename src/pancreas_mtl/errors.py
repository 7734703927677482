"""Errors a user can act on: each carries every problem found, each naming its file."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input supplied by the user (data folder, config). Printed without a traceback."""

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = list(problems or [])
        super().__init__(self.render())

    def render(self) -> str:
        if not self.problems:
            return self.summary
        lines = [f"{self.summary} ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class QuizDataError(UserInputError):
    """The quiz data folder does not have the expected layout or content."""


class TrainingStopped(Exception):
    """A training stopped on a signal after writing its checkpoint; rerunning resumes it. Printed without a
    traceback."""
