"""The two per-batch steps of ``mgr label`` (no Ray here; :mod:`mgr.pipelines.label` runs them).

1. :func:`featurize` (CPU tasks): read + decode + float32 log-mel of each file, in the
   task that reads it; the waveform never leaves the task, only the mel does.
2. :class:`Predictor` (actor pool): the model loaded once per actor; cuts each track into
   windows, runs them through the model in batches and aggregates the track's result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mgr.config import FeatureConfig
from mgr.errors import MgrError, StorageError
from mgr.inference.calibration import apply_temperature
from mgr.io.location import Location
from mgr.audio.features import log_mel
from mgr.inference.windows import cut_windows, spread_starts, window_starts
from mgr.inference.predict import window_distributions
from mgr.datasets.labelset import RETRYABLE_PREFIX, error_result, segment_times, to_table, track_result

__all__ = ["MEL_SCHEMA", "RETRY_COLUMN", "featurize", "Predictor", "check_model"]

#: the work's flag of a row labeled again by ``--retry-errors`` (rides along to the writer)
RETRY_COLUMN = "retry"

#: what a featurize task hands to the predictor: raw float32 log-mel, band-major bytes
MEL_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("track_id", pa.string()),
        ("duration_s", pa.float64()),
        ("decoded_s", pa.float64()),
        ("n_frames", pa.int32()),
        ("starts", pa.list_(pa.int64())),
        ("mel", pa.large_binary()),
        ("error", pa.string()),
    ]
)

#: with ``--max-windows``, decode the whole file anyway when the excerpts cover this much
WHOLE_FILE_SHARE = 0.6


def featurize(batch: pa.Table, *, feature_config: dict, max_seconds: float | None,
              width: int = 0, hop: int = 0, max_windows: int | None = None,
              endpoint_url: str | None = None) -> pa.Table:
    """Decode and analyse the files of ``batch`` (columns ``uri``, ``track_id``).

    Parameters
    ----------
    width, hop : int
        Window length W and hop H in frames (used with ``max_windows``).
    max_windows : int, optional
        Analyse at most this many windows per track, spread evenly; only their excerpts
        are decoded (libsndfile seeks in wav/flac/ogg/mp3).

    Returns
    -------
    pa.Table
        :data:`MEL_SCHEMA` rows. ``mel`` is float32 bytes: the whole track
        ``[n_mels, n_frames]`` when ``starts`` is null, else the selected windows side by
        side ``[n_mels, len(starts) * W]``; null with ``error`` saying why the file could
        not be used.
    """
    cfg = FeatureConfig.from_dict(feature_config)
    rows = []
    for uri, track_id in zip(batch.column("uri").to_pylist(), batch.column("track_id").to_pylist()):
        row: dict[str, Any] = {"uri": uri, "track_id": track_id, "duration_s": None, "decoded_s": None,
                               "n_frames": None, "starts": None, "mel": None, "error": None}
        try:
            if max_windows:
                row.update(_excerpts(uri, cfg=cfg, width=width, hop=hop, max_windows=max_windows,
                                     max_seconds=max_seconds, endpoint_url=endpoint_url))
            else:
                row.update(_whole(uri, cfg=cfg, max_seconds=max_seconds, endpoint_url=endpoint_url))
        except (StorageError, OSError) as exc:  # S3/network/file-system: may pass on a retry
            row["error"] = RETRYABLE_PREFIX + str(exc)
        except MgrError as exc:  # a file that could not be read (not a bad one) may pass on a retry
            row["error"] = (RETRYABLE_PREFIX if getattr(exc, "retryable", False) else "") + str(exc)
        except MemoryError:
            row["error"] = "out of memory while decoding (lower --max-seconds or give workers more memory)"
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the job
            row["error"] = f"unexpected {type(exc).__name__}: {exc}"
        rows.append(row)
    out = pa.Table.from_pylist(rows, schema=MEL_SCHEMA)
    for name in batch.column_names:  # manifest columns (and the retry flag) ride along
        if name not in MEL_SCHEMA.names:
            col = batch.column(name)
            out = out.append_column(name, col if name == RETRY_COLUMN else col.cast(pa.string()))
    return out


def _mel_bytes(mel: np.ndarray) -> bytes:
    return np.ascontiguousarray(mel, dtype="<f4").tobytes()


def _whole(uri: str, *, cfg: FeatureConfig, max_seconds: float | None, endpoint_url: str | None) -> dict:
    from mgr.audio.decode import load_audio

    y, duration = load_audio(uri, cfg=cfg, max_seconds=max_seconds, endpoint_url=endpoint_url)
    mel = log_mel(y, cfg=cfg)
    return {"duration_s": duration, "decoded_s": duration, "n_frames": int(mel.shape[1]), "mel": _mel_bytes(mel)}


def _opener(uri: str, endpoint_url: str | None):
    """A callable giving a fresh seekable source for ``uri`` (path, or remote file object)."""
    from mgr.io.location import local_path

    loc = Location(uri, endpoint_url=endpoint_url)
    if not loc.is_remote:
        path = local_path(uri)  # percent-encoded non-UTF-8 names mapped back
        return lambda: path
    fs, path = loc.fs, loc.path
    return lambda: fs.open(path, "rb")


def _excerpts(uri: str, *, cfg: FeatureConfig, width: int, hop: int, max_windows: int,
              max_seconds: float | None, endpoint_url: str | None) -> dict:
    """Decode only the excerpts of the ``max_windows`` windows spread over the track.

    Each excerpt is decoded with a margin of at least ``n_fft / 2`` samples, so that its
    frames equal the whole track's (up to the resampler's edge effects).
    """
    from mgr.audio.decode import decode, probe
    from mgr.errors import AudioError
    from mgr.audio.features import pad_value
    from mgr.inference.windows import fit_frames, spread_starts

    source = _opener(uri, endpoint_url)
    info = probe(source(), name=uri)
    duration = info.duration_s
    if max_seconds is not None and duration > max_seconds:
        raise AudioError(f"too long: header claims {duration / 60:.1f} min, over the limit of "
                         f"{max_seconds / 60:.0f} min (raise --max-seconds to accept it)")
    n_frames = cfg.frames_for_samples(int(round(duration * cfg.sr)))
    starts = spread_starts(window_starts(n_frames, width=width, hop=hop), max_windows)
    if len(starts) * width >= WHOLE_FILE_SHARE * n_frames:
        return _whole(uri, cfg=cfg, max_seconds=max_seconds, endpoint_url=endpoint_url)
    margin = -(-(cfg.n_fft // 2) // cfg.hop_length) * cfg.hop_length  # samples, a whole number of hops
    pad = pad_value(cfg)
    wins, decoded = [], 0.0
    for s in starts:
        first = max(0, int(s) * cfg.hop_length - margin)
        stop = (int(s) + width - 1) * cfg.hop_length + margin + 1
        y, _, _ = decode(source(), sr=cfg.sr, mono=cfg.mono, offset_s=first / cfg.sr,
                         duration_s=(stop - first) / cfg.sr, max_seconds=max_seconds, name=uri)
        decoded += len(y) / cfg.sr
        mel = log_mel(y, cfg=cfg)
        off = (int(s) * cfg.hop_length - first) // cfg.hop_length
        wins.append(fit_frames(mel[:, off: off + width], width, pad=pad))
    return {"duration_s": duration, "decoded_s": min(decoded, duration), "n_frames": n_frames,
            "starts": [int(s) for s in starts], "mel": _mel_bytes(np.concatenate(wins, axis=1))}


def check_model(loaded) -> None:
    """Refuse a model whose feature preset is unknown or inconsistent with its input.

    Raises
    ------
    ModelError
        With a one-line reason.
    """
    import torch

    from mgr.config import PRESETS
    from mgr.errors import ModelError

    cfg = loaded.feature_config
    name = loaded.spec.get("name", "?")
    if cfg.preset not in PRESETS:
        raise ModelError(f"model {name!r} was trained on feature preset {cfg.preset!r}, which this mgr does "
                         f"not know (known: {sorted(PRESETS)}); its features cannot be reproduced")
    ref = PRESETS[cfg.preset].to_dict()
    diff = sorted(k for k, v in cfg.to_dict().items() if k != "clip_frames" and ref.get(k) != v)
    if diff:
        got = ", ".join(f"{k}={cfg.to_dict()[k]} (preset: {ref[k]})" for k in diff)
        raise ModelError(f"model {name!r}: model.json feature_config claims preset {cfg.preset!r} but differs "
                         f"from it in {got}; the model directory is inconsistent")
    n_mels = int(loaded.spec["model_config"].get("n_mels", 128))
    if n_mels != cfg.n_mels:
        raise ModelError(f"model {name!r} takes {n_mels} mel bands but its feature preset {cfg.preset!r} "
                         f"makes {cfg.n_mels}; the model directory is inconsistent")
    if loaded.window_frames < 1:
        raise ModelError(f"model {name!r}: window_frames must be positive, got {loaded.window_frames}")
    x = torch.zeros(1, cfg.n_mels, loaded.window_frames, device=next(loaded.model.parameters()).device)
    try:
        with torch.inference_mode():
            y = loaded.model(x)
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be used
        raise ModelError(f"model {name!r} fails on a [{cfg.n_mels}, {loaded.window_frames}] window: {exc}") from None
    if tuple(y.shape) != (1, len(loaded.genres)):
        raise ModelError(f"model {name!r} returns {tuple(y.shape)[1:]} scores for {len(loaded.genres)} genres")


class Predictor:
    """Callable for ``map_batches``: mel rows in, labels rows out (one model per actor).

    Parameters
    ----------
    model_dir : str
        Model directory (local or ``s3://``).
    schema : pa.Schema
        Labels schema (:func:`mgr.datasets.labelset.labels_schema`).
    width, hop : int
        Window length W and hop H in frames.
    top_k, batch_size : int
        Genres kept in ``top_genres``; windows per forward pass.
    device : str
        ``cpu`` or ``cuda``.
    per_step : bool
        Write crnn per-step distributions into ``steps``.
    max_windows : int, optional
        At most this many windows per track, spread evenly.
    min_confidence : float
        Below this top probability the track's genre is ``"unknown"``.
    """

    def __init__(self, *, model_dir: str, schema: pa.Schema, width: int, hop: int, top_k: int,
                 batch_size: int, device: str = "cpu", per_step: bool = False, torch_threads: int = 1,
                 max_windows: int | None = None, min_confidence: float = 0.0,
                 endpoint_url: str | None = None) -> None:
        import torch

        from mgr.models.modeldir import load_model_dir

        if device == "cpu":
            torch.set_num_threads(max(1, int(torch_threads)))
        self.loaded = load_model_dir(model_dir, device=device, endpoint_url=endpoint_url)
        self.schema, self.width, self.hop = schema, int(width), int(hop)
        self.top_k, self.batch_size, self.device, self.per_step = int(top_k), int(batch_size), device, per_step
        self.max_windows, self.min_confidence = max_windows, float(min_confidence)
        cfg = self.loaded.feature_config
        self.n_mels, self.frame_s = cfg.n_mels, cfg.hop_length / cfg.sr

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        chunks, plan = [], []
        for row in rows:
            if row["error"] is not None or row["mel"] is None:
                plan.append(None)
                continue
            mel = np.frombuffer(row["mel"], dtype="<f4").reshape(self.n_mels, -1)
            if row["starts"] is not None:  # excerpts: the selected windows side by side
                starts = np.asarray(row["starts"], dtype=np.int64)
                chunks.append(mel.reshape(self.n_mels, len(starts), self.width).transpose(1, 0, 2))
            else:
                starts = spread_starts(window_starts(row["n_frames"], width=self.width, hop=self.hop),
                                       self.max_windows)
                chunks.append(cut_windows(mel, starts, width=self.width, pad=self.loaded.pad_value))
            plan.append(starts)
        windows = np.concatenate(chunks) if chunks else np.zeros((0, self.n_mels, self.width), np.float32)
        probs, steps = window_distributions(self.loaded.model, windows, mean=self.loaded.mean, std=self.loaded.std,
                                            batch_size=self.batch_size, device=self.device,
                                            per_step=self.per_step, amp=False)
        out, at = [], 0
        for row, starts in zip(rows, plan):
            rec = {"uri": row["uri"], "track_id": row["track_id"], "duration_s": row["duration_s"],
                   "decoded_s": row["decoded_s"], "model_id": self.loaded.model_id, "error": row["error"]}
            rec.update({k: v for k, v in row.items() if k not in MEL_SCHEMA.names})
            if starts is None:
                rec.update(error_result())
                rec["error"] = rec["error"] or "no features"
            else:
                n = len(starts)
                times = segment_times(starts, width=self.width, n_frames=row["n_frames"], frame_s=self.frame_s,
                                      duration_s=row["duration_s"])
                wp = probs[at: at + n]
                track = apply_temperature(wp.mean(axis=0, dtype=np.float64), self.loaded.temperature)
                rec.update(track_result(wp, times=times, genres=self.loaded.genres, top_k=self.top_k,
                                        steps=None if steps is None else steps[at: at + n],
                                        min_confidence=self.min_confidence, track_probs=track))
                at += n
            out.append(rec)
        table = to_table(out, self.schema)
        if RETRY_COLUMN in batch.column_names:
            table = table.append_column(RETRY_COLUMN, batch.column(RETRY_COLUMN))
        return table
