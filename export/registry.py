"""Versioned model registry: one directory per version, a `latest` pointer, checksums.

Layout under the registry root:

    latest                      text file holding one version name (switched by os.replace)
    20261123T213000Z-tt/        one complete version
        manifest.json           {"format", "version", "created_at", "files": {name: {sha256, bytes}}}
        config.json metrics.json item.onnx [user.onnx] tokenizer.json
        catalog_vectors.npy catalog_ids.json
    .staging-<random>/          work in progress; never listed, never loaded

A version becomes visible in one `rename` of a fully written, hashed directory, so a
reader sees either nothing or the complete version. Loading re-hashes every file and
refuses a version whose files are missing, extra-modified or unlisted. Artifacts are
ONNX, JSON and .npy only: nothing is ever unpickled.

Torch-free: the worker imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator

from core.errors import ConfigError, RegistryError
from core.io import atomic_write_json, atomic_write_text, fsync_dir
from core.model_config import CONFIG_FILE, ModelConfig

MANIFEST = "manifest.json"
LATEST = "latest"
STAGING_PREFIX = ".staging-"
FORMAT = 1
KINDS = {"baseline": "base", "two_tower": "tt"}  # kind -> short suffix of default version names
REQUIRED = ("config.json", "metrics.json", "item.onnx", "tokenizer.json", "catalog_vectors.npy", "catalog_ids.json")
REQUIRED_BY_KIND = {"baseline": REQUIRED, "two_tower": REQUIRED + ("user.onnx",)}
ALLOWED_SUFFIXES = (".onnx", ".json", ".npy", ".txt", ".safetensors", ".md")  # never pickles
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def validate_version_name(name: str) -> str:
    """A version name is one plain path component: letters, digits, '.', '_', '-'."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name == LATEST:
        raise RegistryError(
            f"invalid model version name {name!r}: use 1-100 characters from [A-Za-z0-9._-], "
            f"starting with a letter or digit, without '..' and not {LATEST!r}"
        )
    return name


def _validate_file_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(f"invalid artifact file name {name!r}: must be a plain file name like 'item.onnx'")
    return name


