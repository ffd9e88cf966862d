"""The run folder contract: where every file of a run lies (`folder`), what `run.json` says
(`info`), `eval/fid.csv` and its columns (`results`), checkpoint files (`checkpoint`), one writer
per run (`lock`), the run's log file (`logfile`), loggers (`loggers`, `logger_backends`),
pictures (`images`) and what software and machine made it (`environment`).

May import: explore.ema (weight-set names), explore.core. `folder`, `info` and `results` load
without torch: analysis/ reads run folders through them.
"""
