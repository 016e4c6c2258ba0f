"""Tests of mito_monai.datasets.download against a local HTTP server on 127.0.0.1 (no other address)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mito_monai.datasets import download_dataset, download_file, extract_archive, load_split, verify_file
from mito_monai.io import DataError
from mito_monai.datasets import DATASETS


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes), honouring ``Range: bytes=N-`` unless told not to."""

    def do_GET(self):  # noqa: N802 (http.server API)
        name = self.path.lstrip("/")
        self.server.requests.append((name, self.headers.get("Range")))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.server.honour_range:
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.honour_range = {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _payload(n=200_000, seed=0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_plain_download_with_checksum(server, tmp_path):
    data = _payload()
    server.files["blob.bin"] = data
    digest = hashlib.sha256(data).hexdigest()
    out = download_file(f"{server.base_url}/blob.bin", tmp_path / "blob.bin", sha256=digest, progress=False)
    assert out.read_bytes() == data
    assert not (tmp_path / "blob.bin.part").exists()
    assert verify_file(out, digest) == out
    # an existing complete file is kept without a new request
    n = len(server.requests)
    download_file(f"{server.base_url}/blob.bin", out, sha256=digest, progress=False)
    assert len(server.requests) == n


def test_resume_from_truncated_part(server, tmp_path):
    data = _payload(seed=1)
    server.files["blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(data[:12345])
    out = download_file(f"{server.base_url}/blob.bin", tmp_path / "blob.bin", progress=False)
    assert out.read_bytes() == data
    assert server.requests[-1] == ("blob.bin", "bytes=12345-")


def test_server_ignoring_range_restarts(server, tmp_path):
    data = _payload(seed=2)
    server.files["blob.bin"] = data
    server.honour_range = False
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 777)  # stale bytes must not survive
    out = download_file(f"{server.base_url}/blob.bin", tmp_path / "blob.bin", progress=False)
    assert out.read_bytes() == data


def test_complete_part_gets_416_and_is_kept(server, tmp_path):
    data = _payload(5000, seed=3)
    server.files["blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(data)
    out = download_file(
        f"{server.base_url}/blob.bin", tmp_path / "blob.bin", sha256=hashlib.sha256(data).hexdigest(), progress=False
    )
    assert out.read_bytes() == data


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    server.files["blob.bin"] = _payload(seed=4)
    with pytest.raises(DataError, match=r"corrupt and was deleted.*expected 0{64}"):
        download_file(f"{server.base_url}/blob.bin", tmp_path / "blob.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        (tmp_path / "f").write_bytes(b"abc")
        verify_file(tmp_path / "f", hashlib.sha256(b"abd").hexdigest())


def test_http_error_is_a_data_error(server, tmp_path):
    with pytest.raises(DataError, match=r"missing\.bin failed.*404"):
        download_file(f"{server.base_url}/missing.bin", tmp_path / "m.bin", progress=False)
    assert not (tmp_path / "m.bin").exists()
    with pytest.raises(ValueError, match="scheme"):
        download_file("ftp://127.0.0.1/x", tmp_path / "x", progress=False)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _lucchi_pp_zip(n=3, shape=(6, 7)) -> tuple[bytes, dict]:
    rng = np.random.default_rng(5)
    volumes = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("Train", "Test"):
            image = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
            label = (image > 128).astype(np.uint8)
            volumes[split.lower()] = (image, label)
            for z in range(n):
                zf.writestr(f"Lucchi++/{split}_In/mask{z:04d}.png", _png_bytes(image[z]))
                zf.writestr(f"Lucchi++/{split}_Out/{z}.png", _png_bytes(label[z] * np.uint8(255)))
        zf.writestr("__MACOSX/Lucchi++/._Train_In", b"junk")
    return buf.getvalue(), volumes


def test_download_dataset_unpacks_a_valid_layout(server, tmp_path):
    archive, volumes = _lucchi_pp_zip()
    server.files[DATASETS["lucchi_pp"].files[0].filename] = archive
    root = download_dataset("lucchi_pp", tmp_path / "lucchi_pp", base_url=server.base_url, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["Test_In", "Test_Out", "Train_In", "Train_Out"]
    for split, (image, label) in volumes.items():
        img, lab = load_split("lucchi_pp", root, split)
        np.testing.assert_array_equal(img, image)
        np.testing.assert_array_equal(lab, label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lucchi_pp"]  # no temporary folders left
    # a valid copy is reused without downloading again
    n = len(server.requests)
    assert download_dataset("lucchi_pp", root, base_url=server.base_url, progress=False) == root
    assert len(server.requests) == n


def test_download_dataset_rejects_invalid_content(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Lucchi++/readme.txt", "not the data")
    server.files["lucchi_pp.zip"] = buf.getvalue()
    with pytest.raises(DataError, match="do not form the lucchi_pp layout"):
        download_dataset("lucchi_pp", tmp_path / "lpp", base_url=server.base_url, progress=False)
    assert not (tmp_path / "lpp").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(DataError, match="not a valid lucchi_pp dataset.*overwrite=True"):
        download_dataset("lucchi_pp", foreign, base_url=server.base_url, progress=False)
    assert (foreign / "thesis.docx").read_text() == "precious"
    with pytest.raises(DataError, match="unknown dataset 'nope'.*lucchi, lucchi_pp, mitoem, vnc3"):
        download_dataset("nope", tmp_path / "x")


def test_extract_refuses_path_traversal(tmp_path):
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("ok/file.txt", "fine")
        zf.writestr("ok/../../escape.txt", "evil")
    with pytest.raises(DataError, match=r"escape\.txt.*outside"):
        extract_archive(bad_zip, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "ok").exists()

    abs_zip = tmp_path / "abs.zip"
    with zipfile.ZipFile(abs_zip, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/etc/evil.txt"), "evil")
    with pytest.raises(DataError, match="absolute path"):
        extract_archive(abs_zip, tmp_path / "out2")

    bad_tar = tmp_path / "bad.tar.gz"
    with tarfile.open(bad_tar, "w:gz") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link or special file"):
        extract_archive(bad_tar, tmp_path / "out3")
    assert not (tmp_path / "out3" / "link").exists()


def test_extract_tar_gz_with_strip(tmp_path):
    src = tmp_path / "top" / "a" / "b.txt"
    src.parent.mkdir(parents=True)
    src.write_text("hello")
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "top", arcname="top")
    out = extract_archive(archive, tmp_path / "auto", strip_components=None)
    assert (out / "a" / "b.txt").read_text() == "hello"
    out = extract_archive(archive, tmp_path / "keep", strip_components=0)
    assert (out / "top" / "a" / "b.txt").read_text() == "hello"


def test_registry_has_public_urls_and_no_invented_checksums():
    assert set(DATASETS) == {"vnc3", "lucchi", "lucchi_pp", "mitoem"}
    for source in DATASETS.values():
        names = [f.filename for f in source.files]
        assert len(names) == len(set(names))
        for f in source.files:
            assert f.url.startswith(("http://", "https://"))
            assert f.sha256 is None or (len(f.sha256) == 64 and int(f.sha256, 16) >= 0)
    assert "unidesigner/groundtruth-drosophila-vnc" in DATASETS["vnc3"].files[0].url
    assert {Path(f.filename).name for f in DATASETS["lucchi"].files} == {
        "training.tif",
        "training_groundtruth.tif",
        "testing.tif",
        "testing_groundtruth.tif",
    }
