"""deploy/grafana-dashboard.json and deploy/alerts.yml use the series GET /metrics serves.

Every metric name in a panel or a rule must be one the service exports (a renamed metric
would leave a silent panel or an alert that never fires); promtool, when installed
(Debian's `prometheus` package), also checks the rules' syntax.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\bsnapshots_[a-z_]+\b")


def exported(client: TestClient) -> set[str]:
    families = list(text_string_to_metric_families(client.get("/metrics").text))
    # A counter's samples are <name>_total, a histogram's <name>_bucket/_sum/_count; a
    # family with no sample yet (no operation ended) still says its type.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    return {f.name + suffix for f in families for suffix in suffixes.get(f.type, ("",))}


def dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_every_panel_and_rule_names_an_exported_metric(client: TestClient) -> None:
    names = exported(client)
    exprs = dashboard_exprs() + rule_exprs()
    used = {n for e in exprs for n in NAME.findall(e)}
    assert used and used <= names, used - names
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}
    assert {"SnapshotOperationsFailing", "SnapshotQueueGrowing",
            "SnapshotHostWithoutLiveWorker", "SnapshotRepositoryGrowingFast"} <= alerts


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
