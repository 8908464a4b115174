"""Settings: every bad value is refused with the variable's name and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from aios.common.config import load_settings
from aios.common.errors import ConfigError


def test_defaults_mean_embedded_nats() -> None:
    s = load_settings({})
    assert s.nats_url is None and s.servers == [] and s.data_dir == Path(".aios") and s.stream_replicas == 1


def test_cluster_urls() -> None:
    s = load_settings({"AIOS_NATS_URL": "nats://a:4222, nats://b:4222", "AIOS_STREAM_REPLICAS": "3"})
    assert s.servers == ["nats://a:4222", "nats://b:4222"] and s.stream_replicas == 3


@pytest.mark.parametrize("env, message", [
    ({"AIOS_HTTP_PORT": "http"}, "AIOS_HTTP_PORT='http': must be an integer"),
    ({"AIOS_NATS_PORT": "70000"}, "AIOS_NATS_PORT=70000: must be between 0 and 65535"),
    ({"AIOS_STREAM_REPLICAS": "0"}, "AIOS_STREAM_REPLICAS=0: must be between 1 and 5"),
    ({"AIOS_LOG_LEVEL": "chatty"}, "AIOS_LOG_LEVEL='CHATTY': must be one of"),
    ({"AIOS_NATS_URL": "localhost:4222"}, "AIOS_NATS_URL: 'localhost:4222' is not a URL"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)
