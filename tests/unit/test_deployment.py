"""docker-compose.yml can't run here (no Docker engine); check it against the code."""

import re
from pathlib import Path

import yaml

from core.brokers import cluster_properties
from core.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_images():
    services = COMPOSE["services"]
    assert set(services) == {"kafka", "model-init", "worker", "trainer"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for name in ("model-init", "worker", "trainer"):
        dockerfile = REPO / services[name]["build"]["dockerfile"]
        assert dockerfile.is_file()


def test_environment_names_are_real_settings(monkeypatch):
    """Every STREAMREC_* name in the compose file and the images is a setting (nested names included:
    STREAMREC_KAFKA__BROKER), and the compose values parse."""
    known = set(Settings().to_env())
    for name in ("model-init", "worker", "trainer"):
        env = COMPOSE["services"][name]["environment"]
        assert set(env) <= known, f"{name}: unknown settings {set(env) - known}"
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, str(value))
            settings = load_settings()  # values parse
        assert str(settings.registry.path) == "/var/lib/streamrec/registry"
        if name != "model-init":
            assert settings.kafka.broker == "kafka://kafka:9092"
    for dockerfile in ("worker", "trainer"):
        names = set(re.findall(r"STREAMREC_\w+", (REPO / f"docker/{dockerfile}.Dockerfile").read_text()))
        assert names and names <= known, f"{dockerfile}.Dockerfile: unknown settings {names - known}"


def test_worker_image_has_no_torch():
    worker = (REPO / "docker/worker.Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in worker and "[train]" not in worker
    assert "torch" not in "\n".join(line for line in worker.splitlines() if not line.startswith("#"))
    assert "[train]" in (REPO / "docker/trainer.Dockerfile").read_text()


def test_worker_and_trainer_share_the_registry():
    worker, trainer = COMPOSE["services"]["worker"], COMPOSE["services"]["trainer"]
    assert any(v.startswith("registry:") for v in worker["volumes"])
    assert any(v.startswith("registry:") for v in trainer["volumes"])


def test_compose_kafka_is_the_test_broker():
    """Same Kafka version as kafka/pom.xml, same broker settings as the tests' KafkaCluster."""
    pom_version = re.search(r"<kafka.version>(.+)</kafka.version>", (REPO / "kafka/pom.xml").read_text()).group(1)
    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{pom_version}"
    env = kafka["environment"]
    for key, value in cluster_properties(1).items():
        assert env.get("KAFKA_" + key.upper().replace(".", "_")) == value, key


def test_an_empty_registry_gets_a_model_before_the_worker_starts():
    services = COMPOSE["services"]
    init = services["model-init"]
    assert init["command"][:3] == ["streamrec", "models", "ensure"]  # keeps a loadable latest, else builds one
    assert any(v.startswith("registry:") for v in init["volumes"])
    for name in ("worker", "trainer"):
        assert services[name]["depends_on"]["model-init"] == {"condition": "service_completed_successfully"}
    assert services["worker"]["restart"] == "on-failure"
