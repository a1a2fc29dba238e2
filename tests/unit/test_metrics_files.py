"""Reading the workers' metric files, and folding dead workers' counters and histograms into
the archives: no scrape fails on a starting worker, or sees a total go down or count twice."""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from gateway.errors import ConfigError
from gateway.metrics import worker_files_registry
from gateway.metrics_dir import LOCK_FILE, encode_values, fold_dead_workers
from gateway.server import prepare_metrics_dir
from gateway.settings import Settings
from tests.conftest import PROJECT_ROOT
from tests.private_mounts import (
    fill,
    in_private_namespace,
    mounted_tmpfs,
    rerun_in_private_namespace,
)

# A worker's collectors, as a process in multiprocess mode writes them.
_WORKER = textwrap.dedent("""
    import sys
    from prometheus_client import Counter, Histogram
    done = Counter("demo", "Things done.", ["kind"])
    seconds = Histogram("demo_seconds", "Time per thing.", buckets=(0.01, 0.1, 1.0))
    for value in sys.argv[1:]:
        done.labels("a").inc()
        seconds.observe(float(value))
""")


def run_worker(directory: Path, observations: list[float]) -> int:
    """Run a process that counts ``observations`` into ``directory`` and exits; its pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    process = subprocess.Popen([sys.executable, "-c", _WORKER, *map(repr, observations)],
                               env=env)
    assert process.wait(timeout=60) == 0
    return process.pid


Key = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and labels


def totals(directory: Path) -> dict[Key, float]:
    """Every sample a scrape of ``directory`` shows, by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in worker_files_registry(str(directory)).collect()
            for s in metric.samples}


def assert_same_totals(after: dict[Key, float], before: dict[Key, float]) -> None:
    """Every count is the same; a sum of observations may be one unit in the last place
    above (the archive's totals are rounded up), never below."""
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key[0].endswith("_sum"):
            assert value <= after[key] <= math.nextafter(value, math.inf), key
        else:
            assert after[key] == value, key


def worker_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.db") if "archive" not in p.name)


def fold(directory: Path, *pids: int) -> None:
    """Fold as the master does: again until no scrape holds the lock."""
    while not fold_dead_workers(str(directory), pids):
        os.sched_yield()


def test_a_file_a_starting_worker_has_not_sized_yet_is_left_out(tmp_path: Path) -> None:
    """A new worker creates its file empty and sizes it a moment later; a scrape in that
    moment failed with struct.error. The empty file is skipped; the others are merged."""
    written = MmapedDict(str(tmp_path / "counter_101.db"))
    written.write_value(mmap_key("sealgate_demo", "sealgate_demo_total", [], [], "demo"), 3.0, 0)
    written.close()
    (tmp_path / "counter_102.db").touch()  # the starting worker's file
    samples = [s for metric in worker_files_registry(str(tmp_path)).collect()
               for s in metric.samples if s.name == "sealgate_demo_total"]
    assert [s.value for s in samples] == [3.0]


def test_a_dead_workers_counts_stay_when_its_files_are_folded(tmp_path: Path) -> None:
    """Counters and histograms of exited workers are the same after the fold, which leaves
    their files gone and one archive per type; a second fold adds to the archive."""
    first = run_worker(tmp_path, [0.005, 0.05, 0.5, 3.1])
    second = run_worker(tmp_path, [0.02, 0.7])
    before = totals(tmp_path)
    assert before[("demo_total", (("kind", "a"),))] == 6
    assert before[("demo_seconds_count", ())] == 6

    fold(tmp_path, first)
    assert_same_totals(totals(tmp_path), before)
    assert worker_files(tmp_path) == [f"counter_{second}.db", f"histogram_{second}.db"]
    fold(tmp_path, second)
    assert_same_totals(totals(tmp_path), before)
    assert worker_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_archive.db", "histogram_archive.db"]


def test_a_fold_waits_while_a_scrape_reads(tmp_path: Path) -> None:
    """While a scrape holds the lock shared the fold changes nothing and says so; once it
    is released the fold goes through."""
    pid = run_worker(tmp_path, [0.5])
    with (tmp_path / LOCK_FILE).open("a") as scrape:
        fcntl.flock(scrape, fcntl.LOCK_SH)
        assert fold_dead_workers(str(tmp_path), [pid]) is False
        assert worker_files(tmp_path) == [f"counter_{pid}.db", f"histogram_{pid}.db"]
    assert fold_dead_workers(str(tmp_path), [pid]) is True
    assert worker_files(tmp_path) == []


def dead_workers_like(templates: list[int], source: Path, directory: Path,
                      first_pid: int, count: int) -> list[int]:
    """``count`` dead workers in ``directory`` that ran like the ``templates`` in ``source``
    (their files copied under new pids, in turn)."""
    pids = list(range(first_pid, first_pid + count))
    for n, pid in enumerate(pids):
        for kind in ("counter", "histogram"):
            template = templates[n % len(templates)]
            shutil.copy(source / f"{kind}_{template}.db", directory / f"{kind}_{pid}.db")
    return pids


