"""The shipped monitoring (packaging/monitoring/): the alert rules pass ``promtool check
rules`` and their unit tests (``promtool test rules``, tests/unit/monitoring/alerts_test.yml),
and every metric the rules and the Grafana dashboard query is one the daemon exports, with the
label values they select."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from k3snoded.metrics import render_metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging/monitoring/k3snoded-alerts.yml"
DASHBOARD = REPO / "packaging/monitoring/k3snoded-dashboard.json"
RULE_TESTS = Path(__file__).parent / "monitoring/alerts_test.yml"
SELECTOR = re.compile(r"\b(k3snoded_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool missing (Debian package prometheus; scripts/setup.sh installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def _status() -> dict[str, Any]:
    """A coordinator's status with everything the metrics read set."""
    peer = {"alive": True, "eligible": True, "role": "server"}
    return {
        "version": "0.1.0",
        "node": {"name": "m1", "role": "server"},
        "k3s": {"ready": True, "restarts": 2, "crash_loop": False},
        "vip": {"held": True, "transitions": 3, "refused": {"bad-hmac": 1}},
        "limits": {"servers_wanted": 3, "lease_ttl": 10.0, "vip": True},
        "coordinator": "m1",
        "peers": [
            {**peer, "name": "m1"},
            {**peer, "name": "m2"},
            {**peer, "name": "m3", "role": "agent"},  # a spare
            {**peer, "name": "m4", "role": "agent", "eligible": False},  # in maintenance
            {**peer, "name": "m5", "role": "agent", "alive": False},  # dead
        ],
        "counters": {"decisions": 4, "renew_seconds": 0.03, "statements": 99},
        "operations": {
            "paused": {"by": "root on m2", "since": 1700000000.0},
            "maintenance": ["m4"],
            "rollout": {"state": "halted", "target": "v1.31.5+k3s1"},
        },
    }


def _samples(status: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(render_metrics(status))
        for s in fam.samples
    }


def _queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [str(v.get("definition", "")) for v in dash["templating"]["list"]]
    return exprs


def test_the_alert_rules_pass_promtool_check() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_each_alert_fires_when_it_should_and_not_otherwise() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Every shipped alert has a test case.
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for c in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in c["alert_rule_test"]}  # fmt: skip
    assert alerts == tested


def test_every_metric_queried_is_exported_with_the_labels_selected() -> None:
    samples = _samples(_status())
    names = {n for n, _ in samples}
    queried = 0
    for expr in _queries():
        for name, matchers in SELECTOR.findall(expr):
            queried += 1
            assert name in names, f"{name} (in {expr!r}) is not exported"
            wanted = {(k, v) for k, v in MATCHER.findall(matchers) if k != "job" and "$" not in v}
            assert any(n == name and wanted <= set(lbl) for n, lbl in samples), (name, wanted)
    assert queried >= 25  # the regex found the queries at all


def test_the_fleet_metrics_say_what_the_status_says() -> None:
    s = _samples(_status())
    assert s[("k3snoded_fleet_spares", ())] == 1  # m3 only: m4 in maintenance, m5 dead
    assert s[("k3snoded_servers_wanted", ())] == 3
    assert s[("k3snoded_lease_ttl_seconds", ())] == 10.0
    assert s[("k3snoded_vip_enabled", ())] == 1
    assert s[("k3snoded_fleet_paused", ())] == 1
    assert s[("k3snoded_fleet_paused_since_seconds", ())] == 1700000000.0
    assert s[("k3snoded_fleet_maintenance", ())] == 1
    assert s[("k3snoded_rollout", (("state", "halted"),))] == 1
    assert s[("k3snoded_rollout", (("state", "running"),))] == 0
    # Not paused, no datastore: no pause time and no spare count (the alerts stay silent).
    quiet = _samples({"node": {"name": "m1"}, "k3s": {}, "limits": {"servers_wanted": 2}})
    assert ("k3snoded_fleet_paused_since_seconds", ()) not in quiet
    assert ("k3snoded_fleet_spares", ()) not in quiet
    assert quiet[("k3snoded_fleet_paused", ())] == 0
    assert quiet[("k3snoded_vip_enabled", ())] == 0
