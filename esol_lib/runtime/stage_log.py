"""The run folder's ``log.jsonl``: the time each stage call took, and reading the log back.

A record is appended by :func:`log_stage_time` when a stage call ends (rank 0 only under
``torchrun``); :func:`stage_times` sums the outermost calls, which the book's build-time page shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

#: ``event`` of the ``log.jsonl`` records :func:`log_stage_time` writes.
STAGE_TIME_EVENT = "stage_time"


def log_stage_time(root: Path, stage: str, seconds: float, depth: int, ok: bool) -> None:
    """Append one ``{"event": "stage_time", ...}`` line to ``root/log.jsonl``: where the time of a
    chapter or a pipeline went. A stage that returns at once (its outputs current) logs its few
    milliseconds too. A folder that cannot be written is left alone (the stage has reported that)."""
    record = {
        "event": STAGE_TIME_EVENT,
        "stage": stage,
        "seconds": round(seconds, 3),
        "depth": depth,
        "ok": ok,
        "time": round(time.time(), 3),
    }
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for all (as with the lock)
        return
    with contextlib.suppress(OSError):
        if root.is_dir():
            with open(root / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def stage_times(root: str | Path, since: float = 0.0, until: float = float("inf")) -> dict[str, float]:
    """Seconds per stage of the outermost stage calls that ended in ``[since, until]`` (unix time),
    summed over ``root/log.jsonl`` and the logs of the run folders below it (chapter 07's forks,
    named ``ablation <stage>``)."""
    root = Path(root)
    totals: dict[str, float] = {}
    for log_file in sorted(root.rglob("log.jsonl")):
        prefix = "ablation " if "ablations" in log_file.relative_to(root).parts else ""
        for rec in read_log(log_file):
            if rec.get("event") == STAGE_TIME_EVENT and rec.get("depth") == 0 and since <= rec.get("time", 0) <= until:
                name = prefix + str(rec.get("stage"))
                totals[name] = totals.get(name, 0.0) + float(rec.get("seconds", 0.0))
    return totals


def read_log(path: Path) -> list[dict]:
    """The JSON-object lines of log file ``path``; [] when it is missing or unreadable. Lines that are
    not (a line cut by a kill: silently; others: one warning naming the file) are skipped."""
    import logging

    try:
        data = path.read_bytes()
    except OSError:
        return []
    records, bad = [], 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += i < len(lines) - 1  # the last line may be one a kill cut short
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    if bad:
        logging.getLogger(__name__).warning("%s: %d unreadable line(s) skipped", path, bad)
    return records
