"""A gradio_client in a process of its own, driven one call at a time over stdin/stdout.

The per-tab section times API calls through this, so the client's own work (upload, SSE,
JSON, download) runs beside the server as a visitor's browser would, instead of in the
server's process on the same cores and GIL.

    python -m bench.api_client URL     # then one JSON line per call on stdin:
    {"api": "/skin_classify", "args": ["/path.png"], "files": [0]}   ->   @@{"ok": true}
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPLY = "@@"  # marks protocol lines; anything else a library prints is ignored


class RemoteClient:
    """Start `python -m bench.api_client url` and send it calls; `call` returns when the
    call has finished in the other process (raises RuntimeError with its error otherwise)."""

    def __init__(self, url: str) -> None:
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.api_client", url], cwd=root, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY):])
                if not reply.get("ok"):
                    raise RuntimeError(f"API client: {reply.get('error')}")
                return reply
        raise RuntimeError(f"API client exited with {self.proc.wait()}")

    def call(self, api: str, *args: Any, files: tuple[int, ...] = ()) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"api": api, "args": list(args), "files": list(files)}) + "\n")
        self.proc.stdin.flush()
        self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> int:
    from gradio_client import Client, handle_file

    client = Client(sys.argv[1], verbose=False, download_files=tempfile.mkdtemp(prefix="bench-dl-"))
    print(REPLY + json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        args = [handle_file(a) if i in req["files"] else a for i, a in enumerate(req["args"])]
        try:
            client.predict(*args, api_name=req["api"])
            print(REPLY + json.dumps({"ok": True}), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            print(REPLY + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
