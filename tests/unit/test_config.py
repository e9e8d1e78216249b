"""linnix.toml loading: defaults, the shipped file, every error class, Linnix keys, env."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from otel_linnix import config
from otel_linnix.config import Config, LlmConfig, load_config
from otel_linnix.errors import EX_CONFIG, ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.exit_code == EX_CONFIG
    return str(info.value)


@pytest.mark.usefixtures("no_system_config")
def test_no_file_anywhere_gives_the_embedded_defaults() -> None:
    cfg = load_config(None, environ={})
    assert cfg == Config()
    assert cfg.source_path is None
    assert cfg.ignored_keys == ()


@pytest.mark.usefixtures("no_system_config")
def test_an_explicit_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)


@pytest.mark.usefixtures("no_system_config")
def test_env_config_path_is_used_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path / "env.toml", "[capture]\ndrain_interval_ms = 250\n")
    cfg = load_config(None, environ={config.ENV_CONFIG: str(path)})
    assert cfg.capture.drain_interval_ms == 250
    assert cfg.source_path == str(path)


def test_default_path_is_used_when_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path / "etc" / "linnix.toml", "[api]\nbind_address = '127.0.0.1:9000'\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    cfg = load_config(None, environ={})
    assert cfg.api.bind_address == "127.0.0.1:9000"
    assert cfg.source_path == str(path)


def test_shipped_config_equals_the_embedded_defaults() -> None:
    path = REPO / "config" / "linnix.toml"
    cfg = load_config(path, environ={})
    assert cfg.source_path == str(path)
    assert dataclasses.replace(cfg, source_path=None) == Config()


# (file text, the key the message must name, what it must say)
ERROR_CASES = [
    ("[capture]\ndrian_interval_ms = 100\n", "[capture] drian_interval_ms", "unknown key"),
    ("[captrue]\nsource = 'auto'\n", "[captrue]", "unknown section"),
    (
        "[capture]\ndrain_interval_ms = '100'\n",
        "[capture] drain_interval_ms",
        "expected an integer",
    ),
    (
        "[capture]\ndrain_interval_ms = 100.0\n",
        "[capture] drain_interval_ms",
        "expected an integer",
    ),
    ("[runtime]\noffline = 1\n", "[runtime] offline", "expected true or false"),
    ("[api]\nbind_address = 3000\n", "[api] bind_address", "expected a string"),
    ("[capture]\ndrain_interval_ms = 5\n", "[capture] drain_interval_ms", "between 10 and 1000"),
    (
        "[process_table]\nexited_retention_s = -1.0\n",
        "[process_table] exited_retention_s",
        "between 0 and 86400",
    ),
    (
        "[process_table]\nexited_retention_s = nan\n",
        "[process_table] exited_retention_s",
        "between 0 and 86400",
    ),
    ("[capture]\nring_buffer_kib = 100\n", "[capture] ring_buffer_kib", "power of two"),
    ("[capture]\nsource = 'kprobe'\n", "[capture] source", "expected one of auto, ebpf, procfs"),
    ("api = 3\n", "[api]", "expected a table"),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    ERROR_CASES,
    ids=[
        "unknown-key",
        "unknown-section",
        "string-for-int",
        "float-for-int",
        "int-for-bool",
        "int-for-string",
        "out-of-range",
        "below-zero",
        "nan",
        "not-power-of-two",
        "bad-choice",
        "section-not-a-table",
    ],
)
def test_each_error_names_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path / "linnix.toml", text)
    message = load_error(path)
    assert message.startswith(f"{path}: {key}")
    assert problem in message
    assert len(message.splitlines()) == 1


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[capture]\nsource = 'auto'\ndrain = \n")
    message = load_error(path)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


def test_several_errors_are_all_reported_one_per_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "linnix.toml",
        (
            "[capture]\n"
            "source = 'bogus'\n"
            "ring_buffer_kib = 3000\n"
            "[telemetry]\n"
            "nonsense = true\n"
            "[nowhere]\n"
            "x = 1\n"
        ),
    )
    lines = load_error(path).splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{path}: ") for line in lines)
    named = " ".join(lines)
    for key in (
        "[capture] source",
        "[capture] ring_buffer_kib",
        "[telemetry] nonsense",
        "[nowhere]",
    ):
        assert key in named


def test_missing_rules_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[rules]\nconfig_path = 'missing.yaml'\n")
    message = load_error(path)
    assert message.startswith(f"{path}: [rules] config_path")
    assert str(tmp_path / "missing.yaml") in message


def test_missing_rules_file_is_fine_when_rules_are_disabled(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[rules]\nenabled = false\nconfig_path = 'x.yaml'\n")
    assert load_config(path, environ={}).rules.enabled is False


def test_relative_rules_path_is_relative_to_the_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rules = write(tmp_path / "etc" / "rules" / "mine.yaml", "rules: []\n")
    path = write(tmp_path / "etc" / "linnix.toml", "[rules]\nconfig_path = 'rules/mine.yaml'\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, environ={})
    assert cfg.rules.config_path == str(rules)
    assert cfg.rules_path() == rules


def test_absolute_rules_path_is_kept(tmp_path: Path) -> None:
    rules = write(tmp_path / "abs.yaml", "rules: []\n")
    path = write(tmp_path / "conf" / "linnix.toml", f"[rules]\nconfig_path = '{rules}'\n")
    assert load_config(path, environ={}).rules.config_path == str(rules)


def test_default_rules_path_is_the_bundled_file() -> None:
    assert Config().rules_path() == REPO / "config" / "rules.yaml"


def test_linnix_keys_load_and_unused_ones_are_reported(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.yaml", "rules: []\n")
    path = write(
        tmp_path / "linnix.toml",
        (
            "[runtime]\n"
            "offline = true\n"
            "events_rate_cap = 5000\n"
            "[api]\n"
            "listen_addr = '0.0.0.0:3000'\n"
            "auth_token = 'a-token'\n"
            "[rules]\n"
            "path = 'rules.yaml'\n"
            "[circuit_breaker]\n"
            "enabled = true\n"
            "cpu_usage_threshold = 90.0\n"
        ),
    )
    cfg = load_config(path, environ={})
    assert cfg.runtime.offline is True
    assert cfg.api.bind_address == "0.0.0.0:3000"
    assert cfg.rules.config_path == str(rules)
    assert set(cfg.ignored_keys) == {"[runtime] events_rate_cap", "[circuit_breaker]"}


def test_llm_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "linnix.toml",
        ("[llm]\nendpoint = 'http://file:1/v1'\nmodel = 'file-model'\napi_key = 'file-key'\n"),
    )
    from_file = load_config(path, environ={}).llm
    assert (from_file.endpoint, from_file.model, from_file.api_key) == (
        "http://file:1/v1",
        "file-model",
        "file-key",
    )
    env = {
        config.ENV_LLM_ENDPOINT: "http://env:2/v1",
        config.ENV_LLM_MODEL: "env-model",
        config.ENV_LLM_API_KEY: "env-key",
    }
    llm = load_config(path, environ=env).llm
    assert (llm.endpoint, llm.model, llm.api_key) == ("http://env:2/v1", "env-model", "env-key")
    assert llm.timeout_secs == LlmConfig().timeout_secs


@pytest.mark.usefixtures("no_system_config")
def test_llm_environment_applies_without_a_file() -> None:
    cfg = load_config(None, environ={config.ENV_LLM_MODEL: "m"})
    assert cfg.llm.model == "m"
    assert cfg.llm.endpoint == LlmConfig().endpoint
    assert cfg.llm.api_key is None


def test_int_is_accepted_for_a_float_key(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[process_table]\nexited_retention_s = 30\n")
    value = load_config(path, environ={}).process_table.exited_retention_s
    assert value == 30.0
    assert isinstance(value, float)


def test_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[api]\nbind_address = '0.0.0.0:3000'\n")
    message = load_error(path)
    assert message.startswith(f"{path}: [api] bind_address: refusing to serve the API")
    assert "LINNIX_API_TOKEN" in message
    assert len(message.splitlines()) == 1
    with_token = load_config(path, environ={"LINNIX_API_TOKEN": "t0ken"})
    assert with_token.api.auth_token == "t0ken"
    for loopback in ("127.0.0.1:3000", "localhost:3000", "[::1]:3000"):
        write(path, f"[api]\nbind_address = '{loopback}'\n")
        assert load_config(path, environ={}).api.auth_token is None


def test_bad_bind_address_and_bad_redaction_pattern_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[api]\nbind_address = 'nonsense'\n")
    assert "[api] bind_address: expected host:port" in load_error(path)
    write(path, "[privacy]\nredact_patterns = ['(']\nredact_flags = 'x'\n")
    message = load_error(path)
    assert "[privacy] redact_patterns: invalid regular expression '('" in message
    assert "[privacy] redact_flags: expected a list of strings" in message


def test_bind_address_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "linnix.toml", "[api]\nbind_address = '127.0.0.1:3000'\n")
    env = {"LINNIX_API_BIND_ADDRESS": "0.0.0.0:3001", "LINNIX_API_TOKEN": "t0ken"}
    assert load_config(path, environ=env).api.bind_address == "0.0.0.0:3001"
    # Without a token the override is refused like a file setting, naming the variable.
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"LINNIX_API_BIND_ADDRESS": "0.0.0.0:3001"})
    assert str(err.value).startswith(f"$LINNIX_API_BIND_ADDRESS (over {path}): [api] bind_address")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"LINNIX_API_BIND_ADDRESS": "nonsense"})
    assert "$LINNIX_API_BIND_ADDRESS" in str(err.value)
    assert "expected host:port" in str(err.value)


def test_missing_bundled_rules_are_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere" / "rules.yaml"
    monkeypatch.setattr(config, "bundled_path", lambda *parts: missing)
    path = write(tmp_path / "linnix.toml", "[api]\nbind_address = '127.0.0.1:3000'\n")
    message = load_error(path)
    assert message == (
        f"{path}: [rules] config_path: unset, and the default rules file is missing "
        f"({missing}): set config_path or [rules] enabled = false"
    )
    write(path, "[rules]\nenabled = false\n")
    assert load_config(path, environ={}).rules.enabled is False
