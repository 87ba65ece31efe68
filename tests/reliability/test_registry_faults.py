"""Model and disk faults: exporting to a full or read-only registry, and a worker started on a
corrupt latest version.

How the faults are made, for real:
- full disk: the registry is a size-limited tmpfs mount (`mount -t tmpfs -o size=...`), filled
  so that writing fails with ENOSPC at a chosen step. Where mounting is not permitted (not root),
  the CLI export runs with RLIMIT_FSIZE instead (writes past the limit fail with EFBIG) and the
  step-by-step test is skipped.
- read-only: a read-only bind mount of a directory holding a good version (root ignores file
  modes, so chmod would prove nothing here). Without mount permission and not root: chmod 0555.
- corrupt version: bytes changed or a file truncated inside a copy of a real baseline version.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.errors import RegistryError
from export.registry import Registry, sha256_file
from stream_app.demo import publish_catalog
from tests.integration.conftest import (
    REPO,
    consume_until,
    event,
    ml100k_items,
    produce,
    run,
    settings_env,
)

PAGE = 4096  # tmpfs accounts whole pages


@contextmanager
def mounted(target: Path, *args: str):
    """`mount <args> <target>` for the duration; None if mounting is not permitted here."""
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        yield None
        return
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def free_bytes(path: Path) -> int:
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize


def leave_free(root: Path, pages: int) -> Path:
    """Fill the filesystem, then give back exactly `pages` pages."""
    filler = root / ".filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError:
            pass
    os.truncate(filler, os.path.getsize(filler) // PAGE * PAGE - pages * PAGE)
    assert free_bytes(root) == pages * PAGE
    return filler


def fake_version(path: Path, tag: str) -> Path:
    """A small version the registry accepts (it checks files and checksums, not ONNX contents);
    every file fits in one page."""
    path.mkdir(parents=True)
    files = {
        "config.json": json.dumps({"kind": "baseline", "dim": 4}),
        "metrics.json": "{}",
        "item.onnx": f"not really onnx {tag} " * 50,
        "tokenizer.json": "{}",
        "catalog_vectors.npy": "x" * 200,
        "catalog_ids.json": "[]",
    }
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} - {".filler"}


# Pages the registry writes for the fake version: 6 files copied in, then manifest.json, then `latest`.
STAGES = {"copying the files": 3, "writing the manifest": 6, "switching latest": 7}


@pytest.mark.parametrize("stage", list(STAGES) + ["nothing (room for exactly one version)"])
def test_register_on_a_full_disk_registers_nothing(tmp_path, stage):
    with mounted(tmp_path / "registry", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as root:
        if root is None:
            pytest.skip("mounting a tmpfs is not permitted here")
        registry = Registry(root)
        registry.register(fake_version(tmp_path / "old", "old"), version="v-old")
        assert registry.latest() == "v-old"
        pages = STAGES.get(stage, 8)
        leave_free(root, pages)

        if stage not in STAGES:  # the control: the accounting above is right, so the failures are real
            registry.register(fake_version(tmp_path / "new", "new"), version="v-new")
            assert registry.versions() == ["v-old", "v-new"] and registry.latest() == "v-new"
            assert free_bytes(root) == PAGE  # the old `latest` file's page, replaced
            return
        with pytest.raises(RegistryError, match="No space left on device") as failure:
            registry.register(fake_version(tmp_path / "new", "new"), version="v-new")
        assert "nothing was registered" in str(failure.value)
        assert registry.versions() == ["v-old"]
        assert registry.latest() == "v-old"
        registry.load("v-old")  # still complete and verified
        assert entries(root) == {"v-old", "latest"}, "a partial version or staging dir was left behind"
        assert free_bytes(root) == pages * PAGE, "space was not given back"


def copy_version(source: Path, target: Path, link: bool = False) -> None:
    shutil.copytree(source, target, copy_function=os.link if link else shutil.copy2)


def baseline_version_dir(baseline_registry: Path) -> Path:
    registry = Registry(baseline_registry)
    return baseline_registry / registry.latest()


def run_cli(args: list[str], preexec=None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "export.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        preexec_fn=preexec,
    )


def limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def assert_failed_cleanly(result: subprocess.CompletedProcess, root: Path, old: str, *messages: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines, result.stderr[-3000:]
    for message in messages:
        assert message in result.stderr, result.stderr[-3000:]
    registry = Registry(root)
    assert registry.versions() == [old] and registry.latest() == old
    registry.load(old)
    assert entries(root) == {old, "latest"}, f"left behind: {entries(root) - {old, 'latest'}}"
    print(f"\n{error_lines[0][:300]}")


def test_export_to_a_full_registry_fails_cleanly(tmp_path, baseline_registry):
    """`models bootstrap` (the baseline export: ONNX export, parity, register) into a registry with
    16 MiB free; item.onnx alone is ~90 MB."""
    source = baseline_version_dir(baseline_registry)
    size = sum(p.stat().st_size for p in source.iterdir())
    with mounted(tmp_path / "registry", "-t", "tmpfs", "-o", f"size={size + (16 << 20)}", "tmpfs") as root:
        preexec, message, tmpfs = None, "No space left on device", root is not None
        if not tmpfs:  # no mount permission: a per-file size limit on the export process instead
            root = tmp_path / "registry"
            preexec, message = limit_file_size(16 << 20), "File too large"
        copy_version(source, root / "v-old")
        Registry(root).set_latest("v-old")
        before = free_bytes(root)
        result = run_cli(["models", "bootstrap", "--registry", str(root), "--latest"], preexec=preexec)
        assert_failed_cleanly(result, root, "v-old", message, "nothing was registered")
        if tmpfs:  # (a shared disk's free space moves with other jobs)
            assert free_bytes(root) >= before - PAGE, "the partial export still takes space"


def test_export_to_a_read_only_registry_fails_fast_and_cleanly(tmp_path, baseline_registry):
    writable = tmp_path / "registry"
    writable.mkdir()
    copy_version(baseline_version_dir(baseline_registry), writable / "v-old", link=True)
    Registry(writable).set_latest("v-old")
    with mounted(tmp_path / "ro", "--bind", str(writable)) as root:
        read_only = (
            root is not None
            and subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], capture_output=True).returncode == 0
        )
        if not read_only:
            if os.geteuid() == 0:
                pytest.skip("cannot mount read-only here, and root ignores file modes")
            root = writable
            os.chmod(root, 0o555)
        try:
            result = run_cli(["models", "bootstrap", "--registry", str(root), "--latest"], timeout_s=300)
        finally:
            os.chmod(writable, 0o755)
        assert_failed_cleanly(
            result, root, "v-old", "is not writable", "Read-only file system" if read_only else "Permission denied"
        )


def tamper(path: Path) -> None:
    """Change one byte in the middle of a (hard-linked) file without touching the original."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def truncate_and_rehash(version: Path, name: str) -> None:
    """Cut a file in half and update the manifest to match: checksums pass, the file is still broken."""
    data = (version / name).read_bytes()
    (version / name).unlink()
    (version / name).write_bytes(data[: len(data) // 2])
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = {"sha256": sha256_file(version / name), "bytes": len(data) // 2}
    manifest_path.unlink()
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.integration
def test_worker_refuses_a_corrupt_latest_and_serves_the_newest_good_version(
    settings, start_worker, tmp_path, baseline_registry
):
    source = baseline_version_dir(baseline_registry)
    root = tmp_path / "registry"
    root.mkdir()
    copy_version(source, root / "v1-good", link=True)
    copy_version(source, root / "v2-tampered", link=True)
    tamper(root / "v2-tampered" / "item.onnx")
    (root / "latest").write_text("v2-tampered\n")
    settings = settings.replace(registry={"path": root})

    catalog = ml100k_items(20)
    run(publish_catalog(settings, catalog))
    worker = start_worker(settings)
    health = worker.health()
    assert health["model_version"] == "v1-good"
    reason = health["refused_versions"].get("v2-tampered", "")
    assert "item.onnx: checksum mismatch" in reason, health
    _, body = worker.get("/metrics")
    assert "streamrec_model_refusals_total 1.0" in body.decode()
    refusal_lines = [line for line in worker.log().splitlines() if "[ERROR]" in line and "v2-tampered" in line]
    assert any("refusing model version v2-tampered (latest)" in line for line in refusal_lines), worker.log()[-3000:]
    assert any("serving model version v1-good instead" in line for line in refusal_lines), refusal_lines

    run(produce(settings, settings.topics.events, [event(1, "alice", "1")]))
    records = run(consume_until(settings, settings.topics.recommendations, lambda rs: len(rs) >= 1))
    assert json.loads(records[0].value)["model_version"] == "v1-good"
    print(
        f"\ncorrupt latest: served v1-good; /health refused_versions: v2-tampered: {reason.splitlines()[0]} "
        f"{reason.splitlines()[1].strip() if len(reason.splitlines()) > 1 else ''}"
    )


@pytest.mark.integration
def test_worker_with_no_servable_version_exits_with_the_reason(settings, tmp_path, baseline_registry):
    root = tmp_path / "registry"
    root.mkdir()
    copy_version(baseline_version_dir(baseline_registry), root / "v1-broken", link=True)
    truncate_and_rehash(root / "v1-broken", "item.onnx")
    (root / "latest").write_text("v1-broken\n")
    settings = settings.replace(registry={"path": root})

    result = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        cwd=REPO,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "error: the worker cannot start: no model version" in result.stderr, result.stderr[-3000:]
    assert "- v1-broken: " in result.stderr and "item.onnx" in result.stderr, result.stderr[-3000:]
    print(f"\nno servable version: exit 1, {result.stderr.strip().splitlines()[-1][:200]}")