def is_storage_error(error: BaseException) -> bool:
    """Did writing fail because of the filesystem (full, read-only, quota, permissions)? OSError, or
    the plain Exception the Rust `tokenizers` library raises with "(os error N)" in its message."""
    return isinstance(error, OSError) or re.search(r"\(os error \d+\)", str(error)) is not None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise RegistryError(f"{path}: {what} is missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: {what} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ModelVersion:
    """One verified version directory."""

    name: str
    path: Path
    config: dict  # config.json as written
    metrics: dict
    manifest: dict = field(default_factory=dict, repr=False, compare=False)  # manifest.json as loaded
    model_config: ModelConfig = field(default=None, repr=False, compare=False)  # config.json, typed

    def __post_init__(self) -> None:
        if self.model_config is None:
            object.__setattr__(self, "model_config", ModelConfig.from_dict(self.config))

    def __hash__(self) -> int:
        return hash((self.name, str(self.path)))

    @property
    def kind(self) -> str:
        return self.model_config.kind

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(sorted(self.manifest.get("files", {})))

    @property
    def sha256(self) -> str:
        """Digest of manifest.json, which pins every file: the version's identity (model-updates)."""
        return sha256_file(self.path / MANIFEST)

    def has(self, name: str) -> bool:
        return _validate_file_name(name) in self.manifest.get("files", {})

    def file(self, name: str) -> Path:
        """Path of an artifact listed in the manifest (e.g. 'item.onnx')."""
        if not self.has(name):
            raise RegistryError(
                f"model version {self.name!r} ({self.kind}) has no file {name!r}; it has: {', '.join(self.files)}"
            )
        return self.path / name


class Registry:
    """A directory of model versions. Readers call `load`; the trainer calls `register`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- paths ---------------------------------------------------------------------------

    def version_path(self, version: str) -> Path:
        """root/version, refusing any name that is not one plain component inside the root."""
        validate_version_name(version)
        path = self.root / version
        root = self.root.resolve()
        if path.resolve().parent != root:  # e.g. a symlinked version dir pointing elsewhere
            raise RegistryError(f"model version {version!r} resolves outside the registry root {root}")
        return path

    def new_staging_dir(self) -> Path:
        """An empty directory inside the root (same filesystem, so `register` can rename it)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
            path.chmod(0o755)  # workers may run as another user: versions are world-readable
        except OSError as e:
            raise RegistryError(f"model registry {self.root} is not writable: {e}") from e
        return path

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A staging directory to build a new version in and `register`. A storage failure while
        building (full, read-only) becomes a RegistryError saying nothing was registered; the
        directory is always removed (once registered it has been renamed away already)."""
        path = self.new_staging_dir()
        try:
            yield path
        except Exception as e:
            if not is_storage_error(e):
                raise
            raise RegistryError(f"writing the new version to {self.root} failed: {e}; nothing was registered") from e
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def check_writable(self) -> None:
        """Fail now, before minutes of export, if a version could not even be staged (read-only, no
        permission): creates and removes an empty staging directory. A full disk shows later."""
        shutil.rmtree(self.new_staging_dir())

    # --- listing and the latest pointer --------------------------------------------------

    def versions(self) -> list[str]:
        """Names of the versions that have a manifest, oldest first (by manifest created_at)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.name.startswith(".") or not p.is_dir() or not _NAME.fullmatch(p.name):
                continue
            try:
                manifest = _read_json(p / MANIFEST, "manifest")
            except RegistryError:
                continue  # incomplete or corrupt: `load` explains, listing skips
            found.append((str(manifest.get("created_at", "")), p.name))
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        """The version the `latest` pointer names, or None if nothing was ever made latest."""
        try:
            name = (self.root / LATEST).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return validate_version_name(name)

    def set_latest(self, version: str) -> None:
        """Point `latest` at a verified version: temp file + os.replace, so readers never see half."""
        self.load(version)
        self._write_latest(version)

    def _write_latest(self, version: str) -> None:
        atomic_write_text(self.root / LATEST, version + "\n")

    # --- loading -------------------------------------------------------------------------

    def load(self, version: str | None = None) -> ModelVersion:
        """Verify a version (None = latest) against its manifest and return it."""
        if version is None:
            version = self.latest()
            if version is None:
                raise RegistryError(
                    f"model registry {self.root} has no latest version; build one with "
                    f"`python -m export.cli models bootstrap` (baseline) or `streamrec train`"
                )
        path = self.version_path(version)
        if not path.is_dir():
            known = ", ".join(self.versions()) or "none"
            raise RegistryError(f"model version {version!r} not found in {self.root} (versions: {known})")
        if not (path / MANIFEST).is_file():
            raise RegistryError(
                f"model version {version!r} at {path} is incomplete: no {MANIFEST}. "
                f"It was never registered; delete the directory or re-run the export"
            )
        manifest = _read_json(path / MANIFEST, "manifest")
        files = manifest.get("files")
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise RegistryError(
                f"{path / MANIFEST}: unsupported manifest (format {manifest.get('format')!r}, "
                f"expected {FORMAT} with a 'files' object); re-export this version"
            )

        problems = []
        for name, entry in sorted(files.items()):
            try:
                _validate_file_name(name)
            except RegistryError as e:
                problems.append(str(e))
                continue
            f = path / name
            if not f.is_file() or f.is_symlink():
                problems.append(f"{name}: missing")
                continue
            size, digest = f.stat().st_size, sha256_file(f)
            if size != entry.get("bytes") or digest != entry.get("sha256"):
                problems.append(
                    f"{name}: checksum mismatch (sha256 {digest[:12]}…, {size} bytes; "
                    f"manifest says {str(entry.get('sha256'))[:12]}…, {entry.get('bytes')} bytes)"
                )
        config: dict = {}
        if CONFIG_FILE in files and (path / CONFIG_FILE).is_file():
            config = _read_json(path / CONFIG_FILE, "config")
        kind = config.get("kind")
        model_config = None
        if kind not in REQUIRED_BY_KIND:
            problems.append(f"{CONFIG_FILE}: kind {kind!r} is not one of {sorted(REQUIRED_BY_KIND)}")
        else:
            problems += [
                f"{name}: required for kind {kind!r} but not in the manifest"
                for name in REQUIRED_BY_KIND[kind]
                if name not in files
            ]
            try:
                model_config = ModelConfig.from_dict(config)
            except ConfigError as e:
                if not problems:  # e.g. written by a newer streamrec: say that, not "corrupt"
                    raise RegistryError(f"model version {version!r} at {path} cannot be served here: {e}") from None
                problems.append(str(e))
        if problems:
            raise RegistryError(
                f"model version {version!r} at {path} is incomplete or corrupt; refusing to load it:\n  - "
                + "\n  - ".join(problems)
                + "\nRe-export it, or switch to another version with `set_latest`."
            )
        metrics = _read_json(path / "metrics.json", "metrics")
        return ModelVersion(
            name=version, path=path, config=config, metrics=metrics, manifest=manifest, model_config=model_config
        )

    # --- registering ---------------------------------------------------------------------

    def _default_name(self, kind: str) -> str:
        base = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{KINDS[kind]}"
        name, n = base, 1
        while (self.root / name).exists():
            n += 1
            name = f"{base}{n}"
        return name

    def register(self, staging_dir: Path, *, version: str | None = None, make_latest: bool = True) -> ModelVersion:
        """Hash the staged files, write the manifest, move the directory into place atomically.

        `staging_dir` should come from `new_staging_dir()` (same filesystem); a directory
        elsewhere is copied into the root first. On any error nothing is registered.
        """
        staging_dir = Path(staging_dir)
        if version is not None:
            validate_version_name(version)
        if not staging_dir.is_dir():
            raise RegistryError(f"staging directory {staging_dir} does not exist")
        config = _read_json(staging_dir / CONFIG_FILE, "config")
        kind = config.get("kind")
        if kind not in REQUIRED_BY_KIND:
            raise RegistryError(f"{staging_dir / CONFIG_FILE}: kind {kind!r} is not one of {sorted(REQUIRED_BY_KIND)}")
        try:
            ModelConfig.from_dict(config)
        except ConfigError as e:
            raise RegistryError(f"cannot register {staging_dir}: {e}") from None
        if not (staging_dir / "metrics.json").exists():
            atomic_write_json(staging_dir / "metrics.json", {})
        problems = [
            f"{name}: required for kind {kind!r} but missing"
            for name in REQUIRED_BY_KIND[kind]
            if not (staging_dir / name).is_file()
        ]
        for p in sorted(staging_dir.iterdir()):
            if p.name == MANIFEST or p.name.startswith("."):
                continue
            if p.is_symlink() or not p.is_file():
                problems.append(f"{p.name}: only regular files can be registered")
            elif not p.name.endswith(ALLOWED_SUFFIXES):
                problems.append(f"{p.name}: not an allowed artifact type {ALLOWED_SUFFIXES} (nothing pickled)")
            else:
                try:
                    _validate_file_name(p.name)
                except RegistryError as e:
                    problems.append(str(e))
        if problems:
            raise RegistryError(f"cannot register {staging_dir}:\n  - " + "\n  - ".join(problems))

        self.root.mkdir(parents=True, exist_ok=True)
        name = validate_version_name(version) if version is not None else self._default_name(kind)
        target = self.version_path(name)
        if target.exists():
            raise RegistryError(f"model version {name!r} already exists at {target}; choose another name")

        copied = None
        try:
            if staging_dir.resolve().parent != self.root.resolve():  # rename needs the same filesystem
                copied = self.new_staging_dir()
                shutil.copytree(staging_dir, copied, dirs_exist_ok=True)
                staging_dir = copied

            files = {}
            for p in sorted(staging_dir.iterdir()):
                if p.name == MANIFEST or p.name.startswith("."):
                    continue
                with p.open("rb") as f:
                    os.fsync(f.fileno())
                files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            manifest = {
                "format": FORMAT,
                "version": name,
                "kind": kind,
                "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
                "files": files,
            }
            atomic_write_json(staging_dir / MANIFEST, manifest)  # fsyncs the file and staging_dir
            os.rename(staging_dir, target)  # atomic: the version appears complete or not at all
        except OSError as e:  # disk full, read-only, ...: nothing was registered
            if copied is not None:
                shutil.rmtree(copied, ignore_errors=True)
            raise RegistryError(
                f"could not register model version {name!r} in {self.root}: {e}; nothing was registered"
            ) from e
        try:
            fsync_dir(self.root)
            loaded = self.load(name)
            if make_latest:
                self._write_latest(name)
        except (OSError, RegistryError) as e:  # e.g. no room left for `latest`: take the version back out
            self._withdraw(target)
            raise RegistryError(
                f"could not register model version {name!r} in {self.root}: {e}; nothing was registered"
            ) from e
        return loaded

    def _withdraw(self, path: Path) -> None:
        """Un-publish a version directory that was renamed into place but not completed (not announced
        yet): rename it back out of sight first, then delete it."""
        hidden = path.with_name(f"{STAGING_PREFIX}withdrawn-{path.name}")
        try:
            os.rename(path, hidden)
        except OSError:
            hidden = path
        shutil.rmtree(hidden, ignore_errors=True)
        fsync_dir(self.root)
