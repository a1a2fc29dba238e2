"""What a benchmark run records besides its figures: machine, versions, ratios against targets.

The targets are those of the fast-path issue; each ratio says what it divides by what, so the
JSON file can be read without this code.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.environment import PROJECT_ROOT, load_average


@dataclass(frozen=True)
class Ratio:
    name: str
    numerator: str
    denominator: str
    value: float | None
    target: str  # e.g. ">= 0.85"; "" when the ratio is informational
    met: bool | None
    note: str = ""


def ratio(
    name: str, numerator: tuple[str, float | None], denominator: tuple[str, float | None],
    target: str = "", note: str = "",
) -> Ratio:
    top, bottom = numerator[1], denominator[1]
    value = round(top / bottom, 3) if top is not None and bottom else None
    met = None
    if target and value is not None:
        op, bound = target.split()
        met = {">=": value >= float(bound), "<=": value <= float(bound),
               "<": value < float(bound)}[op]
    if value is None and not note:
        note = "not measured in this run"
    return Ratio(name, numerator[0], denominator[0], value, target, met, note)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "load_average_at_start": load_average(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("pyHanko", "python-pkcs11", "aiohttp", "cryptography", "asn1crypto"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    found["softhsm"] = _tool_version(["softhsm2-util", "--version"])
    found["pdfsig"] = _tool_version(["pdfsig", "-v"]).removeprefix("pdfsig version ")
    found["sealgate_commit"] = _tool_version(["git", "-C", str(PROJECT_ROOT), "rev-parse",
                                              "--short", "HEAD"])
    dirty = _tool_version(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain",
                           "--untracked-files=no"])
    found["sealgate_worktree"] = "modified" if dirty else "clean"
    return found


def _tool_version(command: list[str]) -> str:
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (run.stdout or run.stderr).strip()
    return text.splitlines()[0] if text else ""


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    results["ratios"] = [asdict(r) if isinstance(r, Ratio) else r for r in results["ratios"]]
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def figures(results: dict[str, Any]) -> str:
    """The measured figures behind the ratios, one line per baseline and gateway level."""
    lines = []
    for name, runs in (("raw PKCS#11", results["ceiling_raw_pkcs11"]),
                       ("pyHanko defaults", results["alternative_pyhanko_defaults"])):
        for what, value in runs["used_per_second"].items():
            before, after = runs["before"][what]["per_second"], runs["after"][what]["per_second"]
            lines.append(f"{name} {what}: {value}/s (before {before}/s, after {after}/s)")
    for name, scenario in results["gateway"].items():
        if scenario.get("status") == "skipped":
            lines.append(f"gateway {name}: skipped ({scenario['note'][:80]})")
            continue
        for level in scenario["levels"]:
            lat = level["latency_ms"]
            rss = max(level["server"]["peak_rss_bytes_per_worker"], default=0) / 1e6
            lines.append(
                f"gateway {name} c={level['concurrency']}: {level['throughput_per_second']}/s "
                f"({level['signatures_per_second']} signatures/s), p50 {lat['p50']} ms, "
                f"p99 {lat['p99']} ms, peak RSS {rss:.0f} MB/worker, "
                f"errors {level['failures'] or 0}")
        if scenario.get("status") != "measured":
            lines.append(f"gateway {name}: WRONG ANSWERS {scenario.get('verification')}")
    floor = results.get("floor_aiohttp_sign")
    if floor and floor.get("status") == "skipped":
        lines.append(f"floor (aiohttp + C_Sign alone): not measured ({floor['note'][:80]})")
    elif floor:
        lat = floor["latency_ms"]
        answers = "verified" if floor.get("status") == "measured" else "WRONG"
        lines.append(
            f"floor (aiohttp + C_Sign alone) rsa-hash-1 c={floor['concurrency']}: "
            f"{floor['throughput_per_second']}/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
            f"answers {answers}")
    for name, run in results["half_peak"].items():
        lat = run["latency_ms"]
        lines.append(f"half peak {name} at {run['rate']}/s: p50 {lat['p50']} ms, "
                     f"p99 {lat['p99']} ms, dropped {run['dropped']}")
    memory = results["memory_100mb"]
    if memory:
        lines.append(f"100 MB PDF: worker peak RSS {memory['peak_rss_bytes'] / 1e6:.0f} MB for "
                     f"{memory['file_bytes'] / 1e6:.0f} MB, sealed {memory['sealed']}")
    return "\n".join(lines)


def table(ratios: list[Ratio]) -> str:
    """The ratios as a text table: value, target, verdict."""
    rows = [("ratio", "value", "target", "verdict")]
    for r in ratios:
        value = "-" if r.value is None else f"{r.value:.3g}"
        verdict = {True: "met", False: "MISSED", None: "-" if r.target else "info"}[r.met]
        if r.value is None:
            verdict = "skipped"
        rows.append((r.name, value, r.target or "", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.name}: {r.note}" for r in ratios if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))
