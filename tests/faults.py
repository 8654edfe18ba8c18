"""Fault injection for the reliability tests: an S3 proxy that fails on purpose, bad audio.

:class:`FaultProxy` is a small HTTP proxy on 127.0.0.1 in front of the moto S3 server.
Requests pass through unchanged unless a :class:`Rule` matches them; a matching rule
answers instead with an S3 error (503 SlowDown, 500 InternalError, 403 AccessDenied, 404
NoSuchKey) or runs a hook before forwarding. Every rule is bounded (``limit``) and the
proxy stops itself after ``lifetime_s``, so a test that forgets to stop it cannot hang.

:func:`bad_corpus` writes the catalog of broken and unusual audio files the jobs must
account for, with what each must come out as.
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soundfile as sf

from tests.audiogen import music_like, write_audio

__all__ = ["Rule", "FaultProxy", "bad_corpus", "write_long_wav", "NON_UTF8_NAME"]

_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "AccessDenied": "Access Denied",
    "NoSuchKey": "The specified key does not exist.",
    "ServiceUnavailable": "Service is unable to handle request.",
}


@dataclass
class Rule:
    """When and how the proxy fails a request.

    Parameters
    ----------
    status, code : int, str
        HTTP status and S3 error code of the injected answer (``status=0``: answer nothing,
        only run ``hook`` and forward).
    methods : tuple of str
        HTTP methods it applies to (empty: all).
    path : str
        Regular expression searched in the URL path (``/bucket/key``), unquoted.
    query : str
        Regular expression searched in the raw query string (``list-type=2`` for listings).
    skip : int
        Let this many matching requests through before failing any.
    every : int
        Fail every ``every``-th matching request after ``skip`` (1: all of them).
    limit : int
        Fail at most this many requests (None: unbounded, for permanent faults).
    hook : callable, optional
        ``hook(method, path)`` called once per matching request, before the request is
        answered or forwarded (e.g. delete an object once it has been listed).
    """

    status: int = 503
    code: str = "SlowDown"
    methods: tuple = ()
    path: str = ""
    query: str = ""
    skip: int = 0
    every: int = 1
    limit: int | None = 1
    hook: Callable[[str, str], None] | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, method: str, path: str, query: str) -> bool:
        return ((not self.methods or method in self.methods) and re.search(self.path, path) is not None
                and re.search(self.query, query) is not None)

    def fire(self) -> bool:
        """Count a matching request; True when this one is to be failed."""
        self.seen += 1
        n = self.seen - self.skip
        if self.status == 0 or n <= 0 or (n - 1) % max(1, self.every):
            return False
        if self.limit is not None and self.fired >= self.limit:
            return False
        self.fired += 1
        return True


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (the moto S3 server).

    Use as a context manager; ``url`` is the endpoint to give mgr. ``injected`` lists
    ``(method, path, status)`` of every failed request, ``requests`` counts all of them.
    """

    def __init__(self, upstream: str, rules: list[Rule] | None = None, *, lifetime_s: float = 300.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.rules = list(rules or [])
        self.injected: list[tuple[str, str, int]] = []
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                body = self._body()
                split = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(split.path)
                fail = proxy._decide(self.command, path, split.query)
                if fail is not None:
                    proxy._answer_error(self, fail, path)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                            self.send_header(k, v)
                    # a HEAD answer's length is the object's, not that of its (empty) body
                    length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    def _decide(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, path, query):
                    if rule.hook is not None:
                        rule.hook(method, path)
                    if rule.fire():
                        self.injected.append((method, path, rule.status))
                        return rule
        return None

    @staticmethod
    def _answer_error(handler, rule: Rule, path: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{rule.code}</Code><Message>{_MESSAGES.get(rule.code, rule.code)}</Message>"
            f"<Resource>{path}</Resource><RequestId>fault-{os.getpid()}-{time.monotonic_ns()}</RequestId></Error>"
        ).encode()
        handler.send_response(rule.status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", "0" if handler.command == "HEAD" else str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._timer.cancel()
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- bad audio

#: a file name that is not valid UTF-8 (Latin-1 "é" byte), as old catalogs have them
NON_UTF8_NAME = b"caf\xe9 ol\xe9.wav"


def _tone(seconds: float, sr: int, *, channels: int = 1, seed: int = 0) -> np.ndarray:
    y = music_like("chime", seconds, sr=sr, seed=seed)
    return y if channels == 1 else np.tile(y[:, None], (1, channels)) * np.linspace(1.0, 0.5, channels)


def write_long_wav(path: str, *, seconds: float, sr: int = 8000) -> str:
    """A long mono 16-bit wav written block by block (cheap: a quiet tone, little memory)."""
    block = sr * 60
    t = np.arange(block) / sr
    chunk = (0.2 * np.sin(2 * np.pi * 220.0 * t) * 32767).astype("<i2")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16", format="WAV") as f:
        left = int(seconds * sr)
        while left > 0:
            f.write(chunk[: min(block, left)])
            left -= block
    return path


def bad_corpus(root) -> dict[str, tuple[str, object]]:
    """Write broken and unusual audio under ``root``; return what each must give.

    Returns
    -------
    dict
        relative path → ``("error", fragment)`` (an ``error`` containing ``fragment``) or
        ``("ok", seconds)`` (features of a track of that duration).
    """
    root = str(root)
    os.makedirs(os.path.join(root, "odd"), exist_ok=True)
    want: dict[str, tuple[str, object]] = {}

    def put(rel: str, data: bytes, expect) -> None:
        with open(os.path.join(root, rel), "wb") as fh:
            fh.write(data)
        want[rel] = expect

    put("odd/empty.wav", b"", ("error", "empty file (0 bytes)"))
    put("odd/empty.mp3", b"", ("error", "empty file (0 bytes)"))
    text = b"This is a README, not music.\n" * 40
    for ext in ("mp3", "wav", "flac", "ogg"):
        put(f"odd/text.{ext}", text, ("error", "not a recognised audio format"))
    put("odd/noise.mp3", np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        ("error", "not decodable audio"))
    # truncated encodings: header (and a little more) only
    for ext, expect in (("mp3", ("error", "not a recognised audio format")), ("flac", ("error", "")),
                        ("ogg", ("error", ""))):
        full = write_audio(os.path.join(root, "odd", f"full.{ext}"), music_like("techno", 4.0, seed=2))
        data = open(full, "rb").read()
        os.remove(full)
        put(f"odd/truncated.{ext}", data[: 60 if ext != "mp3" else 600], expect)
    # a wav header claiming ~27 hours in front of 2 s of samples
    write_audio(os.path.join(root, "odd", "liar.wav"), _tone(2.0, 22050))
    raw = bytearray(open(os.path.join(root, "odd", "liar.wav"), "rb").read())
    struct.pack_into("<I", raw, 4, 0xFFFFFFF8)
    struct.pack_into("<I", raw, raw.find(b"data") + 4, 0xFFFFFFF0)
    put("odd/liar.wav", bytes(raw), ("ok", 2.0))
    # a header and no samples
    sf.write(os.path.join(root, "odd", "zero.wav"), np.zeros(0, np.float32), 22050)
    want["odd/zero.wav"] = ("error", "no audio samples")
    # float wavs with NaN / infinite samples
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        y = _tone(1.0, 22050)
        y[1000] = bad
        sf.write(os.path.join(root, "odd", name), y, 22050, subtype="FLOAT")
        want[f"odd/{name}"] = ("error", "NaN or infinite")
    # rates and channel layouts
    sf.write(os.path.join(root, "odd", "rate8k.wav"), _tone(2.0, 8000), 8000, subtype="PCM_16")
    sf.write(os.path.join(root, "odd", "rate96k.flac"), _tone(2.0, 96000), 96000, subtype="PCM_24")
    sf.write(os.path.join(root, "odd", "stereo.ogg"), _tone(2.0, 44100, channels=2), 44100)
    sf.write(os.path.join(root, "odd", "surround51.wav"), _tone(2.0, 48000, channels=6), 48000, subtype="PCM_16")
    sf.write(os.path.join(root, "odd", "tiny.wav"), _tone(0.01, 22050), 22050, subtype="PCM_16")
    for rel in ("rate8k.wav", "rate96k.flac", "stereo.ogg", "surround51.wav"):
        want[f"odd/{rel}"] = ("ok", 2.0)
    want["odd/tiny.wav"] = ("ok", 0.01)
    # names: not UTF-8, very long, with '..' and percent signs that must not escape OUTPUT
    weird = os.path.join(os.fsencode(root), b"names")
    os.makedirs(weird, exist_ok=True)
    sf.write(os.path.join(weird, NON_UTF8_NAME), _tone(1.5, 22050), 22050, subtype="PCM_16")
    want[os.fsdecode(os.path.join(b"names", NON_UTF8_NAME))] = ("ok", 1.5)
    long_name = "l" + "o" * 230 + "ng.flac"  # 238 bytes: near the 255-byte limit of a file name
    write_audio(os.path.join(root, "names", long_name), _tone(1.5, 22050))
    want[f"names/{long_name}"] = ("ok", 1.5)
    for name in ("..%2F..%2Fevil.wav", "..evil...wav", "%00nul.wav"):
        sf.write(os.path.join(root, "names", name), _tone(1.0, 22050), 22050, subtype="PCM_16")
        want[f"names/{name}"] = ("ok", 1.0)
    return want


def model_dir(path, *, genres=("drone", "techno", "chime"), seed: int = 0) -> str:
    """A small untrained paper-preset cnn model directory (labeling needs some model)."""
    import torch

    from mgr.config import PRESETS
    from mgr.audio.features import pad_value
    from mgr.models.modeldir import save_model_dir
    from mgr.models import build_model

    cfg = PRESETS["paper"]
    torch.manual_seed(seed)
    model = build_model("cnn", n_classes=len(genres), n_mels=cfg.n_mels)
    spec = {"name": "faults-cnn", "architecture": "cnn",
            "model_config": {"n_classes": len(genres), "n_mels": cfg.n_mels}, "feature_config": cfg.to_dict(),
            "genres": list(genres), "window_frames": cfg.clip_frames, "pad_value": pad_value(cfg),
            "normalization": None, "metrics": {}, "provenance": {"test": "faults"}}
    save_model_dir(str(path), model=model, spec=spec)
    return str(path)


def snapshot(root) -> set[str]:
    """Every file under ``root`` (bytes paths decoded with surrogateescape)."""
    out = set()
    for dirpath, _, files in os.walk(os.fsencode(str(root))):
        out.update(os.fsdecode(os.path.join(dirpath, f)) for f in files)
    return out
