"""The multiprocess metrics directory: which files it holds, how a scrape reads them, and how
the master folds a dead worker's counters and histograms into one archive file per type.

Each worker writes ``counter_<pid>.db``, ``histogram_<pid>.db`` and ``gauge_live*_<pid>.db``
(prometheus_client's format). Once a worker is dead its live gauges are dropped
(``mark_process_dead``), but its counters and histograms must go on counting: deleting them
would lower the totals, and Prometheus would read a counter reset. Left in place, they made
every scrape read every worker that ever ran. So the master adds them, key by key, into
``counter_archive.db`` and ``histogram_archive.db`` (the same format and keys, read like any
worker's file) and deletes them.

- A scrape and a fold exclude each other through ``fold.lock``: the scrape reads the
  counter and histogram files under a shared lock, the fold replaces the archive and deletes
  the dead files under an exclusive one. A scrape therefore sees either the dead worker's
  file and the old archive, or the new archive alone: never both, never neither. The master
  only tries the lock (it must not stall its connections behind a scrape) and tries again
  at its next tick. The lock file is made anew at start, by the serving user, and never
  deleted while the gateway runs, so every process locks the same file.
  A scrape that cannot open it (another user's, put there since) reads without it and
  logs why: the fold, by the same user, cannot open it either, so none runs meanwhile.
- Totals are exact sums rounded to the nearest double (``math.fsum``), not running sums in
  directory order: moving a dead worker's value into the archive changes the order of the
  additions, and a running sum of a histogram's ``_sum`` could come out one unit in the last
  place lower, which Prometheus also reads as a reset. The archive's totals are rounded up,
  never down, so a total after a fold is never below the one before.
- The new archive is written beside the old (``.db.new``, which no scrape reads) and renamed
  over it; the dead files are deleted after. A master that dies between the two leaves a
  dead worker counted twice, but its workers end with it (their channel closes), and the
  next start empties the directory: a new gateway's counters start at zero anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import math
import os
import re
import struct
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from fractions import Fraction

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger(__name__)

LOCK_FILE = "fold.lock"
# The metric types whose values add up over processes: a dead worker's are folded.
SUMMED_TYPES = ("counter", "histogram")
_ARCHIVE = "archive"
_BEING_WRITTEN = ".new"
# prometheus_client's files (counter_<pid>.db, gauge_livesum_<pid>.db, ...), the archives,
# and an archive a fold was writing.
_METRICS_FILE = re.compile(r"[a-z_]+_(\d+|archive)\.db(\.new)?")
# A metric file starts with its used length (4 bytes) and padding (4 bytes).
_FILE_HEADER_BYTES = 8


def is_metrics_file(name: str) -> bool:
    """Whether ``name`` is a file the metrics write (the lock file is not: see
    ``make_lock_file``)."""
    return bool(_METRICS_FILE.fullmatch(name))


class WorkerFiles:
    """A collector of every worker's metric files and the archives, as one process's view.

    A worker that is starting creates its file empty and sizes it a moment later; read in
    that moment, the file failed the whole scrape (``struct.error``). It has no samples yet,
    so it is left out. A live gauge file removed between listing and reading is
    prometheus_client's to skip (``mark_process_dead``).
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        with _scrape_lock(self._directory):
            files = _ready_files(self._directory)
            summed = {kind: _values_by_key(paths) for kind, paths in _summed_files(files).items()}
        others = [path for path in files if _metric_type(path) not in SUMMED_TYPES]
        # prometheus_client ships the merge without annotations.
        merged: Iterable[Metric] = multiprocess.MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            others, accumulate=True)
        return [*merged, *_exact_totals(summed)]


def fold_dead_workers(directory: str, pids: Collection[int]) -> bool:
    """Add the counters and histograms of the dead workers ``pids`` to the archives and
    delete their files. False, with nothing changed, while a scrape is reading: try later.

    Only for processes that have exited (waited for): a live one would go on counting in a
    file no scrape reads any more.
    """
    with _fold_lock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB) as locked:
        if not locked:
            return False
        for kind in SUMMED_TYPES:
            _fold_type(directory, kind, pids)
        return True


def _fold_type(directory: str, kind: str, pids: Collection[int]) -> None:
    dead = [path for path in (os.path.join(directory, f"{kind}_{pid}.db") for pid in pids)
            if os.path.exists(path)]
    if not dead:
        return
    archive = os.path.join(directory, f"{kind}_{_ARCHIVE}.db")
    sources = [path for path in [archive, *dead] if _is_ready(path)]
    totals = {key: _exact_sum(values, round_up=True)
              for key, values in _values_by_key(sources).items()}
    being_written = archive + _BEING_WRITTEN
    _write_values(being_written, totals)
    os.replace(being_written, archive)
    for path in dead:
        os.unlink(path)


def make_lock_file(directory: str) -> None:
    """Make the lock file anew, this process's and readable by all (0644 whatever the
    umask), while no scrape or fold can run (at start): one left by a run as another user
    (root's, 0600) was kept, and no scrape or fold of the serving user could open it."""
    path = os.path.join(directory, LOCK_FILE)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(descriptor, 0o644)
    finally:
        os.close(descriptor)


