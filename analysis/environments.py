"""Which software and machines made a study's numbers: every environment that trained one of its
runs (run.json's `environments`) or made an evaluation row (the `environment` column of
fid.csv, its record in eval/environments.json), as one table; and a warning when the rows of
one protocol come from more than one, since a difference between them may then be the
software's (another torch, another GPU), not the EMA's.

    table = environment_table(study)      # id, torch, python, device, commit, runs, rows
    lines = mixed_environment_warnings(study)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from explore.run.folder import ENVIRONMENTS_FILE_NAME, EVAL_DIR
from explore.run.results import read_json

from .load import Study

UNRECORDED = "(not recorded)"  # rows made before evaluations named their environment


def _records(study: Study) -> dict[str, dict]:
    """id -> the environment's record, with the runs it trained."""
    out: dict[str, dict] = {}
    for _, run in study.runs.iterrows():
        for env in run.get("environments") or []:
            if isinstance(env, dict) and env.get("id"):
                out.setdefault(env["id"], {**env, "trained": []})["trained"].append(run["run"])
        found = read_json(Path(run["dir"]) / EVAL_DIR / ENVIRONMENTS_FILE_NAME) or {}
        for env_id, env in found.items():
            out.setdefault(env_id, {**env, "trained": []})
    return out


def _commit(env: dict) -> str:
    commit = env.get("git_commit")
    if not commit:
        return "-"
    return commit[:7] + (" (dirty)" if env.get("git_dirty") else "")


def environment_table(study: Study) -> pd.DataFrame:
    """One row per environment: what it is, which runs it trained, how many fid.csv rows it
    made; a last row counts the rows that name none (made before they were recorded)."""
    records = _records(study)
    counts = (study.fid["environment"].astype(object).fillna(UNRECORDED).astype(str).value_counts()
              if "environment" in study.fid and len(study.fid) else pd.Series(dtype=int))
    rows = {}
    for env_id, env in records.items():
        cuda = f", CUDA {env['cuda']}" if env.get("cuda") else ""
        rows[env_id] = {"torch": f"{env.get('torch')}{cuda}", "python": env.get("python"),
                        "device": env.get("device_name"), "commit": _commit(env),
                        "hosts": env.get("hostname"),
                        "trained": ", ".join(env["trained"]) or "-",
                        "eval rows": int(counts.get(env_id, 0))}
    if counts.get(UNRECORDED, 0):
        rows[UNRECORDED] = {"torch": "", "python": "", "device": "", "commit": "", "hosts": "",
                            "trained": "", "eval rows": int(counts[UNRECORDED])}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "environment"
    return table


def mixed_environment_warnings(study: Study) -> list[str]:
    """A warning per protocol whose rows were made in more than one recorded environment,
    naming what differs."""
    fid = study.fid
    if "environment" not in fid or fid.empty:
        return []
    records = _records(study)
    out = []
    for protocol, part in fid.groupby("protocol", sort=False):
        ids = sorted(set(part["environment"].dropna().astype(str)))
        if len(ids) < 2:
            continue
        fields = ("torch", "cuda", "cudnn", "device_name", "python", "git_commit", "packages")
        differ = [f for f in fields
                  if len({str(records.get(i, {}).get(f)) for i in ids}) > 1]
        out.append(f"The rows of {protocol} were made in {len(ids)} environments "
                   f"({', '.join(ids)}; they differ in {', '.join(differ) or 'nothing recorded'}"
                   f"): a difference between their numbers may be the software's, not the "
                   f"EMA's. See Environments.")
    return out
