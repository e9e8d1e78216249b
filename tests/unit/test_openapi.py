"""docs/openapi.yaml stays true to the HTTP API.

The routes of the Flask app and the paths of the document must be the same
set, with the same methods. Schemathesis then generates requests for every
JSON operation from the document, sends them to the app in process (WSGI)
and validates status codes, content types, headers and bodies against it,
with and without the configured token. A table of hand-picked inputs covers
the boundaries random generation rarely reaches, and the error answers of
the Server-Sent Events routes (their 200 answers never end, so they are
read frame by frame instead).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import APIOperation, BaseSchema, Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import TestResponse

from otel_linnix.api import ApiContext, create_app
from otel_linnix.config import ApiConfig, Config
from otel_linnix.containers import CgroupResolver
from otel_linnix.export.metrics import MetricsTelemetry
from otel_linnix.export.settings import resolve_export
from otel_linnix.pipeline import Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.sinks import SinkWorker
from otel_linnix.sources.procfs import ProcReader
from otel_linnix.sources.replay import ReplaySource
from otel_linnix.stream_hub import StreamHub
from tests.unit.conftest import DEADLINE_S, PROC_FIXTURE, RECORDINGS, wait_until

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
RECORDING = RECORDINGS / "build_tree.jsonl"
# The start-up walk of tests/fixtures/proc (4 processes) plus the recording (15 events).
EVENTS = 4 + 15
CLOCK_NS = 5_000_000_000  # the agent starts before the recording's first event (10 s)
TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Flask answers these on every route by itself; the document lists what the routes declare.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})
SSE_PATHS = frozenset({"/stream", "/events"})
# /alerts answers SSE when asked; its JSON form does not read these.
SSE_ONLY_PARAMETERS = frozenset({"Last-Event-ID", "last_event_id"})
MAX_EXAMPLES = 30

Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]

CONFORMANCE: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
GENERATED = [*CONFORMANCE, positive_data_acceptance, negative_data_rejection]

HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same requests on every run: a failure is never a fluke
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def load_document() -> dict[str, Any]:
    with open(OPENAPI, encoding="utf-8") as fh:
        doc: dict[str, Any] = yaml.safe_load(fh)
    return doc


# ---- the app under test ------------------------------------------------------------


@dataclass
class Api:
    app: Flask
    pipeline: Pipeline
    hub: StreamHub

    def client(self) -> FlaskClient:
        return self.app.test_client()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app over a real pipeline that replayed build_tree.jsonl, token configured."""
    # Hypothesis keeps its files (a Unicode table cache) out of the work tree.
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "otel-linnix-hypothesis")
    cgroup_root = tmp_path_factory.mktemp("cgroup")
    config = Config(api=ApiConfig(auth_token=TOKEN, heartbeat_interval_s=0.1))

    now = [CLOCK_NS]

    def clock() -> int:
        return now[0]

    def wall_from_boot(ts_ns: int) -> int:
        return ts_ns + (time.time_ns() - now[0])

    hub = StreamHub(
        config.api.stream_backlog_events,
        config.api.max_stream_clients,
        config.api.stream_queue_events,
        wall_from_boot,
    )
    source = ReplaySource(RECORDING)
    pipeline = Pipeline(
        source,
        ProcessTable(),
        ProcReader(str(PROC_FIXTURE)),
        CgroupResolver(root=str(cgroup_root)),
        [SinkWorker(hub)],
        clock=clock,
        sample_interval_s=3600.0,
    )
    pipeline.start()
    try:
        assert source.done.wait(DEADLINE_S), "the replay did not finish"
        assert wait_until(lambda: hub.stats()["last_id"] >= EVENTS), "the hub missed events"
        # Two sweeps a second apart: resource figures, CPU % included, for the
        # processes of the fake /proc; the replayed ones stay unsampled (nulls).
        pipeline.sampler.sweep()
        now[0] += 1_000_000_000
        pipeline.sampler.sweep()
        # /metrics from a real meter provider over the same pipeline.
        telemetry = MetricsTelemetry(resolve_export(config.export, {}), pipeline, clock=clock)
        context = ApiContext(config, pipeline, hub, clock, metrics=telemetry)
        yield Api(create_app(context), pipeline, hub)
        telemetry.shutdown(2.0)
    finally:
        pipeline.stop(timeout_s=2.0)
        set_hypothesis_home_dir(None)


