"""Settings are read where they are used: a `tenant_gate_*` key set in `app.conf` after it
was read takes effect, or raises `ConfigError` naming it, never silently ignored; an
unknown key (a typo) is warned about, naming the closest setting; the Django form
(`CELERY_TENANT_GATE_*` with `namespace="CELERY"`) is read the same way.

Real Celery apps on the test Redis; nothing connects until a notification is handled.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from celery import Celery

from celery_tenant_gate import install
from celery_tenant_gate.app.singletons import gate_for
from celery_tenant_gate.config import UnknownSettingWarning, gate_config
from celery_tenant_gate.model.errors import ConfigError
from celery_tenant_gate.model.notification import Notification
from celery_tenant_gate.testing import FakeSuperOffice
from celery_tenant_gate.web.factory import receiver_for
from celery_tenant_gate.web.wsgi import make_wsgi_app

CTX = "Cust12345"


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Celery:
    app = Celery("t", broker=redis_url, set_as_current=False)
    app.conf.tenant_gate_key_prefix = key_prefix
    app.conf.tenant_gate_control_queue = f"{key_prefix}.control"
    return app


def post(receiver: Any, body: dict[str, Any]) -> int:
    data = json.dumps(body).encode()
    status: int = receiver.handle("POST", "application/json", data, len(data)).status
    return status


# -- a setting changed after it was read -----------------------------------------------


def test_a_change_before_anything_is_built_takes_effect(app: Celery) -> None:
    assert gate_config(app).min_ttl == 5.0
    app.conf.tenant_gate_min_ttl = 7
    gate = install(app)
    assert gate.config.min_ttl == 7.0
    assert gate_config(app) is gate.config


def test_the_webhook_takes_a_public_key_set_after_the_settings_were_read(
    app: Celery, superoffice: FakeSuperOffice
) -> None:
    app.conf.tenant_gate_webhook_issuer = superoffice.issuer
    gate_config(app)  # read: no key given, so the online JWKS would be used
    app.conf.tenant_gate_webhook_public_key = superoffice.public_key_pem
    receiver = receiver_for(app)
    queued: list[str] = []

    def enqueue(notification: Notification, claims: dict[str, Any]) -> None:
        queued.append(notification.context_id)

    receiver.enqueue = enqueue
    assert post(receiver, superoffice.notification(CTX)) == 202
    assert queued == [CTX]
    assert superoffice.jwks_fetches == 0


def test_a_webhook_setting_changed_after_install_is_an_error_naming_it(app: Celery) -> None:
    install(app)
    app.conf.tenant_gate_webhook_public_key = "-----BEGIN PUBLIC KEY-----..."
    with pytest.raises(ConfigError) as raised:
        make_wsgi_app(app)
    message = str(raised.value)
    assert "tenant_gate_webhook_public_key changed" in message
    assert "used to build the tenant look-up, the gate;" in message
    assert "before install(app)" in message


def test_a_change_after_the_webhook_was_built_is_an_error_naming_each_key(app: Celery) -> None:
    receiver_for(app)
    app.conf.update(tenant_gate_webhook_leeway=5, tenant_gate_max_ttl=60)
    with pytest.raises(ConfigError, match="tenant_gate_max_ttl, tenant_gate_webhook_leeway"):
        receiver_for(app)
    with pytest.raises(ConfigError, match="used to build the webhook receiver;"):
        install(app)


def test_the_same_value_written_differently_is_no_change(app: Celery) -> None:
    app.conf.tenant_gate_min_ttl = 7
    gate = install(app)
    app.conf.tenant_gate_min_ttl = "7.0"
    assert install(app) is gate


def test_a_bad_value_set_after_install_names_the_key(app: Celery) -> None:
    install(app)
    app.conf.tenant_gate_grace_period = "a while"
    with pytest.raises(ConfigError, match="tenant_gate_grace_period"):
        gate_config(app)


def test_the_gate_of_a_task_does_not_read_the_settings_again(app: Celery) -> None:
    gate = install(app)
    app.conf.tenant_gate_grace_period = "a while"
    assert gate_for(app) is gate  # the per-task path: no look at app.conf
    with pytest.raises(ConfigError, match="tenant_gate_grace_period"):
        install(app)


def test_a_configuration_loaded_after_install_is_noticed(app: Celery) -> None:
    install(app)

    class Later:
        CELERY_TENANT_GATE_MIN_TTL = 9

    app.config_from_object(Later, namespace="CELERY")  # read now: the app was configured
    with pytest.raises(ConfigError, match="tenant_gate_min_ttl changed"):
        install(app)


# -- unknown keys ----------------------------------------------------------------------


def test_a_typo_is_warned_about_once_naming_the_closest_setting(app: Celery) -> None:
    app.conf.tenant_gate_jwks_ulr = "https://example.com/jwks"
    with pytest.warns(UnknownSettingWarning) as caught:
        config = gate_config(app)
    assert [str(w.message) for w in caught] == [
        "tenant_gate_jwks_ulr is not a celery-tenant-gate setting and is ignored; "
        "did you mean tenant_gate_webhook_jwks_url?"
    ]
    assert config.webhook_jwks_url is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate_config(app)  # once per key and app


def test_a_key_like_no_setting_is_warned_about_without_a_guess(app: Celery) -> None:
    app.conf.tenant_gate_xyz = 1
    with pytest.warns(UnknownSettingWarning, match=r"tenant_gate_xyz is .* ignored$"):
        gate_config(app)


def test_correct_keys_give_no_warning(app: Celery) -> None:
    app.conf.update(tenant_gate_webhook_jwks_url="https://example.com/jwks", tenant_gate_min_ttl=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gate_config(app).webhook_jwks_url == "https://example.com/jwks"


def test_a_typo_in_a_mapping_is_an_error_naming_the_closest_setting() -> None:
    from celery_tenant_gate.config.settings import GateConfig

    with pytest.raises(ConfigError, match="did you mean 'tenant_gate_webhook_jwks_url'"):
        GateConfig.from_mapping({"tenant_gate_jwks_ulr": "https://example.com/jwks"})


# -- Django: config_from_object("django.conf:settings", namespace="CELERY") ------------


def django_settings(**values: Any) -> Any:
    """A Django settings object of its own (``django.conf.settings`` stays untouched)."""
    from django.conf import LazySettings

    settings = LazySettings()
    settings.configure(**values)
    return settings


def test_django_settings_with_the_celery_namespace(redis_url: str) -> None:
    settings = django_settings(
        CELERY_BROKER_URL=redis_url,
        CELERY_TENANT_GATE_GRACE_PERIOD=42,
        CELERY_TENANT_GATE_JWKS_ULR="https://example.com/jwks",
    )
    app = Celery("t", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    assert not app.configured  # loaded lazily, by the first read
    with pytest.warns(
        UnknownSettingWarning, match="did you mean CELERY_TENANT_GATE_WEBHOOK_JWKS_URL"
    ):
        gate = install(app)
    assert gate.config.grace_period == 42.0
    assert gate.config.redis_url == redis_url  # from the Redis broker
    settings.CELERY_TENANT_GATE_GRACE_PERIOD = 60
    with pytest.raises(ConfigError, match="tenant_gate_grace_period changed"):
        install(app)


def test_django_settings_without_the_namespace_are_not_read_and_say_so() -> None:
    settings = django_settings(TENANT_GATE_MIN_TTL=3)
    app = Celery("t", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.config_from_object(settings)
    with pytest.warns(UnknownSettingWarning, match="TENANT_GATE_MIN_TTL .* tenant_gate_min_ttl"):
        assert gate_config(app).min_ttl == 5.0
