"""CIFAR reader, download, array file and the generated archive; atomic file helpers."""
import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torchvision.datasets

from sortkd.data.cifar import (
    CIFAR100_FILE_MD5,
    ChecksumMismatch,
    CifarArrays,
    download_cifar100,
    extract_cifar_archive,
    load_arrays,
    read_cifar_python,
    save_arrays,
    verify_files,
)
from sortkd.data.synthetic import write_cifar_archive
from sortkd.files import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256

NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 7, 4, 2  # 7: the last class group is partial


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "cifar-100-python.tar.gz"
    return write_cifar_archive(out, NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, seed=3)


@pytest.fixture(scope="module")
def folder(archive, tmp_path_factory):
    return extract_cifar_archive(archive, tmp_path_factory.mktemp("root"))


# --- the generated archive, read back by the real reader --------------------------------------


def test_generated_archive_reads_back(folder):
    assert folder.name == "cifar-100-python"
    data = read_cifar_python(folder)
    assert data.train_x.shape == (NUM_CLASSES * TRAIN_PER_CLASS, 3, 32, 32)
    assert data.test_x.shape == (NUM_CLASSES * TEST_PER_CLASS, 3, 32, 32)
    assert data.train_x.dtype == np.uint8 and data.train_y.dtype == np.int64
    assert np.bincount(data.train_y).tolist() == [TRAIN_PER_CLASS] * NUM_CLASSES
    assert np.bincount(data.test_y).tolist() == [TEST_PER_CLASS] * NUM_CLASSES
    assert data.num_classes == NUM_CLASSES
    assert len(set(data.class_names)) == NUM_CLASSES
    assert all(isinstance(name, str) and name for name in data.class_names)
    # classes are interleaved like the real files, not sorted
    assert not np.array_equal(data.train_y, np.sort(data.train_y))
    # images have content: not constant, and differ between images
    assert data.train_x.std() > 20
    assert not np.array_equal(data.train_x[0], data.train_x[1])


def test_generated_files_have_the_real_cifar100_fields(folder):
    with open(folder / "train", "rb") as f:
        train = pickle.load(f, encoding="bytes")
    assert set(train) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert train[b"data"].dtype == np.uint8
    assert train[b"data"].shape == (NUM_CLASSES * TRAIN_PER_CLASS, 3072)
    assert train[b"batch_label"] == b"training batch 1 of 1"
    assert all(isinstance(name, bytes) for name in train[b"filenames"])
    assert all(isinstance(y, int) for y in train[b"fine_labels"])
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"}
    assert len(meta[b"fine_label_names"]) == NUM_CLASSES
    assert len(meta[b"coarse_label_names"]) == 2  # 7 classes in groups of 5
    assert max(train[b"coarse_labels"]) == 1


def test_torchvision_cifar100_parser_agrees(folder):
    # torchvision reads the files with encoding="latin1", as it reads the real ones.
    class GeneratedCIFAR100(torchvision.datasets.CIFAR100):
        train_list = [["train", _md5(folder / "train")]]
        test_list = [["test", _md5(folder / "test")]]
        meta = {"filename": "meta", "key": "fine_label_names", "md5": _md5(folder / "meta")}

    ours = read_cifar_python(folder)
    for train, x, y in ((True, ours.train_x, ours.train_y), (False, ours.test_x, ours.test_y)):
        theirs = GeneratedCIFAR100(str(folder.parent), train=train)
        assert np.array_equal(theirs.data, x.transpose(0, 2, 3, 1))  # theirs is HWC
        assert theirs.targets == y.tolist()
        assert theirs.classes == ours.class_names


def test_generator_is_deterministic(tmp_path, archive):
    again = write_cifar_archive(
        tmp_path / "again.tar.gz", NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, seed=3
    )
    assert again.read_bytes() == archive.read_bytes()
    other = write_cifar_archive(
        tmp_path / "other.tar.gz", NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, seed=4
    )
    assert other.read_bytes() != archive.read_bytes()