def _schema(api: Api, *, token: str | None) -> BaseSchema:
    raw = load_document()
    for name, op in raw["paths"]["/alerts"].items():
        if name in HTTP_METHODS:
            op["parameters"] = [
                p
                for p, resolved in zip(op["parameters"], _resolved_parameters(raw, op), strict=True)
                if resolved["name"] not in SSE_ONLY_PARAMETERS
            ]
    settings_: dict[str, Any] = {
        # The token is the schema's security, not a parameter to fuzz.
        "generation": {"with-security-parameters": False},
        # Valid input is answered, or 404 for a pid the table does not hold.
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404"]}},
    }
    if token is not None:
        settings_["auth"] = {"openapi": {"bearerAuth": {"bearer": token}}}
    schema = schemathesis.openapi.from_dict(raw, config=schemathesis.Config.from_dict(settings_))
    schema.app = api.app
    return schema


@pytest.fixture(scope="module")
def schema(api: Api) -> BaseSchema:
    """The document, with the token schemathesis sends on every request."""
    return _schema(api, token=TOKEN)


@pytest.fixture(scope="module")
def schema_without_token(api: Api) -> BaseSchema:
    return _schema(api, token=None)


def _operations() -> list[tuple[str, str]]:
    doc = load_document()
    return [
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


JSON_OPERATIONS = [(p, m) for p, m in _operations() if p not in SSE_PATHS]


def _operation(schema: BaseSchema, path: str, method: str) -> Operation:
    op: Operation = schema[path][method]
    return op


# ---- (a) the same routes on both sides -----------------------------------------------

_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_CONVERTER_SPEC = re.compile(r"<(?:([^:<>(]+)(?:\([^)]*\))?:)?([^<>]+)>")


def test_every_route_is_documented_and_every_documented_path_exists(api: Api) -> None:
    in_app: dict[str, set[str]] = {}
    for rule in api.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        in_app.setdefault(path, set()).update((rule.methods or set()) - IMPLICIT_METHODS)
    in_doc = {
        path: {m.upper() for m in item if m in HTTP_METHODS}
        for path, item in load_document()["paths"].items()
    }
    assert sorted(set(in_app) - set(in_doc)) == [], "routes missing from docs/openapi.yaml"
    assert sorted(set(in_doc) - set(in_app)) == [], "documented paths the app does not serve"
    assert in_app == in_doc


def test_path_parameters_match_the_route_converters(api: Api) -> None:
    """A documented integer path parameter is an int converter in the route, and so on."""
    kinds = {"int": "integer", "float": "number", "string": "string", "path": "string"}
    doc = load_document()
    for rule in api.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        item = doc["paths"][_CONVERTER.sub(r"{\1}", rule.rule)]
        actual = {
            name: kinds[converter or "string"]
            for converter, name in _CONVERTER_SPEC.findall(rule.rule)
        }
        for method in (m for m in item if m in HTTP_METHODS):
            declared = {
                p["name"]: p["schema"]["type"]
                for p in _resolved_parameters(doc, item[method])
                if p["in"] == "path"
            }
            assert declared == actual, f"{method.upper()} {rule.rule}"


def _resolved_parameters(doc: dict[str, Any], op: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for param in op.get("parameters", []):
        if "$ref" in param:
            out.append(doc["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]])
        else:
            out.append(param)
    return out


def _has_parameters(path: str, method: str) -> bool:
    return bool(load_document()["paths"][path][method.lower()].get("parameters"))


# ---- (b) generated requests conform ------------------------------------------------


def _run(op: Operation, mode: GenerationMode) -> None:
    @given(case=op.as_strategy(generation_mode=mode))
    @HYPOTHESIS
    def run(case: AnyCase) -> None:
        response = case.call()
        # The token went along: a 401 here would make every other check vacuous.
        assert response.status_code != 401, response.text
        case.validate_response(response, checks=GENERATED)

    run()


@pytest.mark.parametrize(("path", "method"), JSON_OPERATIONS)
def test_valid_requests_get_documented_answers(schema: BaseSchema, path: str, method: str) -> None:
    _run(_operation(schema, path, method), GenerationMode.POSITIVE)


@pytest.mark.parametrize(
    ("path", "method"),
    [(p, m) for p, m in JSON_OPERATIONS if _has_parameters(p, m)],
)
def test_invalid_requests_are_rejected_as_documented(
    schema: BaseSchema, path: str, method: str
) -> None:
    _run(_operation(schema, path, method), GenerationMode.NEGATIVE)


@pytest.mark.parametrize(("path", "method"), JSON_OPERATIONS)
def test_requests_without_the_token_get_the_documented_401(
    schema_without_token: BaseSchema, path: str, method: str
) -> None:
    op = _operation(schema_without_token, path, method)
    open_route = op.definition.raw.get("security") == []

    @given(case=op.as_strategy(), credentials=st.sampled_from([None, "Bearer wrong", "Basic x"]))
    @HYPOTHESIS
    def run(case: AnyCase, credentials: str | None) -> None:
        headers = {"Authorization": credentials} if credentials else None
        response = case.call(headers=headers)
        if open_route:
            assert response.status_code == 200
        else:
            assert response.status_code == 401, response.text
        case.validate_response(response, checks=CONFORMANCE)

    run()


# ---- hand-picked inputs ---------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request and the status the document promises for it."""

    path: str
    status: int
    path_parameters: dict[str, Any] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    token: bool = True

    @property
    def url(self) -> str:
        return self.path.format(**self.path_parameters)


def _probe(name: str, path: str, status: int, **kw: Any) -> Any:
    return pytest.param(Probe(path, status, **kw), id=name)


PROBES = [
    # /metrics
    _probe("metrics", "/metrics", 200),
    _probe("metrics-without-token", "/metrics", 401, token=False),
    # /processes
    _probe("processes", "/processes", 200),
    _probe(
        "processes-all-filters",
        "/processes",
        200,
        query={
            "comm": "b*",
            "exe": "bash",
            "container": "none",
            "user": "1000",
            "min_cpu": "0",
            "min_rss": "0",
            "filter": "mem_pct>0",
            "sort": "cpu_pct:desc",
            "order": "asc",
            "limit": "1000000",
            "include_exited": "yes",
        },
    ),
    _probe("processes-empty-values", "/processes", 200, query={"limit": "", "sort": ""}),
    _probe("processes-sort-colon", "/processes", 200, query={"sort": "pid:"}),
    _probe("processes-filter-spaces", "/processes", 200, query={"filter": "cpu_pct > .5"}),
    _probe("processes-user-name", "/processes", 200, query={"user": "root"}),
    _probe("processes-user-non-ascii-digit", "/processes", 200, query={"user": "²"}),
    _probe("processes-limit-0", "/processes", 400, query={"limit": "0"}),
    _probe("processes-limit-too-big", "/processes", 400, query={"limit": "1000001"}),
    _probe("processes-limit-word", "/processes", 400, query={"limit": "ten"}),
    _probe("processes-min-cpu-nan", "/processes", 400, query={"min_cpu": "nan"}),
    _probe("processes-min-cpu-negative", "/processes", 400, query={"min_cpu": "-1"}),
    _probe("processes-min-rss-negative", "/processes", 400, query={"min_rss": "-1"}),
    _probe("processes-sort-unknown", "/processes", 400, query={"sort": "name"}),
    _probe("processes-sort-direction", "/processes", 400, query={"sort": "cpu:up"}),
    _probe("processes-order-unknown", "/processes", 400, query={"order": "up"}),
    _probe("processes-filter-field", "/processes", 400, query={"filter": "rss>5"}),
    _probe("processes-filter-two-dots", "/processes", 400, query={"filter": "cpu_pct>1.2.3"}),
    _probe("processes-filter-lone-dot", "/processes", 400, query={"filter": "mem_pct>."}),
    # /processes/{pid} and /graph/{pid}
    _probe("process", "/processes/{pid}", 200, path_parameters={"pid": 100}),
    _probe("process-exited", "/processes/{pid}", 200, path_parameters={"pid": 301}),
    _probe(
        "process-by-start-time",
        "/processes/{pid}",
        200,
        path_parameters={"pid": 100},
        query={"start_time_ns": "10000123456"},
    ),
    _probe("process-unknown", "/processes/{pid}", 404, path_parameters={"pid": 99999}),
    _probe(
        "process-wrong-start-time",
        "/processes/{pid}",
        404,
        path_parameters={"pid": 100},
        query={"start_time_ns": "1"},
    ),
    _probe(
        "process-start-time-negative",
        "/processes/{pid}",
        400,
        path_parameters={"pid": 100},
        query={"start_time_ns": "-1"},
    ),
    _probe("process-pid-negative", "/processes/{pid}", 404, path_parameters={"pid": -1}),
    _probe("graph", "/graph/{pid}", 200, path_parameters={"pid": 300}),
    _probe("graph-init", "/graph/{pid}", 200, path_parameters={"pid": 1}),
    _probe("graph-orphan", "/graph/{pid}", 200, path_parameters={"pid": 5000}),
    _probe(
        "graph-one-descendant",
        "/graph/{pid}",
        200,
        path_parameters={"pid": 100},
        query={"max_descendants": "1"},
    ),
    _probe(
        "graph-max-descendants-0",
        "/graph/{pid}",
        400,
        path_parameters={"pid": 100},
        query={"max_descendants": "0"},
    ),
    _probe("graph-unknown", "/graph/{pid}", 404, path_parameters={"pid": 99999}),
    # /alerts (JSON)
    _probe("alerts", "/alerts", 200, query={"state": "firing", "since": "0"}),
    _probe("alerts-since-rfc3339", "/alerts", 200, query={"since": "2026-01-01T00:00:00+02:00"}),
    _probe("alerts-since-fraction", "/alerts", 200, query={"since": "1700000000.25"}),
    _probe("alerts-since-lowercase-z", "/alerts", 200, query={"since": "2026-01-01t00:00:00z"}),
    _probe("alerts-since-huge", "/alerts", 200, query={"since": "1e300"}),
    _probe("alerts-since-inf", "/alerts", 400, query={"since": "inf"}),
    _probe("alerts-since-word", "/alerts", 400, query={"since": "yesterday"}),
    _probe("alerts-state-unknown", "/alerts", 400, query={"state": "open"}),
    # error answers of the streams (their 200 never ends)
    _probe("stream-kind-unknown", "/stream", 400, query={"kind": "exec,spawn"}),
    _probe("stream-pid-0", "/stream", 400, query={"pid": "0"}),
    _probe("stream-pid-word", "/stream", 400, query={"pid": "init"}),
    _probe("stream-last-event-id", "/stream", 400, headers={"Last-Event-ID": "x"}),
    _probe("events-last-event-id-query", "/events", 400, query={"last_event_id": "x"}),
    _probe("events-kind-unknown", "/events", 400, query={"kind": "lost"}),
    _probe(
        "alerts-sse-last-event-id",
        "/alerts",
        400,
        headers={"Accept": "text/event-stream", "Last-Event-ID": "x"},
    ),
    # the token
    _probe("health-without-token", "/health", 200, token=False),
    _probe("stream-without-token", "/stream", 401, token=False),
    _probe("events-without-token", "/events", 401, token=False),
    _probe(
        "alerts-sse-without-token",
        "/alerts",
        401,
        token=False,
        headers={"Accept": "text/event-stream"},
    ),
]


def _send(api: Api, method: str, url: str, **kw: Any) -> TestResponse:
    """One request; a stream that answers 200 is closed unread, so nothing hangs."""
    response = api.client().open(url, method=method, buffered=False, **kw)
    if response.mimetype == "text/event-stream":
        response.close()
    return response


@pytest.mark.parametrize("probe", PROBES)
def test_hand_picked_requests_get_documented_answers(
    api: Api, schema: BaseSchema, probe: Probe
) -> None:
    headers = {**(AUTH if probe.token else {}), **probe.headers}
    response = _send(api, "GET", probe.url, query_string=probe.query, headers=headers)
    body = "(a stream)" if response.is_streamed else response.get_data(as_text=True)
    assert response.status_code == probe.status, body
    case = _operation(schema, probe.path, "GET").Case(
        path_parameters=probe.path_parameters, query=dict(probe.query), headers=headers
    )
    case.validate_response(response, checks=CONFORMANCE)


def test_unknown_routes_answer_json_404(api: Api) -> None:
    for url in ("/nope", "/processes/abc", "/graph/", "/metrics/x"):
        response = _send(api, "GET", url, headers=AUTH)
        assert response.status_code == 404, url
        assert response.is_json and isinstance(response.get_json()["error"], str), url


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_undeclared_methods_get_405_with_allow(api: Api, method: str) -> None:
    """components.responses.MethodNotAllowed: JSON error and an Allow header (RFC 9110)."""
    wrong = []
    for path, item in load_document()["paths"].items():
        url = path.format(pid=1)
        response = _send(api, method, url, headers=AUTH)
        assert response.status_code == 405, url
        assert response.is_json and isinstance(response.get_json()["error"], str), url
        allow = response.headers.get("Allow")
        allowed = {m.strip() for m in (allow or "").split(",") if m.strip()}
        if not {m.upper() for m in item if m in HTTP_METHODS} <= allowed:
            wrong.append(f"{method} {url}: Allow: {allow}")
    assert wrong == []


# ---- the streams, frame by frame ------------------------------------------------------


def _openapi_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects -> JSON Schema: ``nullable`` becomes a null type."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_json_schema(v) for k, v in node.items() if k not in ("nullable",)}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
    return out


def _validator(name: str) -> jsonschema_rs.Draft4Validator:
    schemas = copy.deepcopy(load_document()["components"]["schemas"])
    converted = _openapi_to_json_schema(schemas)
    root = {**converted[name], "definitions": converted}
    return jsonschema_rs.Draft4Validator(root)


def _frames(chunks: Iterator[bytes], count: int) -> list[dict[str, str]]:
    """The first ``count`` SSE blocks (frames and comments) as field -> value."""
    frames: list[dict[str, str]] = []
    buffer = ""
    while len(frames) < count:
        buffer += next(chunks).decode()
        *blocks, buffer = buffer.split("\n\n")
        for block in blocks:
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(":")
                fields[name or "comment"] = value.removeprefix(" ")
            frames.append(fields)
    return frames


@pytest.mark.parametrize("path", sorted(SSE_PATHS))
def test_stream_replays_documented_events(api: Api, path: str) -> None:
    """With Last-Event-ID 0 the backlog comes first: ids, kinds and Event-shaped data."""
    response = api.client().get(
        path,
        headers={**AUTH, "Last-Event-ID": "0"},
        query_string={"kind": "fork,exec,exit,oom_kill"},
        buffered=False,
    )
    try:
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        frames = _frames(response.iter_encoded(), 1 + EVENTS + 1)
    finally:
        response.close()
    assert frames[0] == {"retry": "3000"}
    validator = _validator("Event")
    events = frames[1 : 1 + EVENTS]
    for frame in events:
        data = json.loads(frame["data"])
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], frame
        assert frame["id"] == str(data["seq"])
        assert frame["event"] == data["kind"]
    assert [int(f["id"]) for f in events] == list(range(1, EVENTS + 1))
    assert frames[-1]["comment"].startswith("keep-alive ")


def test_alert_stream_is_sse(api: Api) -> None:
    response = api.client().get(
        "/alerts", headers={**AUTH, "Accept": "text/event-stream"}, buffered=False
    )
    try:
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        frames = _frames(response.iter_encoded(), 2)
    finally:
        response.close()
    assert frames[0] == {"retry": "3000"}
    assert frames[1]["comment"].startswith("keep-alive ")


def test_graph_edges_join_the_nodes(api: Api) -> None:
    """Every edge names its ends as nodes do: (pid, start_time_ns)."""
    client = api.client()
    pids = {p["pid"] for p in client.get("/processes?include_exited=1", headers=AUTH).get_json()}
    for pid in sorted(pids):
        graph = client.get(f"/graph/{pid}", headers=AUTH).get_json()
        nodes = {(n["pid"], n["start_time_ns"]) for n in graph["nodes"]}
        for edge in graph["edges"]:
            assert (edge["from"], edge["from_start_time_ns"]) in nodes, (pid, edge)
            assert (edge["to"], edge["to_start_time_ns"]) in nodes, (pid, edge)


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/stream", {}), ("/events", {}), ("/alerts", {"Accept": "text/event-stream"})],
)
def test_head_on_a_stream_holds_no_stream_slot(
    api: Api, path: str, headers: dict[str, str]
) -> None:
    """A HEAD gets the stream's headers and no body: it must not count as an open stream."""
    client = api.client()

    def subscribers() -> int:
        count: int = client.get("/status", headers=AUTH).get_json()["stream"]["subscribers"]
        return count

    before = subscribers()
    for _ in range(3):
        response = client.head(path, headers={**AUTH, **headers})
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        response.close()  # what every WSGI server does when it is done with a response
    assert subscribers() == before