def test_no_sum_goes_down_one_unit_in_the_last_place_when_workers_are_folded(
    tmp_path: Path,
) -> None:
    """Folding moves a dead worker's additions to another place in the order; the totals
    are exact sums, and the archive is rounded up, so a histogram's _sum never drops by a
    rounding (Prometheus would read that as a reset)."""
    chance = random.Random(7)
    templates = tmp_path / "templates"
    templates.mkdir()
    made = [run_worker(templates, [10 ** chance.uniform(-4, 1) for _ in range(n)])
            for n in (1, 2, 3, 5, 8)]
    directory = tmp_path / "metrics"
    directory.mkdir()
    pids = dead_workers_like(made, templates, directory, 100_000, 60)
    seen = totals(directory)
    chance.shuffle(pids)
    for pid in pids:
        fold(directory, pid)
        now = totals(directory)
        assert {k: v for k, v in now.items() if v < seen[k]} == {}
        seen = now
    assert worker_files(directory) == []


_SCRAPER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from gateway.metrics import worker_files_registry

    directory, stop, progress = sys.argv[1:]
    seen = {}
    scrapes = 0
    while not Path(stop).exists():
        for metric in worker_files_registry(directory).collect():
            for s in metric.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if s.value < seen.get(key, 0.0):
                    sys.exit(f"{key} went down from {seen[key]!r} to {s.value!r}")
                seen[key] = s.value
        scrapes += 1
        Path(progress).write_text(str(scrapes))
""")


@pytest.fixture
def scraper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A process that scrapes ``tmp_path / "metrics"`` in a loop until ``stop`` is
    created, exits non-zero at the first total that went down, and counts its scrapes in
    ``progress``."""
    directory, stop, progress = tmp_path / "metrics", tmp_path / "stop", tmp_path / "progress"
    directory.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    process = subprocess.Popen(
        [sys.executable, "-c", _SCRAPER, str(directory), str(stop), str(progress)],
        env=env, cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        yield process, progress
    finally:
        stop.touch()
        process.wait(timeout=60)


def test_a_scrape_during_folds_never_sees_a_total_go_down_or_count_twice(
    tmp_path: Path, scraper: tuple[subprocess.Popen[str], Path]
) -> None:
    """Another process scrapes in a loop while 150 dead workers' files appear and are
    folded one after the other: no total ever goes down, and the last is the exact sum."""
    process, progress = scraper
    directory = tmp_path / "metrics"
    templates = tmp_path / "templates"
    templates.mkdir()
    chance = random.Random(11)
    made = [run_worker(templates, [chance.uniform(0, 2) for _ in range(3)]) for _ in range(3)]
    for pid in range(100_000, 100_150):
        dead_workers_like(made, templates, directory, pid, 1)
        scrapes = progress.read_text() if progress.exists() else ""
        fold(directory, pid)
        while (progress.read_text() if progress.exists() else "") == scrapes:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            os.sched_yield()  # one more scrape has overlapped this fold or followed it
    assert totals(directory)[("demo_seconds_count", ())] == 150 * 3
    assert worker_files(directory) == []
    assert process.poll() is None, process.stderr.read() if process.stderr else ""


def test_the_start_empties_what_folds_left_and_keeps_the_lock(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archives, an archive a stopped master was writing and the lock file are the
    metrics' own: a start after a fold empties the directory instead of refusing it."""
    directory = tmp_path / "metrics"
    settings = settings.replace(
        metrics=dataclasses.replace(settings.metrics, multiprocess_dir=str(directory)))
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # the start sets it: undone after
    for name in ("counter_archive.db", "histogram_archive.db", "counter_archive.db.new",
                 "counter_12.db", LOCK_FILE):
        (directory / name).write_bytes(b"")
    prepare_metrics_dir(settings)
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_FILE]
    (directory / "sealgate.db").touch()
    with pytest.raises(ConfigError, match=r"sealgate\.db"):
        prepare_metrics_dir(settings)


def test_an_archive_is_laid_out_as_prometheus_client_lays_out_its_files(
    tmp_path: Path,
) -> None:
    """The archive, written with ordinary writes, holds the bytes prometheus_client's own
    writer puts in the used part of a file (keys of every padding, UTF-8, infinities), and
    its reader reads them back."""
    values = {f"{'k' * length}é": float(length) for length in range(1, 17)}
    values |= {"": 0.5, "up": math.inf, "down": -math.inf, "tiny": 5e-324}
    written = MmapedDict(str(tmp_path / "counter_1.db"))
    for key, value in values.items():
        written.write_value(key, value, 0.0)
    written.close()
    theirs = (tmp_path / "counter_1.db").read_bytes()
    ours = encode_values(values)
    assert ours == theirs[:len(ours)]
    assert theirs[len(ours):].strip(b"\0") == b""
    (tmp_path / "counter_2.db").write_bytes(ours)
    read = MmapedDict.read_all_values_from_file(str(tmp_path / "counter_2.db"))
    assert {key: value for key, value, _, _ in read} == values
    assert encode_values({}) == (8).to_bytes(4, sys.byteorder) + bytes(4)


def test_a_fold_on_a_full_file_system_fails_and_changes_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On a full tmpfs the fold raises ENOSPC (it wrote the archive through an mmap, and
    the process died of SIGBUS): the dead worker's files and the archive stay as they
    were, and nothing half-written is left."""
    if not in_private_namespace(request):
        rerun_in_private_namespace(request, tmp_path)
        return
    with mounted_tmpfs(tmp_path / "metrics", "512k") as directory:
        fold(directory, run_worker(directory, [0.5]))
        archives = {p.name: p.read_bytes() for p in directory.glob("*_archive.db")}
        dead = MmapedDict(str(directory / "counter_101.db"))
        for n in range(1500):  # an archive of more than a page
            dead.write_value(mmap_key("demo", "demo_total", ["n"], [str(n)], "demo"), 1.0, 0)
        dead.close()
        before = totals(directory)
        fill(directory)
        with pytest.raises(OSError, match="No space left"):
            fold_dead_workers(str(directory), [101])
        assert {p.name: p.read_bytes() for p in directory.glob("*_archive.db")} == archives
        assert worker_files(directory) == ["counter_101.db"]
        assert not list(directory.glob("*.new"))
        assert totals(directory) == before


NOBODY = 65534


def as_nobody(action: Callable[[], None]) -> None:
    """Run ``action`` in a forked child as uid and gid 65534; fail with its error. The
    test runs as root, the action as the user a gateway serves as."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as two users")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        os.close(reader)
        failed = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
        except BaseException:  # pytest's failures too
            os.write(writer, traceback.format_exc().encode())
            failed = 1
        os._exit(failed)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        error = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, error


