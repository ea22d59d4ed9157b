"""UpdateFirmware for the gateway itself (OCPP 1.6 §5.19), carried out: the thin I/O around gateway.firmware.

The runner waits for retrieveDate (wall time, looked at again every DUE_RECHECK_S, since NTP
may move it), downloads with gateway.file_transfer (retries, retryInterval), verifies the
checksum the location's fragment gave, installs with config.firmware.install_command, and
sends a FirmwareStatusNotification (§4.5) at every step. Each step is kept in SQLite
(Store.save_state) before it is reported, so a restart resumes where it was: waiting waits
again, a download starts again (the failed attempts still count), a verified image is
installed, and an install cut short is judged by the version running afterwards
(gateway.firmware.Update.interrupted_install). The final status is sent again after a
restart until the backend has answered it: notifications travel in memory
(Uplink.notify), and only the final one matters to the backend.

Files, under the state directory (config.storage.path.parent / "firmware"):
  incoming/<name>   the image being updated to (its .part while it downloads);
  installed/<name>  the image the last successful update installed: the way back.

Rollback. The install command is given the image's path; it must install it whole and exit
0, or exit non-zero (or time out, install_timeout_s, after which its process group is
killed). When it fails, the runner runs the same command again with the kept image from
installed/, which puts the previous version back (installing an older package is what a
package manager does anyway: `dpkg -i` downgrades), and only then reports
InstallationFailed, so the backend hears of a box that is settled again. The rollback is kept
as a step of its own (ROLLING_BACK): a restart in its middle ends the update, it does not start
the rollback again (which, restarting the daemon again, would loop). The kept image is
replaced only once a new one installed successfully. Without a kept image (the first update
after the factory install: the package itself is not at hand) there is nothing to go back to:
that is logged and raised as an alarm, as is a rollback that fails, for a technician.

Restart. A new image runs only in a new process. After Installed the runner gives the
notification REPORT_WAIT_S to reach the backend, then `run` returns and the daemon restarts
itself as after a soft Reset, but without stopping transactions: the slaves keep charging at
their last current through the few seconds of the restart, and the daemon resumes open
sessions as after any restart. So the install does not wait for sessions to end (§5.19
recommends that only where charging cannot go on during an install). The install command
should not restart the service itself; if it does (a package's postinst), the restarted
daemon finds the install cut short and reports Installed when its version changed,
InstallationFailed (and rolls back, once) when it did not.

A new UpdateFirmware replaces the one under way (its download stops) unless that one is
installing or waiting for its restart: then the new one waits, kept, and starts after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ocpp.v16.enums import FirmwareStatus

from gateway import __version__
from gateway.clock import Clock, iso
from gateway.errors import StoreError
from gateway.file_transfer import TransferError, download, redact
from gateway.firmware import STATUS, Checksum, Event, Step, Update, install_argv
from gateway.settings import FirmwareSettings
from gateway.store import Store

log = logging.getLogger("gateway.firmware")

# Queues a non-transaction CALL (action, payload) for the backend; the future is done once it answered.
Notify = Callable[[str, dict[str, Any]], asyncio.Future[None]]

STATE_KEY = "firmware_update"
DUE_RECHECK_S = 60.0  # while waiting for retrieveDate: how often the wall clock is read again
REPORT_WAIT_S = 30.0  # how long Installed gets to reach the backend before the restart
OUTPUT_TAIL = 2000  # characters of the install command's output that are logged
HASH_CHUNK = 1 << 20

T = TypeVar("T")


class Current:
    """The one job under way (an update, an upload), which a newer request may stop."""

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self, work: Coroutine[Any, Any, T], if_stopped: T) -> T:
        """`work`'s result, or `if_stopped` once `stop()` ended it; cancelling the caller cancels the work too."""
        task = asyncio.create_task(work)
        self._task = task
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise
            return if_stopped
        finally:
            self._task = None


