"""Helpers for server tests and the serving benchmark: a real server on a loopback port (in this process or in a
subprocess), images as data URIs, and a scripted sampler.

`ScriptedSampler` is a test double, named for what it is: the model still runs every step, but the token the
engine picks is the next one of a fixed text (then end-of-turn). A random-weight model never writes a tool call or
`</think>`, so this is how tests reach those parsing paths through the real engine, server and client.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from qwen3vl.engine import engine as engine_module
from qwen3vl.engine.sampling import SampleOutput

LOOPBACK = "127.0.0.1"


def png_data_uri(seed: int = 0, width: int = 64, height: int = 48) -> str:
    """A small random-looking PNG (distinct per seed) as a data URI."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mp4_bytes(num_frames: int = 8, fps: float = 4.0, width: int = 64, height: int = 48) -> bytes:
    """A small H.264 video with a moving square."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(num_frames):
            frame = np.full((height, width, 3), 40, dtype=np.uint8)
            frame[8:24, 4 * i:4 * i + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(text: str, *uris: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


class ScriptedSampler:
    """Replaces `qwen3vl.engine.engine.sample` while in a `with` block. While `script` is a list of token ids,
    every sequence emits it (then `eos`); while it is None the real sampler runs."""

    def __init__(self, tokenizer, eos: int):
        self.tokenizer = tokenizer
        self.eos = eos
        self.script: list[int] | None = None
        self._real = None

    def say(self, text: str | None) -> None:
        self.script = None if text is None else self.tokenizer.encode(text)

    def __call__(self, logits, p, prompt_ids, output_ids, generator, banned=None, allowed=None) -> SampleOutput:
        """A script overrides any constraint (JSON mode then gives up, as when nothing allowed is left)."""
        if self.script is None:
            return self._real(logits, p, prompt_ids, output_ids, generator, banned, allowed)
        i = len(output_ids)
        token = self.script[i] if i < len(self.script) else self.eos
        return SampleOutput(token, 0.0 if p.logprobs is not None else None, [(token, 0.0)] if p.logprobs else None)

    def __enter__(self) -> "ScriptedSampler":
        self._real = engine_module.sample
        engine_module.sample = self
        return self

    def __exit__(self, *exc) -> None:
        engine_module.sample = self._real


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerThread:
    """`create_app(...)` served by uvicorn in a background thread on a loopback port bound up front (no race)."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        # proto=IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so, and without it
        # every keep-alive response waits ~40 ms for a delayed ACK
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="uvicorn")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


class ServerProcess:
    """`python -m qwen3vl.serve` in a subprocess (its memory measured apart from the clients')."""

    def __init__(self, model: str | Path, *args: str, log_path: str | Path | None = None, env: dict | None = None):
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "qwen3vl.serve", "--model", str(model), "--host", LOOPBACK,
                    "--port", str(self.port), *args]
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> "ServerProcess":
        import httpx

        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {' '.join(self.cmd)}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the server did not become healthy within 90 s")
            time.sleep(0.2)

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
