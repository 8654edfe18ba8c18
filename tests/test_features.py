"""Unit tests: audio decoding and the paper's log-mel equal librosa's reference; windows."""


import numpy as np
import pytest

from mgr.audio.decode import decode, probe
from mgr.config import PRESETS, FeatureConfig, get_preset
from mgr.audio.dsp import mel_filters
from mgr.errors import AudioError, ConfigError
from mgr.audio.features import log_mel, pad_value
from mgr.inference.windows import cut_windows, fit_frames, spread_starts, window_starts
from tests.audiogen import music_like, write_audio

PAPER = PRESETS["paper"]


def librosa_reference(path):
    """The reference code's preprocessing, written with librosa."""
    import librosa

    y, sr = librosa.load(path, sr=22050, mono=True)
    s = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=1024, n_mels=128)
    s[s == 0] = 1e-6
    return np.log(s)


@pytest.mark.parametrize("ext,sr,channels", [("wav", 22050, 1), ("flac", 44100, 2), ("ogg", 16000, 1), ("mp3", 44100, 2)])
def test_log_mel_equals_librosa_reference(tmp_path, ext, sr, channels):
    y = music_like("techno", 4.0, sr=sr, seed=3)
    if channels == 2:
        y = np.stack([y, 0.5 * y[::-1]], axis=1)
    path = write_audio(str(tmp_path / f"x.{ext}"), y, sr=sr)
    ours, out_sr, duration = decode(path, sr=22050)
    mel = log_mel(ours, cfg=PAPER)
    ref = librosa_reference(path)
    assert out_sr == 22050
    assert mel.shape == ref.shape == (128, 1 + len(ours) // 1024)
    assert mel.dtype == np.float32
    np.testing.assert_allclose(mel, ref, atol=2e-4)
    assert duration == pytest.approx(len(ours) / 22050, abs=0.01)


def test_mel_filters_equal_librosa():
    import librosa

    for kw in ({"sr": 22050, "n_fft": 2048, "n_mels": 128}, {"sr": 16000, "n_fft": 1024, "n_mels": 40, "fmin": 50.0, "fmax": 7000.0}):
        np.testing.assert_allclose(mel_filters(**kw), librosa.filters.mel(**kw), atol=1e-7)


def test_paper_clip_is_647_frames_and_silence_is_floor():
    assert PAPER.clip_frames == 647
    assert PAPER.frames_for_samples(661794) == 647  # a GTZAN clip (30.013 s)
    mel = log_mel(np.zeros(22050, np.float32), cfg=PAPER)
    assert np.all(mel == np.float32(np.log(1e-6)))
    assert pad_value(PAPER) == pytest.approx(np.log(1e-6))


def test_config_validation_and_round_trip():
    with pytest.raises(ConfigError, match="hop_length"):
        FeatureConfig(hop_length=4096)
    with pytest.raises(ConfigError, match="unknown feature preset"):
        get_preset("nope")
    assert FeatureConfig.from_dict(PAPER.to_dict()) == PAPER
    with pytest.raises(ConfigError, match="unknown feature settings"):
        FeatureConfig.from_dict({**PAPER.to_dict(), "bogus": 1})


def test_decode_errors_say_why(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio at all " * 50)
    with pytest.raises(AudioError, match="empty file"):
        decode(str(empty))
    with pytest.raises(AudioError, match="not decodable"):
        decode(str(text))
    with pytest.raises(AudioError, match="empty file"):
        decode(b"")
    silent = write_audio(str(tmp_path / "zero.wav"), np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="no audio samples"):
        decode(silent)
    long = write_audio(str(tmp_path / "long.wav"), np.zeros(22050 * 5, np.float32))
    with pytest.raises(AudioError, match=r"too long: header claims 5.0 s, over the limit of 2.0 s"):
        decode(long, max_seconds=2.0)
    assert probe(long).duration_s == pytest.approx(5.0)


def test_decode_excerpt_seeks(tmp_path):
    y = music_like("chime", 6.0, sr=22050, seed=1)
    path = write_audio(str(tmp_path / "c.flac"), y)
    part, _, total = decode(path, offset_s=2.0, duration_s=1.0)
    whole, _, _ = decode(path)
    assert total == pytest.approx(6.0, abs=0.01)
    np.testing.assert_allclose(part, whole[44100:66150], atol=1e-6)


def test_windows_follow_the_design_rule():
    w, h = 647, 323
    assert window_starts(100, width=w, hop=h).tolist() == [0]
    assert window_starts(647, width=w, hop=h).tolist() == [0]
    assert window_starts(647 + h - 1, width=w, hop=h).tolist() == [0]  # a GTZAN-length clip: one window
    assert window_starts(647 + h, width=w, hop=h).tolist() == [0, h]
    starts = window_starts(5000, width=w, hop=h)
    assert starts[-1] + w <= 5000 < starts[-1] + h + w
    mel = np.arange(128 * 700, dtype=np.float32).reshape(128, 700)
    win = cut_windows(mel, np.array([0, 53]), width=w, pad=-1.0)
    assert win.shape == (2, 128, w) and np.array_equal(win[1], mel[:, 53:700])
    short = cut_windows(mel[:, :10], np.array([0]), width=w, pad=-1.0)
    assert short.shape == (1, 128, w) and np.all(short[0, :, 10:] == -1.0)
    assert fit_frames(mel, 20, pad=0).shape == (128, 20)
    assert spread_starts(np.arange(10), 3).tolist() == [0, 4, 9]
    assert spread_starts(np.arange(2), 3).tolist() == [0, 1]
