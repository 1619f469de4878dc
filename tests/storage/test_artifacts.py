"""The artifact store: today's layout by default, a shared directory, or S3 (a real moto server on 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from storage.artifacts import MARKER, ArtifactStore, artifact_exists, cache_dir, is_remote, local_copy
from storage.config import Settings
from storage.errors import ArtifactError
from tests.fixtures.s3 import PREFIX, S3Bucket
from trainers.training.launch import model_dir


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("FTBOT_HOME", str(path))
    return path


def _adapter(directory: Path) -> Path:
    """A directory shaped like a saved adapter, with a nested folder."""
    (directory / "nested").mkdir(parents=True)
    (directory / "adapter_config.json").write_text('{"r": 8}')
    (directory / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (directory / "nested" / "extra.txt").write_text("nested file")
    return directory


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MARKER}


def test_is_remote_tells_urls_from_paths():
    assert is_remote("s3://bucket/prefix/models/1/adapter")
    assert not is_remote("/srv/ftbot/models/1/adapter") and not is_remote("relative/dir")
    assert not is_remote("file:///srv/ftbot") and not is_remote("C:\\ftbot\\models")
    assert not is_remote("ft:gpt-4o-mini-2024-07-18:acme::a1")  # an OpenAI model id is no store location


def test_the_default_store_is_todays_layout_in_ftbot_home_and_copies_nothing(home):
    store = ArtifactStore.from_settings(Settings.from_env({"FTBOT_HOME": str(home)}))
    assert store.is_default and not store.remote
    assert store.location("models", 7, "adapter") == str(model_dir(7) / "adapter")
    adapter = _adapter(model_dir(7) / "adapter")
    written = (adapter / "adapter_config.json").stat().st_mtime_ns
    assert store.publish_dir(adapter, "models", 7, "adapter") == str(adapter)
    assert (adapter / "adapter_config.json").stat().st_mtime_ns == written and not (adapter / MARKER).exists()
    assert local_copy(str(adapter)) == adapter  # a path is used in place
    assert artifact_exists(str(adapter)) and not artifact_exists(str(home / "models" / "8" / "adapter"))
    assert not (home / "cache").exists()


def test_a_shared_directory_store_gets_the_same_layout_by_copy(home, tmp_path):
    shared = tmp_path / "nfs" / "ftbot"
    store = ArtifactStore.from_settings(Settings.from_env({"FTBOT_HOME": str(home), "FTBOT_ARTIFACTS_URL": str(shared)}))
    assert not store.is_default and not store.remote
    adapter = _adapter(tmp_path / "trained" / "adapter")
    location = store.publish_dir(adapter, "models", 3, "adapter")
    assert location == str(shared / "models" / "3" / "adapter") and _files(Path(location)) == _files(adapter)
    log = tmp_path / "worker.log"
    log.write_text("step 1\n")
    assert Path(store.publish_file(log, "jobs", 3, "worker.log")).read_text() == "step 1\n"
    assert local_copy(location) == Path(location)
    # Publishing again replaces the directory as a whole (no leftovers from the first copy).
    (adapter / "nested" / "extra.txt").unlink()
    store.publish_dir(adapter, "models", 3, "adapter")
    assert _files(Path(location)) == _files(adapter)


def test_a_directory_round_trips_through_s3_with_the_marker_written_last(home, s3_artifacts: S3Bucket, tmp_path):
    store = ArtifactStore.from_settings()
    assert store.remote and not store.is_default and store.root == s3_artifacts.url
    adapter = _adapter(tmp_path / "adapter")
    location = store.publish_dir(adapter, "models", 5, "adapter")
    assert location == f"{s3_artifacts.url}/models/5/adapter"
    keys = s3_artifacts.keys("models/5/adapter")
    assert keys == sorted(f"models/5/adapter/{name}" for name in [*_files(adapter), MARKER])
    marker = json.loads(s3_artifacts.read(f"models/5/adapter/{MARKER}"))
    assert marker["files"] == 3 and marker["bytes"] == sum(len(b) for b in _files(adapter).values())
    listed = s3_artifacts.client.list_objects_v2(Bucket=s3_artifacts.bucket, Prefix=f"{PREFIX}/models/5/adapter/")
    written = {item["Key"].rsplit("/", 1)[-1]: item["LastModified"] for item in listed["Contents"]}
    assert written[MARKER] == max(written.values())

    copy = local_copy(location)
    assert copy == cache_dir(location) and copy.is_relative_to(home / "cache" / "artifacts")
    assert _files(copy) == _files(adapter) and (copy / MARKER).is_file()
    assert artifact_exists(location) and not artifact_exists(f"{s3_artifacts.url}/models/6/adapter")

    chart = tmp_path / "loss.png"
    chart.write_bytes(b"\x89PNG fake")
    assert store.publish_file(chart, "jobs", 5, "loss.png") == f"{s3_artifacts.url}/jobs/5/loss.png"
    assert s3_artifacts.read("jobs/5/loss.png") == b"\x89PNG fake"


def test_the_local_copy_is_reused_without_asking_the_store_again(home, s3_artifacts: S3Bucket, tmp_path):
    location = ArtifactStore.from_settings().publish_dir(_adapter(tmp_path / "adapter"), "models", 1, "adapter")
    first = local_copy(location)
    for key in s3_artifacts.keys():  # the store forgets it: a second copy could only come from the cache
        s3_artifacts.client.delete_object(Bucket=s3_artifacts.bucket, Key=f"{PREFIX}/{key}")
    assert local_copy(location) == first and _files(first)


def test_an_upload_without_its_marker_is_not_taken_as_complete(home, s3_artifacts: S3Bucket, tmp_path):
    adapter = _adapter(tmp_path / "adapter")
    location = f"{s3_artifacts.url}/models/2/adapter"
    # An upload cut short: some files, no marker.
    s3_artifacts.client.put_object(Bucket=s3_artifacts.bucket, Key=f"{PREFIX}/models/2/adapter/adapter_config.json",
                                   Body=b'{"r": 8}')
    assert not artifact_exists(location)
    with pytest.raises(ArtifactError, match="incomplete: its upload did not finish"):
        local_copy(location)
    assert not cache_dir(location).exists()

    ArtifactStore.from_settings().publish_dir(adapter, "models", 2, "adapter")
    assert _files(local_copy(location)) == _files(adapter)


def test_an_interrupted_local_copy_is_downloaded_again(home, s3_artifacts: S3Bucket, tmp_path):
    adapter = _adapter(tmp_path / "adapter")
    location = ArtifactStore.from_settings().publish_dir(adapter, "models", 4, "adapter")
    partial = cache_dir(location)
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("half")  # a copy that died before its marker
    copy = local_copy(location)
    assert copy == partial and _files(copy) == _files(adapter)


def test_a_missing_location_bucket_or_endpoint_is_one_clear_error(home, s3_artifacts: S3Bucket, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist in the artifact store"):
        local_copy(f"{s3_artifacts.url}/models/404/adapter")

    with pytest.raises(ArtifactError, match="the bucket 'no-such-bucket' does not exist") as missing:
        local_copy("s3://no-such-bucket/ftbot/models/1/adapter")
    assert "FTBOT_ARTIFACTS_URL" in str(missing.value)
    elsewhere = Settings.from_env({"FTBOT_HOME": str(home), "FTBOT_ARTIFACTS_URL": "s3://no-such-bucket/ftbot",
                                   "FTBOT_ARTIFACTS_ENDPOINT_URL": s3_artifacts.endpoint})
    with pytest.raises(ArtifactError, match="cannot write .* the bucket 'no-such-bucket' does not exist"):
        ArtifactStore.from_settings(elsewhere).publish_dir(_adapter(tmp_path / "adapter"), "models", 1, "adapter")

    # Port 9 on loopback (discard) has no S3 behind it: refused at once.
    unreachable = Settings.from_env({"FTBOT_HOME": str(home), "FTBOT_ARTIFACTS_URL": s3_artifacts.url,
                                     "FTBOT_ARTIFACTS_ENDPOINT_URL": "http://127.0.0.1:9"})
    with pytest.raises(ArtifactError, match="http://127.0.0.1:9 cannot be reached.*FTBOT_ARTIFACTS_ENDPOINT_URL"):
        local_copy(f"{s3_artifacts.url}/models/1/adapter", unreachable)


def test_without_s3fs_a_remote_store_says_to_install_the_cluster_extra(home, monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # what `import s3fs` meets on a host without the extra
    with pytest.raises(ArtifactError, match=r"s3fs is not installed: install the cluster extra .*ftbot\[cluster\]"):
        local_copy("s3://bucket/ftbot/models/1/adapter")


def test_the_default_store_never_imports_fsspec(tmp_path):
    script = ("import sys\nfrom storage.artifacts import ArtifactStore, local_copy\n"
              "store = ArtifactStore.from_settings()\nlocal_copy(store.location('models', 1, 'adapter'))\n"
              "assert 'fsspec' not in sys.modules and 's3fs' not in sys.modules, 'imported'\n")
    env = {"FTBOT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                               cwd=Path(__file__).resolve().parents[2])
    assert completed.returncode == 0, completed.stderr