@pytest.fixture
def nobodys_directory() -> Iterator[Path]:
    """An empty directory of uid 65534's, holding a lock file root left, 0600 (a run as
    root with umask 077)."""
    with tempfile.TemporaryDirectory() as parent:  # not under pytest's root-only tree
        directory = Path(parent) / "metrics"
        directory.mkdir()
        os.chown(directory, NOBODY, NOBODY)
        os.close(os.open(directory / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(parent, 0o711)  # noqa: S103  # uid 65534 must pass through to it
        yield directory


def test_the_start_makes_the_lock_file_anew_as_the_serving_user(
    settings: Settings, nobodys_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock file root left (0600) is replaced at start by one of the serving user's,
    0644 whatever the umask, and folds and scrapes lock it (it was kept, every scrape
    failed with PermissionError and no fold ever ran)."""
    directory = nobodys_directory
    settings = settings.replace(
        metrics=dataclasses.replace(settings.metrics, multiprocess_dir=str(directory)))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # the start sets it: undone after
    pid = run_worker(directory, [0.5])  # root's files, the start's to remove

    def start_fold_and_scrape() -> None:
        os.umask(0o077)
        prepare_metrics_dir(settings)
        assert worker_files(directory) == []
        dead = MmapedDict(str(directory / f"counter_{pid}.db"))
        dead.write_value(mmap_key("demo", "demo_total", [], [], "Things done."), 2.0, 0)
        dead.close()
        with (directory / LOCK_FILE).open() as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)  # a scrape's lock: the fold waits for it
            assert fold_dead_workers(str(directory), [pid]) is False
        assert fold_dead_workers(str(directory), [pid]) is True
        assert totals(directory)[("demo_total", ())] == 2.0

    as_nobody(start_fold_and_scrape)
    lock = (directory / LOCK_FILE).stat()
    assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (NOBODY, 0o644)


def test_the_start_names_a_lock_file_it_cannot_make_anew(
    settings: Settings, nobodys_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a directory the serving user may not write to, root's lock file cannot be
    replaced: the start refuses with a ConfigError naming it (it started, and no scrape
    could lock)."""
    directory = nobodys_directory
    os.chown(directory, 0, 0)
    settings = settings.replace(
        metrics=dataclasses.replace(settings.metrics, multiprocess_dir=str(directory)))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")

    def start() -> None:
        with pytest.raises(ConfigError, match=r"cannot make fold\.lock anew"):
            prepare_metrics_dir(settings)

    as_nobody(start)


def test_a_scrape_reads_without_a_lock_file_it_cannot_open(nobodys_directory: Path) -> None:
    """A scrape by a user who may not open the lock file answers, with every total (it
    failed with PermissionError: /metrics answered 500)."""
    directory = nobodys_directory
    run_worker(directory, [0.5, 0.05])
    expected = totals(directory)
    assert expected[("demo_total", (("kind", "a"),))] == 2

    def scrape() -> None:
        assert totals(directory) == expected

    as_nobody(scrape)