class FirmwareUpdater:
    """Carries out UpdateFirmware; `run` is the daemon's task for it."""

    def __init__(
        self, settings: FirmwareSettings, directory: Path, store: Store, clock: Clock, notify: Notify, version: str = __version__
    ) -> None:
        self.settings = settings
        self.incoming = directory / "incoming"
        self.installed = directory / "installed"
        self.store = store
        self.clock = clock
        self._notify = notify
        self.version = version
        self._update: Update | None = None
        self._next: Update | None = None  # came while installing: starts after
        self._restart_pending = False  # installed in this process: the daemon must restart to run it
        self._final: asyncio.Future[None] | None = None  # delivery of the final notification of this process
        self._wanted = asyncio.Event()
        self._loaded = asyncio.Event()  # what was kept is read back: requests may replace it
        self._current = Current()

    # --- what Control asks ------------------------------------------------------------

    async def request(self, payload: Mapping[str, Any]) -> None:
        """UpdateFirmware.req (wire form): kept, then carried out by `run`. ValueError for a value that cannot be used."""
        update = Update.from_request(payload, self.settings.retry_interval_s)
        where = redact(update.source.url)
        await self._loaded.wait()
        if self._update is not None and (self._update.step.runs_installer or self._restart_pending):
            self._next = update
            await self._keep()
            log.warning("firmware update from %s will start once the install under way is over", where)
            return
        if self._update is not None and not self._update.finished:
            log.warning("firmware update under way (%s) replaced by a new UpdateFirmware", self._update.step.value)
        self._current.stop()
        self._update, self._next, self._final = update, None, None
        await self._keep()
        log.info("firmware update from %s, due %s", where, iso(update.retrieve_at))
        self._wanted.set()

    def status(self) -> FirmwareStatus:
        """What TriggerMessage FirmwareStatusNotification reports now."""
        return FirmwareStatus.idle if self._update is None else self._update.trigger_status()

    def report(self) -> None:
        """TriggerMessage (§5.17): the current status, after the answer."""
        self._notify("FirmwareStatusNotification", {"status": self.status().value})

    # --- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Carry out updates as they come; returns only once a new image is installed and reported
        (or REPORT_WAIT_S passed): the daemon then restarts to run it."""
        await self._load()
        self._loaded.set()
        while True:
            self._wanted.clear()
            update = self._update
            if update is None or (update.finished and update.reported):
                if self._next is not None:
                    self._update, self._next = self._next, None
                    await self._keep()
                    continue
                await self._wanted.wait()
                continue
            if await self._current.run(self._carry_out(), if_stopped=False):
                log.warning("firmware installed: restarting to run it")
                return

    async def _carry_out(self) -> bool:
        """The steps of the current update to its end; True: it was installed in this process."""
        while self._update is not None and not self._update.finished:
            step = self._update.step
            if step is Step.WAITING:
                await self._until_due(self._update)
                await self._advance(Event.DUE)
            elif step is Step.DOWNLOADING:
                await self._download(self._update)
            elif step is Step.DOWNLOADED:
                await self._install(self._update)
            elif step is Step.INSTALLING:  # only after a restart: the install was cut short
                await self._judge_interrupted_install(self._update)
            else:  # ROLLING_BACK, only after a restart: the rollback was cut short
                await self._rollback_cut_short(self._update)
        return await self._finish()

    async def _until_due(self, update: Update) -> None:
        if (wait := update.wait_s(self.clock.wall())) > 0:
            log.info("firmware download due at %s, in %.0f s", iso(update.retrieve_at), wait)
        while (wait := update.wait_s(self.clock.wall())) > 0:
            await asyncio.sleep(min(wait, DUE_RECHECK_S))

    async def _download(self, update: Update) -> None:
        source = update.source
        image = self.incoming / source.file_name
        attempt = f"attempt {update.failures + 1} of {update.retries.attempts}"
        try:
            await asyncio.to_thread(_clear, self.incoming)
            size = await download(source.url, image, self.settings.download_timeout_s)
            await self._verify(image, source.checksum)
        except (TransferError, OSError) as exc:
            event = update.attempt_failed()
            log.warning("firmware download %s failed: %s", attempt, exc)
            await self._advance(event)
            if event is Event.RETRY:
                await asyncio.sleep(update.retries.interval_s)
            return
        log.info("firmware image %s downloaded (%d bytes, %s)", image.name, size, attempt)
        await self._advance(Event.VERIFIED)

    async def _verify(self, image: Path, checksum: Checksum | None) -> None:
        if checksum is None:
            log.warning("firmware image %s comes with no checksum (location#sha256=...): not verified", image.name)
            return
        digest = await asyncio.to_thread(_digest, image, checksum.algorithm)
        if not checksum.matches(digest):
            image.unlink(missing_ok=True)
            raise TransferError(f"{checksum.algorithm} of the image is {digest}, the location says {checksum.hexdigest}")
        log.info("firmware image %s: %s checksum matches", image.name, checksum.algorithm)

    async def _install(self, update: Update) -> None:
        image = self.incoming / update.source.file_name
        if not image.is_file():
            log.error("the verified firmware image %s is gone; downloading it again", image.name)
            await self._advance(Event.IMAGE_LOST)
            return
        if not self.settings.install_command:
            log.error("firmware image %s downloaded, but firmware.install_command is not set: nothing to install with", image.name)
            await self._advance(Event.NO_INSTALLER)
            return
        await self._advance_to(update.installing(self.version))
        if await self._run_install(image):
            await asyncio.to_thread(self._keep_as_installed, image)
            self._restart_pending = True
            await self._advance(Event.INSTALL_OK)
        else:
            await self._roll_back()

    async def _judge_interrupted_install(self, update: Update) -> None:
        event = update.interrupted_install(self.version)
        image = self.incoming / update.source.file_name
        if event is Event.INSTALL_OK:
            log.warning("the daemon restarted during the install; version %s (was %s): installed", self.version, update.version_before)
            if image.is_file():
                await asyncio.to_thread(self._keep_as_installed, image)
            await self._advance(event)
        else:
            log.error("the daemon restarted during the install and still runs version %s: the install failed", self.version)
            await self._roll_back()

    async def _rollback_cut_short(self, update: Update) -> None:
        if self.version == update.version_before:
            log.error("the daemon restarted while going back to version %s, which runs: not rolling back again", self.version)
        else:
            await self._alarm(
                f"firmware rollback to version {update.version_before} was cut short by a restart, and version {self.version} runs"
            )
        await self._advance(Event.ROLLED_BACK)

    async def _finish(self) -> bool:
        """Report the final status until the backend answered it (not past REPORT_WAIT_S when a restart waits)."""
        update = self._update
        assert update is not None and update.finished
        if not update.reported:
            delivered = self._final or self._report(update)
            try:
                async with asyncio.timeout(REPORT_WAIT_S if self._restart_pending else None):
                    await asyncio.shield(delivered)
            except TimeoutError:
                log.warning("%s not answered by the backend yet; it is sent again after the restart", STATUS[update.step].value)
            else:
                await self._advance_to(dataclasses.replace(update, reported=True), report=False)
        return self._restart_pending

    # --- install and rollback ---------------------------------------------------------------

    async def _run_install(self, image: Path) -> bool:
        """Run the install command on `image`; True when it exited 0 within install_timeout_s."""
        argv = install_argv(self.settings.install_command, str(image))
        log.warning("installing %s: %s", image.name, " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout ends whatever it started too
            )
        except OSError as exc:
            log.error("install command %s cannot run: %s", argv[0], exc.strerror or exc)
            return False
        try:
            async with asyncio.timeout(self.settings.install_timeout_s):
                output, _ = await proc.communicate()
        except BaseException as exc:  # the timeout, or the daemon stops: the command does not outlive its turn
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            if not isinstance(exc, TimeoutError):
                raise
            log.error("install command did not end within %g s: killed", self.settings.install_timeout_s)
            return False
        tail = output.decode(errors="replace").strip()[-OUTPUT_TAIL:]
        if proc.returncode != 0:
            log.error("install command failed (exit %d): %s", proc.returncode, tail or "no output")
            return False
        log.info("install command done%s", f": {tail}" if tail else "")
        return True

    async def _roll_back(self) -> None:
        """The install failed: ROLLING_BACK (kept), the previous image back in, then InstallationFailed."""
        await self._advance(Event.INSTALL_FAILED)
        previous = await asyncio.to_thread(_newest, self.installed)
        if previous is None:
            await self._alarm("firmware install failed, and there is no previous image to go back to")
        else:
            log.warning("firmware install failed: going back to %s", previous.name)
            if await self._run_install(previous):
                log.warning("firmware rolled back to %s", previous.name)
            else:
                await self._alarm(f"firmware install failed, and so did going back to {previous.name}: a technician is needed")
        await self._advance(Event.ROLLED_BACK)

    def _keep_as_installed(self, image: Path) -> None:
        """The image just installed becomes the way back; the one before goes (after, so one is always there)."""
        self.installed.mkdir(parents=True, exist_ok=True)
        image.replace(self.installed / image.name)
        for old in self.installed.iterdir():
            if old.name != image.name:
                old.unlink()

    async def _alarm(self, text: str) -> None:
        log.critical("%s", text)
        try:
            await self.store.alarm(0, text, self.clock.wall())
        except StoreError as exc:
            log.error("alarm not stored: %s", exc)

    # --- state ---------------------------------------------------------------------------------

    async def _advance(self, event: Event) -> None:
        assert self._update is not None
        await self._advance_to(self._update.on(event))

    async def _advance_to(self, update: Update, report: bool = True) -> None:
        """Keep the new step, then report it if its status differs from the step's before."""
        before = self._update
        self._update = update
        await self._keep()
        if report and (before is None or STATUS[before.step] is not STATUS[update.step]):
            self._report(update)

    def _report(self, update: Update) -> asyncio.Future[None]:
        delivered = self._notify("FirmwareStatusNotification", {"status": STATUS[update.step].value})
        if update.finished:
            self._final = delivered
        return delivered

    async def _keep(self) -> None:
        state = {
            "update": None if self._update is None else self._update.to_json(),
            "next": None if self._next is None else self._next.to_json(),
        }
        try:
            await self.store.save_state(STATE_KEY, state)
        except StoreError as exc:  # a full disk: the update goes on, a restart would not resume it
            log.error("firmware update progress not kept: %s", exc)

    async def _load(self) -> None:
        try:
            data = await self.store.load_state(STATE_KEY)
            if not isinstance(data, dict):
                return
            self._update = None if data["update"] is None else Update.from_json(data["update"])
            self._next = None if data["next"] is None else Update.from_json(data["next"])
        except (StoreError, KeyError, ValueError, TypeError) as exc:
            log.error("kept firmware update could not be restored, starting without it: %s", exc)
            self._update = self._next = None
            return
        update = self._update
        if update is not None and not update.finished:
            log.warning("resuming the firmware update from %s (%s)", redact(update.location), update.step.value)
            if update.step in (Step.DOWNLOADING, Step.DOWNLOADED):
                self._report(update)  # the one sent before the restart may have been lost with it


def _clear(directory: Path) -> None:
    """An empty directory for the next download (an image left from an update given up)."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.iterdir():
        leftover.unlink()


def _digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _newest(directory: Path) -> Path | None:
    images = [p for p in directory.glob("*") if p.is_file()] if directory.is_dir() else []
    return max(images, key=lambda p: p.stat().st_mtime, default=None)
