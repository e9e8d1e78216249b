"""A Prometheus server of a test's own (Debian's /usr/bin/prometheus) and its HTTP API.

Started on a free loopback port with its own storage under the test's folder,
so a service the package may run on :9090 is never involved.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.api_stack import free_port

__all__ = ["PROMETHEUS", "PrometheusServer", "Series", "require_prometheus"]

PROMETHEUS = "/usr/bin/prometheus"
Series = list[dict[str, Any]]


def require_prometheus() -> None:
    """Skip the calling test where the Debian package is not installed."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} is absent (Debian package prometheus, make install-dev)")


class PrometheusServer:
    """``prometheus`` with ``config`` (a prometheus.yml as a mapping), and PromQL over HTTP."""

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        self.port = free_port()
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(dict(config)), encoding="utf-8")
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {self.process.returncode}; see {self.log.name}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready within {timeout_s} s")

    def query(self, promql: str) -> Series:
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", f"{promql}: {answer}"
        result: Series = answer["data"]["result"]
        return result

    def wait_query(
        self, promql: str, test: Callable[[Series], bool] = bool, timeout_s: float = 45.0
    ) -> Series:
        """The first answer to ``promql`` that passes ``test``; fails the test at the
        deadline, with the scrape targets' state (why a series may be missing)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if test(result):
                return result
            if time.monotonic() > deadline:
                targets = self.get("/api/v1/targets")["data"]["activeTargets"]
                pytest.fail(f"{promql}: {result} after {timeout_s} s; targets: {targets}")
            time.sleep(0.5)

    def label_values(self, label: str, selector: str | None) -> list[str]:
        """What Grafana's label_values(selector, label) lists, over the last 10 minutes."""
        params = {"start": str(time.time() - 600), "end": str(time.time())}
        if selector is not None:
            params["match[]"] = selector
        answer = self.get(f"/api/v1/label/{urllib.parse.quote(label)}/values", **params)
        assert answer["status"] == "success", answer
        values: list[str] = answer["data"]
        return values

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()
