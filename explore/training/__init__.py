"""Training one run: the recipe (`loop`), reading top to bottom; what trains and one optimizer
step (`step`); the run's position and its checkpoint files (`state`); starting and resuming
(`start`); the settings it runs with (`settings`); sample grids and loggers while it runs
(`watch`); the held-out loss (`heldout`); SLURM's stop signal (`preemption`); the disk budget
(`disk`).

May import: explore.run, explore.lift, explore.ema, explore.nets, explore.core (never
explore.evaluation, and never the config: explore.train hands it `TrainSettings`).
"""
