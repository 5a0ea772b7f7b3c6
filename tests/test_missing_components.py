"""A component that is not provisioned is reported with how to provision it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowmill.local import ComponentMissing
from flowmill.local.kafka import EmbeddedKafka
from flowmill.local.redis import EmbeddedRedis
from tests.harness.s3_server import SeaweedS3


def test_kafka_without_cache_names_provision_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWMILL_CACHE", str(tmp_path))
    broker = EmbeddedKafka()

    with pytest.raises(ComponentMissing) as err:
        broker.start()

    assert "scripts/provision.sh" in str(err.value)
    assert "Kafka" in str(err.value)
    assert not broker.running


def test_kafka_with_stale_classpath_names_provision_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an emptied Maven repository leaves behind: a classpath naming jars that are gone.
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "classpath.txt").write_text(str(tmp_path / "gone" / "kafka.jar"))
    monkeypatch.setenv("FLOWMILL_CACHE", str(tmp_path))

    with pytest.raises(ComponentMissing, match=r"scripts/provision\.sh"):
        EmbeddedKafka().start()


def test_redis_without_binary_names_provision_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWMILL_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(ComponentMissing, match=r"redis-server.*scripts/provision\.sh"):
        EmbeddedRedis().start()


def test_s3_server_without_weed_names_provision_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWMILL_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(ComponentMissing, match=r"weed .*scripts/provision\.sh seaweedfs"):
        SeaweedS3().start()
