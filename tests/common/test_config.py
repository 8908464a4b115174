"""Settings: every bad value is refused with the variable's name and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from aios.common.config import agent_shutdown_s, load_settings
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


def test_a_supervisor_waits_for_an_agent_to_drain_and_stop_its_workers() -> None:
    """`aios up` and LocalCluster waited 20 s for an agent that may take its drain (5 s) and its workers' grace
    (20 s): SIGKILL came before the workers' checkpoints."""
    from aios.device_agent.service import AgentConfig

    agent = AgentConfig(node_id="n")
    assert agent_shutdown_s({}) > agent.drain_s + agent.stop_grace_s
    assert agent_shutdown_s({"AIOS_AGENT_STOP_GRACE_S": "60"}) > agent.drain_s + 60
    assert agent_shutdown_s({"AIOS_AGENT_STOP_GRACE_S": "soon"}) == agent_shutdown_s({})  # the agent refuses it
