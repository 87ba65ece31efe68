"""One settings object (core/settings.py): nested sections from STREAMREC_<SECTION>__<FIELD>, the old
flat names refused, flags over env, the same settings in a child process, options derived from it."""

import ast
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from core.errors import ConfigError
from core.settings import RENAMED, KafkaSecurity, Settings, default_of, env_name, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.upper().startswith("STREAMREC_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    "old, new",
    [
        ("STREAMREC_BROKER", "STREAMREC_KAFKA__BROKER"),
        ("STREAMREC_REGISTRY", "STREAMREC_REGISTRY__PATH"),  # would otherwise fail as the `registry` section's JSON
        ("STREAMREC_DATA_DIR", "STREAMREC_WORKER__DATA_DIR"),
        ("STREAMREC_ROCKSDB_BLOCK_CACHE_MB", "STREAMREC_ROCKSDB__BLOCK_CACHE_MB"),
        ("STREAMREC_SECURITY__SASL_PASSWORD", "STREAMREC_KAFKA__SECURITY__SASL_PASSWORD"),
        ("streamrec_partitions", "STREAMREC_KAFKA__PARTITIONS"),  # env names are case-insensitive
    ],
)
def test_an_old_flat_name_is_refused_naming_the_new_one(monkeypatch, old, new):
    monkeypatch.setenv(old, "kafka://elsewhere:9092")
    message = f"{old} was renamed {new} (docs/ARCHITECTURE.md, Settings)"
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(e.value) == message
    with pytest.raises(ConfigError):
        Settings()  # however the settings are built


def test_every_old_name_maps_to_a_real_setting():
    known = set(Settings().to_env())
    for new in RENAMED.values():
        assert new in known or any(name.startswith(new + "__") for name in known), new


def test_a_command_exits_with_the_rename(monkeypatch):
    from stream_app.cli import app

    result = CliRunner().invoke(app, ["rollback"], env={"STREAMREC_BROKER": "kafka://elsewhere:9092"})
    assert result.exit_code == 1
    assert "error: STREAMREC_BROKER was renamed STREAMREC_KAFKA__BROKER" in result.output


