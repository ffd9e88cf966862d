"""How long a study took, stage by stage, against its preset's budget (`study.budget_min`).

A stage's time is the wall time during which at least one of its jobs ran (jobs of one stage
running side by side on two slots count once), so the stages add up to about the study's time
when they do not overlap, and the one that took most is the one to make cheaper.
"""

from __future__ import annotations


def stage_seconds(tickets) -> dict[str, float]:
    """{stage: wall seconds with a job of it running}, from tickets named `<run>:<stage>`."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in tickets:
        if t.started is not None and t.ended is not None:
            spans.setdefault(t.name.rsplit(":", 1)[1], []).append((t.started, t.ended))
    return {stage: _union(intervals) for stage, intervals in spans.items()}


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def summary(name: str, total_s: float, stages: dict[str, float], budget_min: float | None
            ) -> list[str]:
    """The study's closing lines: its time, each stage's, and, past the budget, which stage
    took it."""
    parts = ", ".join(f"{stage} {fmt_duration(s)}" for stage, s in stages.items())
    lines = [f"study {name} took {fmt_duration(total_s)}" + (f" ({parts})" if parts else "")]
    if budget_min is not None and total_s > 60 * float(budget_min) and stages:
        stage, took = max(stages.items(), key=lambda kv: kv[1])
        lines.append(f"over its preset's budget of {fmt_duration(60 * float(budget_min))}: "
                     f"{stage} took the most, {fmt_duration(took)} "
                     f"({100 * took / total_s:.0f}% of the study); on a busy or slower machine "
                     f"every stage is slower (docs/performance.md, the smoke study)")
    return lines
