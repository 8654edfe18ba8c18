"""The one audio seam: bytes, file objects or paths in, float32 samples out.

Decoding uses soundfile (libsndfile: wav, flac, ogg/vorbis/opus, mp3, aiff, au) and
resampling soxr at librosa's default quality, so ``decode(path, sr=22050)`` equals
``librosa.load(path, sr=22050)``. Every failure raises :class:`~mgr.errors.AudioError`
with the reason, which the jobs write into the ``error`` column.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Union

import numpy as np

from mgr.config import FeatureConfig
from mgr.errors import AudioError
from mgr.io.location import Location, local_path

__all__ = ["AudioInfo", "DEFAULT_MAX_SECONDS", "decode", "load_audio", "probe"]

Source = Union[str, os.PathLike, bytes, BinaryIO]

#: Files longer than this (in seconds, as their header says) are refused unless asked.
DEFAULT_MAX_SECONDS = 3 * 3600.0

_NEEDS_FFMPEG = (".m4a", ".mp4", ".aac", ".wma")


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: native sample rate, channels and length."""

    samplerate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def _unreadable(message: str) -> AudioError:
    """The error of a file that could not be read (not a bad file): ``retryable`` is True."""
    err = AudioError(message)
    err.retryable = True
    return err


def _open(source: Source, name: str):
    import soundfile as sf

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise AudioError("empty file (0 bytes)")
        except OSError as exc:
            raise _unreadable(f"cannot read file: {exc.strerror or exc}") from None
        if os.name == "posix":
            # bytes reach libsndfile as they are: soundfile's own str encoding refuses the
            # surrogate-escaped names of files whose names are not valid UTF-8
            source = os.fsencode(source)
    lower = name.lower()
    try:
        return sf.SoundFile(source)
    except sf.LibsndfileError as exc:
        if lower.endswith(_NEEDS_FFMPEG):
            raise AudioError(
                f"{os.path.splitext(lower)[1]} (AAC/MP4) needs ffmpeg, which mgr does not use; "
                "convert the file to flac/ogg/mp3 first"
            ) from None
        raise AudioError(f"not decodable audio ({_reason(exc)})") from None
    except PermissionError as exc:
        raise _unreadable(f"cannot read file: permission denied ({exc})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise AudioError(f"not decodable audio ({exc})") from None


#: libsndfile's words for "these bytes are no format I know"; for an existing regular file
#: its "does not exist or is not a regular file" (mpg123 finding no frame) means the same
_UNRECOGNISED = ("Format not recognised", "does not exist or is not a regular file")


def _reason(exc: Exception) -> str:
    text = str(exc)
    # libsndfile messages start with the file name (or a repr of the file object): keep the why.
    why = text.split(": ", 1)[-1] if ": " in text else text
    if any(marker in why for marker in _UNRECOGNISED):
        return "not a recognised audio format, or damaged beyond its header"
    return why


def probe(source: Source, *, name: str = "") -> AudioInfo:
    """Read only the header of ``source``.

    Raises
    ------
    AudioError
        The file is empty or not in a format libsndfile decodes.
    """
    with _open(source, name or str(source)) as f:
        return AudioInfo(int(f.samplerate), int(f.channels), int(f.frames))


def decode(
    source: Source,
    *,
    sr: int | None = 22050,
    mono: bool = True,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    name: str = "",
) -> tuple[np.ndarray, int, float]:
    """Decode audio to float32 samples.

    Parameters
    ----------
    source : str, path, bytes or binary file object
        What to decode; a path is opened by libsndfile directly (seekable).
    sr : int or None
        Target sample rate (soxr, high quality); None keeps the native rate.
    mono : bool
        Average the channels (librosa's ``to_mono``).
    offset_s, duration_s : float
        Decode only this excerpt (seeks where the format allows).
    max_seconds : float or None
        Refuse files whose header claims more audio than this.
    name : str
        File name used in messages and for format hints.

    Returns
    -------
    y : np.ndarray
        ``[n_samples]`` when ``mono``, else ``[channels, n_samples]``; float32.
    sr : int
        Sample rate of ``y``.
    duration_s : float
        Duration of the whole file (not only the excerpt) in seconds.

    Raises
    ------
    AudioError
        Empty, undecodable, truncated to nothing, too long, or non-finite samples.
    """
    import soundfile as sf

    with _open(source, name or (str(source) if isinstance(source, (str, os.PathLike)) else "")) as f:
        native_sr, frames = int(f.samplerate), int(f.frames)
        if native_sr <= 0:
            raise AudioError("header has no valid sample rate")
        total_s = frames / native_sr if frames > 0 else 0.0
        if max_seconds is not None and total_s > max_seconds:
            raise AudioError(
                f"too long: header claims {_span(total_s)}, over the limit of "
                f"{_span(max_seconds)} (raise --max-seconds to accept it)"
            )
        start = int(round(offset_s * native_sr))
        count = -1 if duration_s is None else int(round(duration_s * native_sr))
        try:
            if start > 0:
                f.seek(min(start, max(frames, 0)))
            want = (frames - start) if count < 0 else count
            if mono and sr is not None and want > STREAM_ABOVE_FRAMES:
                y, n_read = _decode_stream(f, count, native_sr, sr)
            else:
                single = f.channels == 1 and mono
                data = f.read(frames=count, dtype="float32", always_2d=not single)
                n_read = data.shape[0]
                if single:
                    y = data  # already [n_samples], contiguous: no downmix copy
                else:
                    y = downmix(data) if mono else np.ascontiguousarray(data.T)
                # NaN/inf survive a sum (inf - inf is NaN): one cheap pass instead of isfinite()
                if n_read and not np.isfinite(np.sum(y, dtype=np.float64)):
                    raise AudioError("samples contain NaN or infinite values")
                if n_read and sr is not None and sr != native_sr:
                    y = _resample(y, native_sr, sr)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"decoding failed ({_reason(exc)})") from None
    if n_read == 0:
        raise AudioError("no audio samples (zero-length or truncated before the first frame)")
    if duration_s is None and offset_s == 0.0:
        total_s = n_read / native_sr  # the samples really decoded, not the header's claim
    return y, int(sr if sr is not None else native_sr), float(total_s)


