"""Which software and machines made a study's numbers, as one table: every environment that
trained one of its runs (run.json's `environments`) or made an evaluation row (the `environment`
column of fid.csv, its record in eval/environments.json).

    table = environment_table(study)      # id, torch, python, device, commit, runs, rows
"""

from __future__ import annotations

import pandas as pd

from ..load import Study, environment_records

UNRECORDED = "(not recorded)"  # rows made before evaluations named their environment


def _commit(env: dict) -> str:
    commit = env.get("git_commit")
    if not commit:
        return "-"
    return commit[:7] + (" (dirty)" if env.get("git_dirty") else "")


def environment_table(study: Study) -> pd.DataFrame:
    """One row per environment: what it is, which runs it trained, how many fid.csv rows it
    made; a last row counts the rows that name none (made before they were recorded)."""
    records = environment_records(study)
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
