from typing import Any

import pytest
from celery import Celery

from celery_tenant_gate.config.settings import GateConfig, settings_doc
from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.states import State
from celery_tenant_gate.model.verdicts import Verdict


def test_defaults_are_production_superoffice_and_fail_closed() -> None:
    config = GateConfig()
    assert config.state_api_base == "https://online.superoffice.com/api/state"
    assert config.failure_policy is Verdict.HOLD


@pytest.mark.parametrize(
    ("env", "host"),
    [("sod", "sod"), ("qaonline", "qaonline"), ("stage", "qaonline"), ("online", "online")],
)
def test_environment_chooses_the_host(env: str, host: str) -> None:
    config = GateConfig.from_mapping({"tenant_gate_environment": env})
    assert config.state_api_base == f"https://{host}.superoffice.com/api/state"


def test_a_full_url_wins_over_the_environment() -> None:
    config = GateConfig.from_mapping(
        {"tenant_gate_environment": "sod", "tenant_gate_state_api_url": "http://x:1/state/"}
    )
    assert config.state_api_base == "http://x:1/state"


def test_read_from_app_conf() -> None:
    app = Celery(set_as_current=False, broker="memory://")
    app.conf.tenant_gate_min_ttl = "7"
    app.conf.tenant_gate_verdicts = {"Deleting": "hold", 3: "hold"}
    app.conf.tenant_gate_redis_url = "redis://cache:6379/2"
    config = GateConfig.from_app(app)
    assert config.min_ttl == 7.0
    assert config.verdicts[State.DELETING] is Verdict.HOLD
    assert config.verdicts[State.DELETED] is Verdict.HOLD
    assert config.verdicts[State.RUNNING] is Verdict.RUN
    assert config.redis_url == "redis://cache:6379/2"


def test_django_style_namespaced_settings() -> None:
    class Settings:
        CELERY_BROKER_URL = "redis://broker:6379/0"
        CELERY_TENANT_GATE_GRACE_PERIOD = 42
        CELERY_TENANT_GATE_FAILURE_POLICY = "run"

    app = Celery(set_as_current=False)
    app.config_from_object(Settings, namespace="CELERY")
    config = GateConfig.from_app(app)
    assert config.grace_period == 42.0
    assert config.failure_policy is Verdict.RUN
    # The Redis URL falls back to a Redis broker.
    assert config.redis_url == "redis://broker:6379/0"


def test_redis_url_does_not_fall_back_to_a_rabbitmq_broker() -> None:
    app = Celery(set_as_current=False, broker="amqp://guest@localhost//")
    config = GateConfig.from_app(app)
    with pytest.raises(ConfigError, match="tenant_gate_redis_url"):
        config.require_redis_url()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tenant_gate_min_ttl", "soon"),
        ("tenant_gate_min_ttl", -1),
        ("tenant_gate_min_ttl", True),
        ("tenant_gate_read_timeout_typo", 3),
        ("tenant_gate_state_api_retries", 1.5),
        ("tenant_gate_state_api_retries", -1),
        ("tenant_gate_environment", "prod"),
        ("tenant_gate_state_api_url", "ftp://x"),
        ("tenant_gate_redis_url", "http://redis"),
        ("tenant_gate_failure_policy", "drop"),
        ("tenant_gate_verdicts", {"Exploded": "hold"}),
        ("tenant_gate_verdicts", {"Running": "maybe"}),
        ("tenant_gate_verdicts", ["Running"]),
        ("tenant_gate_tenant_id_pattern", "Cust(["),
        ("tenant_gate_key_prefix", ""),
        ("tenant_gate_amqp_release_by_broker", "sometimes"),
        ("tenant_gate_amqp_release_by_broker", 2),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        GateConfig.from_mapping({key: value})


@pytest.mark.parametrize(
    ("value", "expected"), [(False, False), ("false", False), ("0", False), ("yes", True)]
)
def test_switches_read_words_as_well_as_booleans(value: Any, expected: bool) -> None:
    config = GateConfig.from_mapping({"tenant_gate_amqp_release_by_broker": value})
    assert config.amqp_release_by_broker is expected


def test_min_ttl_above_max_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match="tenant_gate_min_ttl"):
        GateConfig.from_mapping({"tenant_gate_min_ttl": 100, "tenant_gate_max_ttl": 10})


def test_a_bad_value_in_app_conf_fails_at_once() -> None:
    app = Celery(set_as_current=False)
    app.conf.tenant_gate_grace_period = "a while"
    with pytest.raises(ConfigError, match="tenant_gate_grace_period"):
        GateConfig.from_app(app)


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for key, _default, _doc in settings_doc():
        assert f"`{key}`" in readme, f"{key} is missing from the README's settings table"


def test_metrics_settings_are_checked() -> None:
    config = GateConfig.from_mapping(
        {"tenant_gate_metrics": "true", "tenant_gate_metrics_port": "9808"}
    )
    assert (config.metrics, config.metrics_port, config.metrics_address) == (True, 9808, "0.0.0.0")
    assert GateConfig.from_mapping({"tenant_gate_metrics": "0"}).metrics is False
    with pytest.raises(ConfigError, match="tenant_gate_metrics must be True or False"):
        GateConfig.from_mapping({"tenant_gate_metrics": "sometimes"})
    with pytest.raises(ConfigError, match="tenant_gate_metrics_port must be a TCP port"):
        GateConfig.from_mapping({"tenant_gate_metrics": True, "tenant_gate_metrics_port": 70000})
    with pytest.raises(
        ConfigError, match="tenant_gate_metrics_port is set but tenant_gate_metrics is off"
    ):
        GateConfig.from_mapping({"tenant_gate_metrics_port": 9808})
