"""Device slots for jobs on one machine, and a queue that runs submitit jobs on them.

submitit's LocalExecutor starts every job at once and gives all of them the same GPUs. The
`DeviceQueue` here keeps one job per slot: a job waits until a slot is free, then starts as a
LocalExecutor job whose CUDA_VISIBLE_DEVICES is that slot's GPU (inside the job it is cuda:0)
or empty for a CPU slot, with the slot's share of CPU threads. Local and SLURM jobs then look
the same to the study (`Ticket`: submitted, polled, result or error with its log).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from explore.core.devices import DeviceError, parse_device
from explore.core.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    kind: str       # "cuda" or "cpu"
    index: int      # physical GPU index (a group's first), or the number of the CPU slot
    threads: int    # CPU threads the job (each of its ranks) may use
    gpus: tuple[int, ...] = ()  # a GPU slot of several GPUs (study.ranks_per_run): all of them
    ranks: int = 1  # processes a training job runs as (one per GPU; gloo ranks on the CPU)

    @property
    def label(self) -> str:
        if self.kind == "cpu":
            return f"cpu#{self.index}" + (f" x{self.ranks}" if self.ranks > 1 else "")
        return f"cuda:{','.join(map(str, self.gpus or (self.index,)))}"

    @property
    def device_arg(self) -> str:
        """The job's `device=`: its one visible GPU is cuda:0 inside the job; with several
        ranks each takes the GPU of its LOCAL_RANK (explore.training.distributed)."""
        if self.kind == "cpu":
            return "cpu"
        return "auto" if self.ranks > 1 else "0"

    def env(self) -> dict[str, str]:
        gpus = ",".join(map(str, self.gpus or (self.index,)))
        return {"CUDA_VISIBLE_DEVICES": gpus if self.kind == "cuda" else "",
                "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}


def visible_gpus() -> list[int]:
    """Physical indices of the GPUs this process may use (honouring CUDA_VISIBLE_DEVICES)."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver is "no GPU" for scheduling purposes
        count = 0
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask:
        ids = [int(x) for x in mask.split(",") if x.strip().isdigit()]
        return ids[:count]
    return list(range(count))