#: above this many native frames (10 min at 44.1 kHz), mono decoding streams in blocks so
#: that memory holds the 22.05 kHz result, not the native multichannel float32 signal
STREAM_ABOVE_FRAMES = 10 * 60 * 44100
_BLOCK_FRAMES = 1 << 20


def _decode_stream(f, count: int, native_sr: int, sr: int) -> tuple[np.ndarray, int]:
    """Read ``count`` frames (-1: to the end) block by block: downmix, check, resample."""
    import soxr

    stream = soxr.ResampleStream(native_sr, sr, 1, dtype="float32", quality="HQ") if sr != native_sr else None
    parts, n_read = [], 0
    remaining = count
    while remaining != 0:
        n = _BLOCK_FRAMES if remaining < 0 else min(_BLOCK_FRAMES, remaining)
        block = f.read(frames=n, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        if not np.isfinite(block).all():
            raise AudioError("samples contain NaN or infinite values")
        n_read += block.shape[0]
        if remaining > 0:
            remaining -= block.shape[0]
        mono = downmix(block)
        parts.append(stream.resample_chunk(mono, last=False) if stream else mono)
        if block.shape[0] < n:
            break
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return y.astype(np.float32, copy=False), n_read


def downmix(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``[n_samples, channels]`` float32 audio: ``[n_samples]``.

    Equal to librosa's ``to_mono`` (the channel mean) but column by column: numpy's
    ``mean(axis=1)`` over a handful of columns is ~3x slower (a reduction per row).
    """
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    out = data[:, 0].copy()
    for c in range(1, data.shape[1]):
        out += data[:, c]
    out /= np.float32(data.shape[1])
    return out


def _resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    import soxr

    if y.ndim == 1:
        return soxr.resample(y, orig_sr, target_sr, quality="soxr_hq").astype(np.float32, copy=False)
    return np.ascontiguousarray(soxr.resample(y.T, orig_sr, target_sr, quality="soxr_hq").T, dtype=np.float32)


def load_audio(where: Location | str, *, cfg: FeatureConfig, max_seconds: float | None,
               endpoint_url: str | None = None) -> tuple[np.ndarray, float]:
    """Decode a file (local: read directly; remote: fetched whole) at ``cfg.sr`` mono.

    Parameters
    ----------
    where : Location or str
        The file (a str takes ``endpoint_url``).
    cfg : FeatureConfig
        Sample rate and channel settings.
    max_seconds : float, optional
        Decode at most this much audio.

    Returns
    -------
    (np.ndarray, float)
        ``y [n_samples]`` float32 and the file's duration in seconds; raises an MgrError
        subclass on failure.
    """
    loc = Location.of(where, endpoint_url=endpoint_url)
    source: Union[bytes, str] = loc.read_bytes() if loc.is_remote else local_path(loc.uri)
    y, _, duration = decode(source, sr=cfg.sr, mono=cfg.mono, max_seconds=max_seconds, name=loc.uri)
    return y, duration


def _span(seconds: float) -> str:
    """``2.5`` → ``"2.5 s"``, ``5400`` → ``"90.0 min"`` (a duration as a user reads it)."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
