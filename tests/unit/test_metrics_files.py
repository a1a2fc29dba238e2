"""Reading the workers' metric files: a worker that is starting must not fail a scrape."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from gateway.metrics import worker_files_registry


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