def test_nested_env_vars(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA__BROKER", "kafka://a:1;b:2")
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY__PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("STREAMREC_TOPICS__EVENTS", "clicks")
    monkeypatch.setenv("STREAMREC_WORKER__EVENT_WEIGHTS", '{"view": 1, "like": 3}')
    monkeypatch.setenv("STREAMREC_WORKER__ANN_MIN_ITEMS", "null")
    monkeypatch.setenv("STREAMREC_ROCKSDB__BLOCK_CACHE_MB", "32")
    monkeypatch.setenv("STREAMREC_REGISTRY__PATH", "/models")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "a:1,b:2"
    assert s.kafka.security.protocol == "SASL_SSL" and s.kafka.security.sasl_password.get_secret_value() == "s3cret"
    assert s.topics.events == "clicks" and s.topics.items == "items"
    assert s.worker.event_weights == {"view": 1.0, "like": 3.0} and s.worker.ann_min_items is None
    assert s.rocksdb.block_cache_mb == 32 and s.registry.path == Path("/models")


def test_flags_override_the_env_field_by_field(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA__BROKER", "kafka://from-env:9092")
    monkeypatch.setenv("STREAMREC_KAFKA__PARTITIONS", "4")
    s = load_settings({"kafka.broker": "kafka://from-flag:9092", "registry.path": None})  # None: not given
    assert s.kafka.broker == "kafka://from-flag:9092" and s.kafka.partitions == 4
    assert s.registry.path == default_of("registry.path")


@pytest.mark.parametrize(
    "name, value",
    [
        ("STREAMREC_WORKER__DATADIR", "/x"),  # a typo is not ignored
        ("STREAMREC_WORKER__WEB_PORT", "http"),
        ("STREAMREC_KAFKA__BROKER_ENGINE", "redpanda"),
    ],
)
def test_a_bad_setting_is_a_config_error(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="invalid settings"):
        load_settings()


def test_a_child_process_gets_the_same_settings(monkeypatch):
    settings = Settings(
        kafka={
            "broker": "kafka://b:1",
            "partitions": 3,
            "security": KafkaSecurity(
                protocol="SASL_SSL", sasl_username="svc", sasl_password="pw", ssl_check_hostname=False
            ),
        },
        worker={"data_dir": "/state", "ann_min_items": None, "event_weights": {"view": 2.0}},
        topics={"events": "e2"},
        trainer={"checkpoint_dir": "/ckpt"},
    )
    env = settings.process_env({"PATH": "/bin", "STREAMREC_WORKER__TOP_K": "99", "STREAMREC_BROKER": "old"})
    assert env["PATH"] == "/bin" and "STREAMREC_BROKER" not in env  # the parent's STREAMREC_* are replaced
    assert env["STREAMREC_KAFKA__SECURITY__SASL_PASSWORD"] == "pw"  # the secret travels, unmasked
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings() == settings


def test_replace_validates_and_does_not_read_the_env(monkeypatch):
    settings = Settings()
    monkeypatch.setenv("STREAMREC_WORKER__TOP_K", "99")
    changed = settings.replace(worker={"web_port": "7000"}, kafka={"partitions": 2})
    assert changed.worker.web_port == 7000 and changed.kafka.partitions == 2 and changed.worker.top_k == 10
    assert settings.worker.web_port == 6066  # frozen: a copy
    with pytest.raises(ValidationError):
        settings.replace(worker={"web_port": "http"})
    with pytest.raises(ConfigError, match="no section"):
        settings.replace(brokers={"x": 1})


def test_options_name_their_env_var_and_default():
    import typer

    from stream_app.cli import app

    assert env_name("kafka.security.sasl_password") == "STREAMREC_KAFKA__SECURITY__SASL_PASSWORD"
    command = typer.main.get_command(app).commands["worker"]
    broker = next(p for p in command.params if p.name == "broker")
    assert broker.default is None and "$STREAMREC_KAFKA__BROKER, else kafka://127.0.0.1:9092" in broker.help


def test_train_and_retrain_options_default_to_the_configs():
    import typer

    from encoders.cli import app as train_app
    from encoders.config import RetrainConfig, TrainConfig
    from encoders.retrain_cli import app as retrain_app

    train = {p.name: p.default for p in typer.main.get_command(train_app).commands["train"].params}
    assert (train["epochs"], train["lr"], train["threads"]) == (TrainConfig.epochs, TrainConfig.lr, TrainConfig.threads)
    retrain = {p.name: p.default for p in typer.main.get_command(retrain_app).params}
    assert (retrain["epochs"], retrain["lr"], retrain["holdout"]) == (
        RetrainConfig.epochs,
        RetrainConfig.lr,
        RetrainConfig.holdout,
    )
    assert retrain["work_dir"] is None  # the setting: STREAMREC_TRAINER__RETRAIN_DIR, else its default


def test_no_module_writes_os_environ_to_pass_a_value():
    """Settings travel as objects, and to a child process in its env (Settings.process_env)."""
    found = []
    for package in ("core", "stream_app", "state", "export", "encoders", "streamrec"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                target = node.targets[0] if isinstance(node, ast.Assign) else None
                if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
                if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                    "os.environ.update",
                    "os.environ.setdefault",
                    "os.putenv",
                ):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


def test_models_ensure_passes_the_registry_to_training_as_a_value(monkeypatch, tmp_path):
    """`models ensure --data` trains into --registry: handed over in Settings, not through os.environ."""
    import encoders.cli
    from export.cli import app

    seen = []
    monkeypatch.setattr(encoders.cli, "train_and_register", lambda settings, data: seen.append((settings, data)))
    data = tmp_path / "data"
    data.mkdir()
    result = CliRunner().invoke(app, ["models", "ensure", "--data", str(data), "--registry", str(tmp_path / "reg")])
    assert result.exit_code == 0, result.output
    ((settings, given),) = seen
    assert settings.registry.path == tmp_path / "reg" and given == data
    assert "STREAMREC_REGISTRY__PATH" not in os.environ