def test_generator_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="train_per_class must be an integer >= 1"):
        write_cifar_archive(tmp_path / "x.tar.gz", 5, 0, 1)
    assert not (tmp_path / "x.tar.gz").exists()


# --- pixel layout pinned with a hand-written archive ------------------------------------------


def _hand_written_archive(path, data, labels, names):
    """A cifar-100-python archive written by plain pickle and tarfile, without the generator."""
    split = {
        b"filenames": [b"img%d.png" % i for i in range(len(labels))],
        b"batch_label": b"hand written",
        b"fine_labels": list(labels),
        b"coarse_labels": [0] * len(labels),
        b"data": data,
    }
    meta = {b"fine_label_names": names, b"coarse_label_names": [b"all"]}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in (("train", split), ("test", split), ("meta", meta)):
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_pixel_lands_at_channel_row_col(tmp_path):
    # Row layout of the real format: 1024 red values, 1024 green, 1024 blue, each row-major.
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[0, 0 * 1024 + 5 * 32 + 7] = 11  # red, row 5, column 7
    data[0, 1 * 1024 + 20 * 32 + 3] = 22  # green, row 20, column 3
    data[1, 2 * 1024 + 31 * 32 + 31] = 33  # blue, row 31, column 31 of the second image
    tgz = _hand_written_archive(tmp_path / "hand.tar.gz", data, [1, 0], [b"cat", b"dog"])
    arrays = read_cifar_python(extract_cifar_archive(tgz, tmp_path / "root"))
    x = arrays.train_x
    assert x[0, 0, 5, 7] == 11 and x[0, 1, 20, 3] == 22 and x[1, 2, 31, 31] == 33
    assert int(x.astype(np.int64).sum()) == 11 + 22 + 33
    assert arrays.train_y.tolist() == [1, 0]
    assert arrays.class_names == ["cat", "dog"]


def test_malformed_files_are_rejected_clearly(tmp_path):
    data = np.zeros((2, 3072), dtype=np.uint8)
    tgz = _hand_written_archive(tmp_path / "a.tar.gz", data, [0, 1, 1], [b"a", b"b"])
    folder = extract_cifar_archive(tgz, tmp_path / "root")
    with pytest.raises(ValueError, match="3 fine labels for 2 images"):
        read_cifar_python(folder)
    # a pickle that would call an arbitrary function is refused, not executed
    (folder / "train").write_bytes(pickle.dumps({b"data": print}, protocol=2))
    with pytest.raises(ValueError, match="may not reference .*print"):
        read_cifar_python(folder)


def test_archive_without_cifar_folder_is_rejected(tmp_path):
    with tarfile.open(tmp_path / "wrong.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("something/else")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="no top-level folder cifar-100-python"):
        extract_cifar_archive(tmp_path / "wrong.tar.gz", tmp_path / "root")
    assert not (tmp_path / "root" / "cifar-100-python").exists()
    assert list((tmp_path / "root").iterdir()) == []  # the staging folder is gone


def test_extraction_replaces_an_existing_folder(tmp_path, archive):
    root = tmp_path / "root"
    (root / "cifar-100-python").mkdir(parents=True)
    (root / "cifar-100-python" / "stale").write_text("old")
    folder = extract_cifar_archive(archive, root)
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]


# --- checksums ---------------------------------------------------------------------------------


def test_md5_verification_fails_loudly_on_corruption(tmp_path, archive):
    folder = extract_cifar_archive(archive, tmp_path)
    md5s = {name: _md5(folder / name) for name in ("train", "test", "meta")}
    verify_files(folder, md5s)  # intact: passes
    blob = bytearray((folder / "train").read_bytes())
    blob[-100] ^= 0xFF
    (folder / "train").write_bytes(bytes(blob))
    with pytest.raises(ChecksumMismatch) as err:
        verify_files(folder, md5s)
    message = str(err.value)
    assert str(folder / "train") in message
    assert md5s["train"] in message and _md5(folder / "train") in message