def _fold_lock(directory: str, operation: int) -> contextlib.AbstractContextManager[bool]:
    """``flock`` on the directory's lock file; yields False when a non-blocking try fails."""
    return _locked(_open_lock_file(directory), operation)


def _scrape_lock(directory: str) -> contextlib.AbstractContextManager[object]:
    """The lock shared, or none when the lock file cannot be opened (logged): see the
    module's description."""
    try:
        descriptor = _open_lock_file(directory)
    except OSError as exc:
        log.warning("a scrape of %s reads without the fold lock: %s", directory, exc)
        return contextlib.nullcontext()
    return _locked(descriptor, fcntl.LOCK_SH)


def _open_lock_file(directory: str) -> int:
    # Made at start (make_lock_file); made again if something has removed it since.
    return os.open(os.path.join(directory, LOCK_FILE), os.O_RDONLY | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _locked(descriptor: int, operation: int) -> Iterator[bool]:
    """``flock`` on ``descriptor``, closed after. Closing releases the lock, also when the
    process dies."""
    try:
        try:
            fcntl.flock(descriptor, operation)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(descriptor)


def _ready_files(directory: str) -> list[str]:
    return [path for path in glob.glob(os.path.join(directory, "*.db")) if _is_ready(path)]


def _is_ready(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _FILE_HEADER_BYTES
    except FileNotFoundError:
        return False


def _metric_type(path: str) -> str:
    # As prometheus_client reads it: the name up to the first underscore.
    return os.path.basename(path).split("_", 1)[0]


def _summed_files(files: Iterable[str]) -> dict[str, list[str]]:
    by_type: dict[str, list[str]] = defaultdict(list)
    for path in files:
        if (kind := _metric_type(path)) in SUMMED_TYPES:
            by_type[kind].append(path)
    return by_type


def _exact_totals(values_by_type: dict[str, dict[str, list[float]]]) -> Iterable[Metric]:
    """The metrics of each key's exact total (type -> key -> values in the files).

    Built as prometheus_client's merge builds them from the files (a sample per key, its
    labels a sorted tuple), and finished by its own step that makes histogram buckets
    cumulative and adds their counts. With one addend per sample its running sums are
    exact.
    """
    metrics: dict[str, Metric] = {}
    for kind, values_by_key in values_by_type.items():
        for key, values in values_by_key.items():
            metric_name, name, labels, help_text = json.loads(key)
            metric = metrics.setdefault(metric_name, Metric(metric_name, help_text, kind))
            # A tuple where the annotation says dict: the next step wants it so.
            metric.add_sample(name, tuple(sorted(labels.items())),  # type: ignore[arg-type]
                              _exact_sum(values, round_up=False))
    # The second half of MultiProcessCollector.merge (the first reads the files).
    accumulated: Iterable[Metric] = multiprocess.MultiProcessCollector._accumulate_metrics(  # type: ignore[no-untyped-call]
        metrics, accumulate=True)
    return accumulated


def _values_by_key(paths: Iterable[str]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        # prometheus_client ships its file reader without annotations.
        for key, value, _, _ in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
            values[key].append(value)
    return values


def _write_values(path: str, values: dict[str, float]) -> None:
    """A new file holding ``values`` in prometheus_client's format (a leftover is replaced:
    prometheus_client would add to it).

    Written with ordinary writes, not through prometheus_client's mmap: on a full file
    system (a tmpfs directory, say) a write to a mapped page is a SIGBUS, which killed the
    master and the whole gateway; a write() is an OSError. What was written of a file that
    failed is removed, to give its space back.
    """
    encoded = encode_values(values)
    try:
        with open(path, "wb") as file:
            file.write(encoded)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def encode_values(values: dict[str, float]) -> bytes:
    """``values`` as prometheus_client's ``MmapedDict`` lays them out in a file, timestamps
    0: the bytes used (4) and padding (4), then for each key its length (4), the key in
    UTF-8 padded with spaces to 8-byte alignment (one to eight spaces), the value and the
    timestamp (8 each). Its reader stops at the bytes used, so the file ends there."""
    entries = []
    for key, value in values.items():
        utf8 = key.encode("utf-8")
        padded = utf8 + b" " * (8 - (len(utf8) + 4) % 8)
        entries.append(struct.pack(f"i{len(padded)}sdd", len(utf8), padded, value, 0.0))
    body = b"".join(entries)
    return struct.pack("ii", _FILE_HEADER_BYTES + len(body), 0) + body


def _exact_sum(values: list[float], *, round_up: bool) -> float:
    """The sum of ``values`` rounded once: to the nearest double, or up to the next one
    that is not below the exact sum."""
    if not all(map(math.isfinite, values)):
        return sum(values)  # an infinity or a NaN is what it is
    total = math.fsum(values)
    if round_up and Fraction(total) < sum(map(Fraction, values), Fraction(0)):
        total = math.nextafter(total, math.inf)
    return total