def make_slots(devices, cpu_jobs: int | None = None, cores: int | None = None,
               ranks_per_run: int = 1) -> list[Slot]:
    """Slots from a device setting: auto (every visible GPU, else the CPU), cpu, an index, or a
    list of GPU indices. CPU: `cpu_jobs` at once (default: one per two cores), the cores split
    between them. `ranks_per_run` > 1: a training run is data-parallel over that many GPUs
    (consecutive in the list), or over that many gloo processes on the CPU."""
    cores = cores or os.cpu_count() or 1
    ranks = int(ranks_per_run or 1)
    if ranks < 1:
        raise ConfigError(f"study.ranks_per_run={ranks_per_run} must be >= 1")
    items = list(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) \
        else [devices]
    try:
        parsed = [parse_device(d) for d in items]
    except DeviceError as e:
        raise ConfigError(f"devices={devices!r}: use auto, cpu, or GPU indices like [0,1]") from e
    if parsed == ["auto"]:
        gpus = visible_gpus()
        parsed = gpus if gpus else ["cpu"]
    if parsed == ["cpu"]:
        n = int(cpu_jobs) if cpu_jobs else max(1, cores // (2 * ranks))
        if n < 1:
            raise ConfigError(f"study.cpu_jobs={cpu_jobs} must be >= 1")
        threads = max(1, cores // (n * ranks))
        return [Slot("cpu", k, threads, ranks=ranks) for k in range(n)]
    wanted = [d for d in parsed if isinstance(d, int)]
    if len(wanted) != len(parsed):
        raise ConfigError(f"devices={devices!r}: a list of GPU indices, or one of auto, cpu")
    have = visible_gpus()
    missing = [d for d in wanted if d not in have]
    if missing:
        raise ConfigError(f"devices={devices!r} asks for GPU(s) {missing}, but this machine "
                          f"shows {have or 'no GPU'}; use device=cpu or existing indices")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"devices={devices!r} lists a GPU twice")
    threads = max(1, cores // len(wanted))
    if ranks == 1:
        return [Slot("cuda", d, threads) for d in wanted]
    if len(wanted) % ranks:
        raise ConfigError(f"devices={devices!r}: {len(wanted)} GPU(s) do not make runs of "
                          f"study.ranks_per_run={ranks} GPUs each")
    groups = [tuple(wanted[k:k + ranks]) for k in range(0, len(wanted), ranks)]
    return [Slot("cuda", g[0], threads, gpus=g, ranks=ranks) for g in groups]


@dataclass
class Ticket:
    """One job: what to run, and what became of it."""

    name: str
    fn: Callable
    args: tuple
    folder: Path                 # submitit's folder: the job's logs live here
    pin: int | None = None       # run only on this GPU
    state: str = "queued"        # queued, running, done, failed, cancelled
    slot: Slot | None = None
    job: object = None
    result: object = None
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    extra: dict = field(default_factory=dict)
    ranks: int = 1                # processes the job runs as (a data-parallel training: > 1)

    @property
    def log_path(self) -> Path | None:
        job = self.job
        if job is None:
            return None
        return Path(job.paths.stderr)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class DeviceQueue:
    """Run tickets as submitit LocalExecutor jobs, one per free slot, in order of submission."""

    def __init__(self, slots: Sequence[Slot], timeout_min: float = 7 * 24 * 60):
        if not slots:
            raise ConfigError("no device slots to run jobs on")
        self.slots = list(slots)
        self.free = list(slots)
        self.timeout_min = timeout_min
        self.tickets: list[Ticket] = []

    def submit(self, ticket: Ticket) -> Ticket:
        if ticket.pin is not None and not any(s.kind == "cuda" and s.index == ticket.pin
                                              for s in self.slots):
            raise ConfigError(f"job {ticket.name} asks for GPU {ticket.pin}, which is not in "
                              f"the device pool {[s.label for s in self.slots]}")
        self.tickets.append(ticket)
        self.poll()
        return ticket

    def _take_slot(self, ticket: Ticket) -> Slot | None:
        for slot in self.free:
            if ticket.pin is None or (slot.kind == "cuda" and slot.index == ticket.pin):
                self.free.remove(slot)
                return slot
        return None

    def _start(self, ticket: Ticket, slot: Slot) -> None:
        import submitit

        ex = submitit.LocalExecutor(folder=ticket.folder)
        params = {"timeout_min": self.timeout_min}
        if slot.kind == "cuda":
            gpus = list(slot.gpus or (slot.index,))
            params.update(gpus_per_node=len(gpus), visible_gpus=gpus)
        if ticket.ranks > 1:  # a data-parallel training: one process per rank (submitit tasks)
            params.update(tasks_per_node=ticket.ranks)
        ex.update_parameters(**params)
        # the controller copies os.environ at submission: set the slot's threads for the job
        with _env({k: v for k, v in slot.env().items() if k != "CUDA_VISIBLE_DEVICES"}):
            ticket.job = ex.submit(ticket.fn, *ticket.args, slot)
        ticket.slot, ticket.state, ticket.started = slot, "running", time.time()

    def poll(self) -> list[Ticket]:
        """Collect finished jobs, start queued ones on free slots; return tickets that ended."""
        ended = []
        for t in self.tickets:
            if t.state == "running" and t.job.done():
                collect(t)
                self.free.append(t.slot)
                ended.append(t)
        for t in self.tickets:
            if t.state == "queued":
                slot = self._take_slot(t)
                if slot is not None:
                    self._start(t, slot)
        return ended

    def cancel_all(self, wait_s: float = 20) -> None:
        """Stop every running job and wait for its processes to end (Ctrl-C of the study)."""
        running = [t for t in self.tickets if t.state == "running"]
        for t in running:  # SIGINT to submitit's controller, which interrupts then kills the job
            with contextlib.suppress(Exception):
                t.job.cancel(check=False)
        end = time.time() + wait_s
        while time.time() < end and not all(_ended(t) for t in running):
            time.sleep(0.1)
        for t in running:
            if not _ended(t):  # last resort: the controller did not stop in time; its job
                with contextlib.suppress(Exception):  # processes too, or they run on orphaned
                    _kill_tree(t.job._process.pid)
        for t in self.tickets:
            if not t.finished:
                t.state = "cancelled"

    @property
    def busy(self) -> bool:
        return any(not t.finished for t in self.tickets)


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc; elsewhere none are found)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_descendants(pid: int) -> int:
    """SIGKILL every process below `pid` (not `pid` itself); returns how many there were."""
    found = _descendants(pid)
    for p in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, 9)
    return len(found)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it (found first, then all killed)."""
    kill_descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 9)


def _ended(t: Ticket) -> bool:
    try:
        return bool(t.job.done())
    except Exception:  # a job whose files vanished counts as ended
        return True


def collect(t: Ticket) -> None:
    """Record a finished job's result, or its error line (the log path is `t.log_path`)."""
    t.ended = time.time()
    try:
        t.result = t.job.results()[0]  # a job of several tasks (ranks): rank 0's
        t.state = "done"
    except Exception as e:  # submitit raises FailedJobError / UncompletedJobError
        t.state = "failed"
        t.error = _last_error_line(str(e)) or type(e).__name__


def _last_error_line(text: str) -> str | None:
    """The exception line of a submitit failure: its message is the job's traceback between
    two dashed rules, followed by the log paths."""
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    rules = [i for i, ln in enumerate(lines) if ln.startswith("-----")]
    if len(rules) >= 2 and rules[1] > rules[0] + 1:
        return lines[rules[1] - 1].strip()
    errors = [ln for ln in lines if not ln.startswith((" ", "-", "You can"))]
    return errors[-1].strip() if errors else None


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