def test_verify_md5_uses_the_real_cifar100_checksums(folder):
    with pytest.raises(ChecksumMismatch, match=CIFAR100_FILE_MD5["train"]):
        read_cifar_python(folder, verify_md5=True)


# --- download through torchvision's downloader, from a local HTTP server ------------------------


@pytest.fixture
def served_archive(archive):
    handler = functools.partial(
        _QuietHandler, directory=str(archive.parent)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_cifar100_from_url(tmp_path, archive, served_archive):
    folder = download_cifar100(tmp_path / "root", url=served_archive, md5=_md5(archive))
    assert folder == tmp_path / "root" / "cifar-100-python"
    assert (tmp_path / "root" / archive.name).read_bytes() == archive.read_bytes()
    data = read_cifar_python(folder)
    assert np.bincount(data.train_y).tolist() == [TRAIN_PER_CLASS] * NUM_CLASSES
    # per-file checksums are checked when given
    md5s = {name: _md5(folder / name) for name in ("train", "test", "meta")}
    download_cifar100(tmp_path / "again", url=served_archive, md5=_md5(archive), file_md5s=md5s)
    bad = dict(md5s, meta="f" * 32)
    with pytest.raises(ChecksumMismatch, match="f" * 32):
        download_cifar100(tmp_path / "bad", url=served_archive, md5=_md5(archive), file_md5s=bad)
    assert not (tmp_path / "bad" / "cifar-100-python").exists()  # unverified files never land


def test_download_rejects_wrong_archive_md5(tmp_path, archive, served_archive):
    wrong = "0" * 32
    with pytest.raises(ChecksumMismatch) as err:
        download_cifar100(tmp_path / "root", url=served_archive, md5=wrong)
    assert wrong in str(err.value) and _md5(archive) in str(err.value)
    assert not (tmp_path / "root" / "cifar-100-python").exists()


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_cifar_python(tmp_path / "nowhere" / "cifar-100-python")
    message = str(err.value)
    assert "does not exist" in message and "data.download: true" in message
    assert "cifar-100-python/{train,test,meta}" in message
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks test, meta"):
        read_cifar_python(tmp_path / "partial")


# --- the compact array file --------------------------------------------------------------------


def test_save_load_round_trip_and_stable_sha256(tmp_path, folder):
    data = read_cifar_python(folder)
    sha = save_arrays(data, tmp_path / "cifar.npz")
    assert sha == hashlib.sha256((tmp_path / "cifar.npz").read_bytes()).hexdigest()
    assert save_arrays(data, tmp_path / "again.npz") == sha
    loaded = load_arrays(tmp_path / "cifar.npz")
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(loaded, key), getattr(data, key))
        assert getattr(loaded, key).dtype == getattr(data, key).dtype
    assert loaded.class_names == data.class_names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_load_arrays_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sortkd prepare-data"):
        load_arrays(tmp_path / "cifar.npz")


def test_cifar_arrays_validates_shapes():
    x = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    y = np.array([0, 1], dtype=np.int64)
    assert CifarArrays(x, y, x, y, ["a", "b"]).num_classes == 2
    with pytest.raises(ValueError, match=r"train_x must be uint8 \[N, 3, 32, 32\]"):
        CifarArrays(x.astype(np.float32), y, x, y, ["a", "b"])
    with pytest.raises(ValueError, match="test_y holds labels in"):
        CifarArrays(x, y, x, y + 1, ["a", "b"])


# --- atomic writes -----------------------------------------------------------------------------


def test_atomic_writes_and_sha256(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"  # untouched by the failed write
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # temp removed
    payload = bytes(range(256)) * 5000  # > 1 MiB: several chunks
    atomic_write_bytes(target, payload)
    assert target.read_bytes() == payload
    assert file_sha256(target) == hashlib.sha256(payload).hexdigest()
