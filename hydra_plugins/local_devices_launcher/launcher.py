"""The local_devices launcher: hydra-submitit-launcher's job function, run through the study's
device queue instead of one LocalExecutor that gives every job all the GPUs at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def device_pin(overrides: Sequence[str]) -> tuple[int | None, bool]:
    """(GPU index a job's `device=` override asks for, whether it asks for the CPU)."""
    from explore.core.devices import parse_device

    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") != "device":
            continue
        parsed = parse_device(value)
        return (parsed, False) if isinstance(parsed, int) else (None, parsed == "cpu")
    return None, False


def with_slot(overrides: Sequence[str], slot) -> list[str]:
    """The job's overrides with `device=` pointing at its slot (a pinned GPU N is visible as
    cuda:0 inside the job, so device=N becomes device=0)."""
    pin, cpu = device_pin(overrides)
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+") != "device"]
    return [*rest, "device=cpu" if cpu else f"device={slot.device_arg}"]


class LocalDevicesLauncher(BaseSubmititLauncher):
    _EXECUTOR = "local"

    def run_on_slot(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state,
                    slot) -> JobReturn:
        """In the job process: threads of the slot, device of the slot, then Hydra's job."""
        import torch

        torch.set_num_threads(max(1, slot.threads))
        return self(with_slot(sweep_overrides, slot), job_dir_key, job_num, job_id,
                    singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from launch.pool import DeviceQueue, Ticket, make_slots

        assert self.config is not None
        p = self.params
        devices = p.get("devices")
        if devices is None:
            devices = OmegaConf.select(self.config, "device", default="auto")
        queue = DeviceQueue(make_slots(devices, p.get("cpu_jobs")), p.get("timeout_min", 43200))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("local_devices: %d job(s) on %s, sweep dir %s", len(job_overrides),
                 [s.label for s in queue.slots], sweep_dir)

        tickets = []
        for k, overrides in enumerate(job_overrides):
            idx = initial_job_idx + k
            pin, _ = device_pin(overrides)
            # submitit's folder per job; %j becomes the local job id
            folder = Path(str(p["submitit_folder"]).replace("%j", f"job{idx}"))
            tickets.append(queue.submit(Ticket(
                f"#{idx}", self.run_on_slot,
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                 Singleton.get_state()), folder, pin=pin)))
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        try:
            started: set[str] = set()
            while queue.busy:
                ended = queue.poll()  # collects finished jobs, starts queued ones
                for t in tickets:  # starts first: a short job can start and end in one poll
                    if t.slot is not None and t.name not in started:
                        log.info("%s started on %s", t.name, t.slot.label)
                        started.add(t.name)
                for t in ended:
                    self._report(t)
                time.sleep(float(p.get("poll_s", 1.0)))
        except KeyboardInterrupt:
            queue.cancel_all()
            log.error("interrupted: every job was stopped")
            raise
        return [self._job_return(t, overrides) for t, overrides in zip(tickets, job_overrides)]

    @staticmethod
    def _report(t) -> None:
        failed = isinstance(t.result, JobReturn) and t.result.status == JobStatus.FAILED
        if t.state == "done" and failed:  # the job's task raised: Hydra caught it in the job
            log.error("%s failed on %s: %s: %s", t.name, t.slot.label,
                      type(t.result._return_value).__name__, t.result._return_value)
        elif t.state == "done":
            log.info("%s done on %s (%.0f s)", t.name, t.slot.label, t.ended - t.started)
        else:
            log.error("%s %s on %s: %s; log: %s", t.name, t.state, t.slot.label, t.error,
                      t.log_path)

    @staticmethod
    def _job_return(t, overrides) -> JobReturn:
        if t.state == "done" and isinstance(t.result, JobReturn):
            return t.result
        # a job that died (sys.exit, a signal): Hydra raises this after every job has finished
        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        ret._return_value = RuntimeError(f"job {t.name} ({' '.join(overrides)}) {t.state}: "
                                         f"{t.error}; log: {t.log_path}")
        return ret
