"""Tests for dnnlib: EasyDict, the cached open_url, and run-directory numbering."""

import http.server
import threading

import pytest

from dnnlib import EasyDict, make_run_dir, next_run_id, open_url
from dnnlib.util import url_cache_path


def test_easydict_attribute_access():
    d = EasyDict(a=1)
    d.b = 2
    assert d["b"] == 2 and d.a == 1
    del d.a
    assert "a" not in d
    with pytest.raises(AttributeError):
        _ = d.missing


def test_open_url_local_path(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    with open_url(str(p)) as f:
        assert f.read() == b"abc"
    assert open_url(f"file://{p}", return_filename=True) == str(p)
    with pytest.raises(FileNotFoundError, match="nope"):
        open_url(str(tmp_path / "nope"))


@pytest.fixture()
def http_server(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"weights-v1")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()


def test_open_url_downloads_once_then_uses_cache(http_server, tmp_path):
    base, root = http_server
    cache = tmp_path / "cache"
    url = f"{base}/weights.pt"
    with open_url(url, cache_dir=cache) as f:
        assert f.read() == b"weights-v1"
    # A changed file on the server is not fetched again: the cached copy is used.
    (root / "weights.pt").write_bytes(b"weights-v2")
    with open_url(url, cache_dir=cache) as f:
        assert f.read() == b"weights-v1"
    assert url_cache_path(url, cache).is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_open_url_offline_error_names_url_and_alternative(tmp_path):
    url = "http://127.0.0.1:9/inception.pt"  # port 9 (discard): connection refused
    with pytest.raises(RuntimeError) as info:
        open_url(url, cache_dir=tmp_path, timeout=2)
    message = str(info.value)
    assert url in message and "local path" in message and str(url_cache_path(url, tmp_path)) in message


def test_run_dirs_are_numbered(tmp_path):
    assert next_run_id(tmp_path / "missing") == 0
    a = make_run_dir(tmp_path, "imagenet100 gpus8")
    b = make_run_dir(tmp_path, "demo")
    (tmp_path / "notes").mkdir()
    assert a.name == "00000-imagenet100-gpus8" and b.name == "00001-demo"
    (tmp_path / "00041-old").mkdir()
    assert make_run_dir(tmp_path, "x").name == "00042-x"
