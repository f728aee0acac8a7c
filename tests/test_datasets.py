"""model_selection.datasets: splits, the Caltech-256 command on a small archive, upload to moto's real S3 server."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from collections import Counter
from pathlib import Path

import boto3
import pytest
from conftest import write_image_folders

from model_selection import datasets
from model_selection.datasets import DatasetError, caltech256, split, upload

REGION = "us-west-2"


def files(root: Path) -> dict[str, set[tuple[str, str]]]:
    """{split: {(class, file)}}."""
    return {folder.name: {(image.parent.name, image.name) for image in folder.glob("*/*")}
            for folder in sorted(root.iterdir())}


def test_split_is_stratified_seeded_and_complete(tmp_path):
    source = write_image_folders(tmp_path / "source", classes=3, per_class=20, size=8)
    source_images = {(image.parent.name, image.name) for image in source.glob("*/*")}

    first = split(source, tmp_path / "a", seed=0)
    assert set(first) == {"training", "validation", "test"}
    a = files(tmp_path / "a")
    # Nothing lost or duplicated.
    all_files = [item for split_files in a.values() for item in split_files]
    assert len(all_files) == len(set(all_files)) == len(source_images)
    assert set(all_files) == source_images
    # Stratified: 20 per class -> 14 / 3 / 3 for every class.
    for split_name, expected in (("training", 14), ("validation", 3), ("test", 3)):
        assert Counter(label for label, _ in a[split_name]) == {f"class_{k:02d}": expected for k in range(3)}
    # Copies, byte for byte.
    assert (tmp_path / "a" / "test" / next(iter(a["test"]))[0] / next(iter(a["test"]))[1]).read_bytes() == \
        (source / next(iter(a["test"]))[0] / next(iter(a["test"]))[1]).read_bytes()

    split(source, tmp_path / "b", seed=0, copy=False)
    split(source, tmp_path / "c", seed=1)
    assert files(tmp_path / "b") == a
    assert files(tmp_path / "c") != a


def test_small_classes_still_in_every_split_and_too_small_refused(tmp_path):
    source = write_image_folders(tmp_path / "source", classes=2, per_class=3, size=8)
    split(source, tmp_path / "three")
    assert {name: len(items) for name, items in files(tmp_path / "three").items()} == \
        {"training": 2, "validation": 2, "test": 2}

    (tmp_path / "source" / "class_01" / "image_002.png").unlink()
    with pytest.raises(DatasetError, match=r"at least 3 images.*class_01 \(2\)"):
        split(source, tmp_path / "two")
    assert not (tmp_path / "two").exists()
    # Without a test split two images are enough.
    assert set(split(source, tmp_path / "no-test", fractions=(0.5, 0.5, 0.0))) == {"training", "validation"}


def test_refuses_existing_destination_and_bad_input_before_writing(tmp_path):
    source = write_image_folders(tmp_path / "source", classes=2, per_class=4, size=8)
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        split(source, existing)
    assert list(existing.iterdir()) == []

    with pytest.raises(DatasetError, match="no such folder"):
        split(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "image.png").write_bytes(b"png")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        split(tmp_path / "flat", tmp_path / "out")
    with pytest.raises(DatasetError, match="sum to 1.1, not 1"):
        split(source, tmp_path / "out", fractions=(0.7, 0.2, 0.2))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing", "flat", "source"]


def caltech_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


CLASSES = ("001.ak47", "002.american-flag", "003.backpack", "257.clutter")


def test_caltech256_command_on_a_small_archive(tmp_path, capsys):
    members = {f"256_ObjectCategories/{label}/{label[:3]}_{k:04d}.jpg": f"{label}-{k}".encode()
               for label in CLASSES for k in range(1, 7)}
    archive = caltech_archive(tmp_path / "256_ObjectCategories.tar", members)

    assert datasets.main(["caltech256", str(tmp_path / "caltech"), "--archive", str(archive), "--seed", "3"]) == 0
    result = files(tmp_path / "caltech")
    for split_name in ("training", "validation", "test"):
        assert {label for label, _ in result[split_name]} == set(CLASSES[:3])  # clutter left out
    assert sum(len(items) for items in result.values()) == 3 * 6
    assert "training:" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # work folder removed

    caltech256(tmp_path / "with-clutter", archive=archive, keep_clutter=True)
    assert {label for label, _ in files(tmp_path / "with-clutter")["test"]} == set(CLASSES)


def test_caltech256_refuses_path_traversal(tmp_path):
    archive = caltech_archive(tmp_path / "evil.tar", {
        "256_ObjectCategories/001.ak47/001_0001.jpg": b"jpg",
        "256_ObjectCategories/../evil": b"evil",
    })
    with pytest.raises(DatasetError, match=r"'256_ObjectCategories/\.\./evil' would be written outside"):
        caltech256(tmp_path / "out", archive=archive)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out").exists()
    assert datasets.main(["caltech256", str(tmp_path / "out"), "--archive", str(archive)]) == 2


@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"region_name": REGION, "endpoint_url": endpoint}}))
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="study-data", CreateBucketConfiguration={"LocationConstraint": REGION})
    try:
        yield s3
    finally:
        server.stop()


def test_upload_to_s3_through_the_airflow_connection(tmp_path, s3_endpoint):
    source = write_image_folders(tmp_path / "source", classes=2, per_class=4, size=8)
    split(source, tmp_path / "pets")

    uris = upload(tmp_path / "pets", "s3://study-data/pets/v1")
    assert uris == {name: f"s3://study-data/pets/v1/{name}/" for name in ("training", "validation", "test")}
    keys = {item["Key"] for item in s3_endpoint.list_objects_v2(Bucket="study-data")["Contents"]}
    local = {f"pets/v1/{path.relative_to(tmp_path / 'pets').as_posix()}" for path in (tmp_path / "pets").glob("*/*/*")}
    assert keys == local and len(keys) == 8

    with pytest.raises(DatasetError, match="already holds objects"):
        upload(tmp_path / "pets", "s3://study-data/pets/v1/")
    (tmp_path / "pets" / "test" / "class_01").rename(tmp_path / "pets" / "test" / "class_99")
    with pytest.raises(DatasetError, match=r"classes differ from training"):
        upload(tmp_path / "pets", "s3://study-data/pets/v2")
