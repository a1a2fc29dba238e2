"""The ops files against the real tools: promtool checks and unit-tests the alert rules and
checks the /metrics exposition; dashboard and rules name only metrics the gateway exports."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.clock import isoformat, parse
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings, load_settings
from tests.api.conftest import World
from tests.pdf_samples import one_page_pdf

pytestmark = pytest.mark.interop

CONFIG = Path(__file__).resolve().parents[2] / "config"
RULES = CONFIG / "prometheus" / "alerts.yml"
DASHBOARD = CONFIG / "grafana" / "sealgate.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

# promtool's rule unit test: series are given per minute from time 0, so time() is small and
# a valid_to of 10 days (864000 s) is within 30 days, 100 days (8640000 s) is not.
RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{gauge}{{seal_id="a",seal_name="合同专用章",instance="gw-1"}}'
        values: '864000x120'
      - series: '{gauge}{{seal_id="a",seal_name="合同专用章",instance="gw-2"}}'
        values: '864000x120'
      - series: '{gauge}{{seal_id="b",seal_name="公章",instance="gw-1"}}'
        values: '8640000x120'
      - series: '{gauge}{{seal_id="c",seal_name="财务专用章",instance="gw-1"}}'
        values: '0x120'
      - series: '{gauge}{{seal_id="d",seal_name="发票专用章",instance="gw-1"}}'
        values: '3000x120'
      - series: 'sealgate_storage_up{{instance="gw-1"}}'
        values: '1 1 0 0 0 0 0 0'
      - series: 'sealgate_storage_up{{instance="gw-2"}}'
        values: '1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 90m
        alertname: SealgateSealExpiringSoon
        exp_alerts:
          - exp_labels: {{seal_id: a, seal_name: 合同专用章, severity: warning}}
            exp_annotations:
              summary: "Seal 合同专用章 (a) expires within 30 days"
              description: >-
                It stops signing in 9d 22h 30m 0s, when its filing validity or its
                certificate ends; file a renewal, or a change for a new certificate.
      - eval_time: 90m
        alertname: SealgateSealExpired
        exp_alerts:
          - exp_labels: {{seal_id: d, seal_name: 发票专用章, severity: critical}}
            exp_annotations:
              summary: "Seal 发票专用章 (d) has expired"
              description: >-
                Its filing validity or its certificate ended 40m 0s ago; it signs nothing
                until a renewal, or a change for a new certificate, is approved.
      - eval_time: 6m
        alertname: SealgateStorageDown
        exp_alerts:
          - exp_labels: {{instance: gw-1, severity: critical}}
            exp_annotations:
              summary: "Storage backend unreachable from gw-1"
              description: >-
                The storage probe (SQLite file or Redis) has failed for a minute; requests
                that need storage answer 503 storage-unavailable.
      - eval_time: 2m
        alertname: SealgateStorageDown
        exp_alerts: []
"""


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
async def exposition(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> AsyncIterator[str]:
    """/metrics of a gateway that has sealed a document and refused a request."""
    async with World.running(settings, hsm, dev_ca) as world:
        seal = await world.active_seal()
        _, headers = await world.client("signer", [seal["id"]])
        signed = await world.http.post(
            f"/v1/seals/{seal['id']}/sign/pdf", data=one_page_pdf(),
            headers={**headers, "Content-Type": "application/pdf", "Idempotency-Key": "m-1"})
        assert signed.status == 200
        await world.http.get("/v1/seals", headers={"Authorization": "Bearer sg_unknown"})
        yield await (await world.http.get("/metrics")).text()


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` accepts config/prometheus/alerts.yml."""
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """Rule unit tests: a seal 10 days from its end alerts (once, over two instances), one
    100 days away, inactive or already expired does not, the expired one alerts as such;
    storage down alerts after its minute."""
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(rules=json.dumps(str(RULES)),
                                       gauge="sealgate_seal_valid_to_timestamp_seconds"))
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
async def test_promtool_accepts_the_metrics_exposition(exposition: str) -> None:
    """`promtool check metrics` accepts what /metrics serves."""
    checked = promtool("check", "metrics", stdin=exposition)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def metric_names(expressions: list[str]) -> set[str]:
    names = set(re.findall(r"\bsealgate_[a-z_]+", " ".join(expressions)))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


async def test_dashboard_and_rules_name_only_exported_metrics(exposition: str) -> None:
    """Every sealgate_* metric a panel or rule queries is one the gateway exports."""
    exported = set(re.findall(r"^# TYPE (sealgate_[a-z_]+) ", exposition, re.MULTILINE))
    # Counters are declared without their _total suffix in the TYPE line.
    exported |= {name + "_total" for name in exported}
    dashboard = json.loads(DASHBOARD.read_text())
    panel_queries = [target["expr"] for panel in dashboard["panels"]
                     for target in panel.get("targets", [])]
    assert panel_queries
    rule_queries = re.findall(r"expr: [|>-]*\s*(.+?)(?=\n\s+(?:for|labels):)", RULES.read_text(),
                              re.DOTALL)
    assert len(rule_queries) >= 8
    assert metric_names(panel_queries) <= exported
    assert metric_names(rule_queries) <= exported
    assert "sealgate_seal_valid_to_timestamp_seconds" in metric_names(rule_queries)


def test_the_multi_instance_example_is_valid_settings() -> None:
    """config/examples/multi-instance.toml loads (no unknown keys) and selects Redis."""
    settings = load_settings(CONFIG / "examples" / "multi-instance.toml", environ={})
    assert settings.storage.backend == "redis"
    assert settings.hsm.softhsm_conf.endswith("softhsm2.conf")


async def seal_gauge(world: World, seal_id: str, present: bool) -> float:
    """Wait until the seal's validity series is present (its value) or gone (0.0)."""
    pattern = re.compile(
        rf'^sealgate_seal_valid_to_timestamp_seconds{{seal_id="{seal_id}",[^}}]*}} (\S+)$',
        re.MULTILINE)
    for _ in range(100):
        found = pattern.search(await (await world.http.get("/metrics")).text())
        if bool(found) == present:
            return float(found.group(1)) if found else 0.0
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gauge of seal {seal_id} never became {present}")


async def test_a_certificate_ending_before_the_filing_is_the_seal_s_end_in_the_gauge(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """A seal stops signing when its certificate ends, even with a year of filing left:
    the gauge (and so the expiry alerts) show the earlier of the two ends."""
    quick = settings.replace(metrics=dataclasses.replace(settings.metrics, refresh_seconds=0.05))
    async with World.running(quick, hsm, dev_ca) as world:
        seal = await world.active_seal()
        await world.services.keys.create("no certificate yet", "ec-p256", "test")
        key = await world.services.keys.get(seal["key_id"])
        key = await world.services.keys.certify(key, world.ca, "测试合同专用章", "测试", "test",
                                                days=10)
        certificate_end = parse(key["certificate"]["not_after"])
        filing_end = parse(seal["valid_to"])
        assert certificate_end is not None and filing_end is not None
        assert certificate_end < filing_end
        for _ in range(100):
            if await seal_gauge(world, seal["id"], present=True) == certificate_end.timestamp():
                break
            await asyncio.sleep(0.05)
        assert await seal_gauge(world, seal["id"], present=True) == certificate_end.timestamp()


async def test_seal_validity_gauge_follows_the_seals(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """An active seal's validity end is published, and still once it has expired (the
    expired alert reads it); once cancelled, its series goes away."""
    quick = settings.replace(metrics=dataclasses.replace(settings.metrics, refresh_seconds=0.05))
    async with World.running(quick, hsm, dev_ca) as world:
        seal = await world.active_seal()
        valid_to = parse(seal["valid_to"])
        assert valid_to is not None
        assert await seal_gauge(world, seal["id"], present=True) == valid_to.timestamp()
        ended = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).replace(microsecond=0)
        record = await world.services.seals.record(seal["id"])
        await world.services.seals.update(record, {"valid_to": isoformat(ended)})
        for _ in range(100):
            if await seal_gauge(world, seal["id"], present=True) == ended.timestamp():
                break
            await asyncio.sleep(0.05)
        assert await seal_gauge(world, seal["id"], present=True) == ended.timestamp()
        record = await world.services.seals.record(seal["id"])
        await world.services.seals.update(record, {"status": "cancelled"})
        await seal_gauge(world, seal["id"], present=False)
