"""Exposure: no file outside Gradio's own folders is served, optional login, upload limits."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import serve_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plain_app() -> Iterator[str]:
    with serve_app({"MEDLAB_MAX_UPLOAD_MB": "2"}) as url:
        yield url.rstrip("/")


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        str(ROOT / "app.py"),
        str(ROOT / "medlab" / "config.py"),
        str(ROOT / ".git" / "config"),
    ],
)
def test_no_file_outside_gradio_folders_is_served(plain_app: str, path: str) -> None:
    for prefix in ("/gradio_api/file=", "/file="):
        resp = httpx.get(plain_app + prefix + path, timeout=10)
        assert resp.status_code in (403, 404), (prefix + path, resp.status_code)
        assert "root:" not in resp.text and "MEDLAB" not in resp.text


def test_data_dir_is_not_served(plain_app: str) -> None:
    data_dir = Path(os.environ["MEDLAB_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = data_dir / "secret.txt"
    secret.write_text("student upload")
    resp = httpx.get(f"{plain_app}/gradio_api/file={secret}", timeout=10)
    assert resp.status_code == 403


def test_upload_over_limit_is_refused_with_413(plain_app: str) -> None:
    # Far over the limit: refused by our guard from the declared size.
    body = b"\0" * (4 * 1024 * 1024)
    resp = httpx.post(f"{plain_app}/gradio_api/upload", files={"files": ("big.png", body, "image/png")}, timeout=30)
    assert resp.status_code == 413
    assert "upload limit is 2 MB" in resp.text
    # Just over the limit (within the multipart allowance): Gradio's own file-size check.
    body = b"\0" * int(2.3 * 1024 * 1024)
    resp = httpx.post(f"{plain_app}/gradio_api/upload", files={"files": ("big.png", body, "image/png")}, timeout=30)
    assert resp.status_code == 413
    assert "maximum" in resp.text.lower()
    # Under the limit: accepted.
    resp = httpx.post(f"{plain_app}/gradio_api/upload", files={"files": ("ok.png", b"\0" * 1000, "image/png")}, timeout=30)
    assert resp.status_code == 200


def test_one_gigabyte_upload_is_cut_off_at_the_limit(plain_app: str) -> None:
    """The server stops reading at the limit: a 1 GB stream is refused after ~2 MB."""
    sent = 0  # counts what the server pulled from the stream
    chunk = b"\0" * (256 * 1024)
    boundary = "medlabboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield head
        while sent < 1024**3:
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    started = time.perf_counter()
    status = None
    try:
        resp = httpx.post(
            f"{plain_app}/gradio_api/upload",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )
        status = resp.status_code
    except httpx.HTTPError:
        status = "connection closed by server"
    assert status in (413, "connection closed by server")
    assert sent < 200 * 1024**2, f"server kept reading: {sent / 2**20:.0f} MB"
    assert time.perf_counter() - started < 30


def test_login_required_when_medlab_auth_is_set() -> None:
    from gradio_client import Client

    with serve_app({"MEDLAB_AUTH": "teacher:s3cret"}) as url:
        url = url.rstrip("/")
        resp = httpx.post(f"{url}/gradio_api/call/model_status", json={"data": []}, timeout=10)
        assert resp.status_code in (401, 403)
        from gradio_client.exceptions import AuthenticationError

        with pytest.raises(AuthenticationError):
            Client(url + "/", verbose=False)
        client = Client(url + "/", auth=("teacher", "s3cret"), verbose=False)
        assert "models" in client.predict(api_name="/model_status")
