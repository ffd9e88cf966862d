"""SLURM's time-limit and preemption signal, taken at a step boundary.

Under SLURM, submitit asks for `--signal=USR2@<signal_delay_s>` and installs a USR2 handler that
calls the job's `checkpoint()`, requeues the job and exits, at whatever Python line the signal
lands on. In the middle of a training step (after the optimizer step, before the EMA update)
the run's state is not one a resume can continue bit for bit. `StepBoundary` therefore takes
the signal first and only notes it; the training loop asks `pending` after every step, writes
its resume state there, and `hand_over()` then passes the signal on to submitit's handler,
which requeues the job with the same arguments and ends this process.

Outside a submitit job (no Python handler on USR2) nothing is installed.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("explore.train")

SIGNALS = tuple(getattr(signal, n) for n in ("SIGUSR2",) if hasattr(signal, n))


class StepBoundary:
    def __init__(self, signals=SIGNALS):
        self.signals = signals
        self.previous: dict = {}
        self.caught: tuple | None = None

    def __enter__(self) -> StepBoundary:
        for sig in self.signals:
            prev = signal.getsignal(sig)
            if callable(prev):  # a job runner's handler (submitit): defer it to a step boundary
                self.previous[sig] = prev
                signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame) -> None:
        if self.caught is None:
            log.warning("caught %s (time limit or preemption): stopping at the end of this "
                        "step to save the resume state", signal.Signals(signum).name)
        self.caught = (signum, frame)

    @property
    def pending(self) -> bool:
        return self.caught is not None

    @property
    def armed(self) -> bool:
        """Whether a job runner's handler was taken over (only then can a signal be pending)."""
        return bool(self.previous)

    def hand_over(self) -> None:
        """Give the noted signal to the handler it was meant for (submitit: requeue, exit)."""
        signum, frame = self.caught
        handler = self.previous.get(signum)
        self.caught = None
        self._restore()
        if handler is not None:
            handler(signum, frame)

    def _restore(self) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        self.previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
