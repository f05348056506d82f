"""MFCC features of 16 kHz audio in plain torch, as torchaudio's ``MFCC`` computes them with the parameters the
NCDE / S4 Speech Commands pipelines use (``MFCC_PARAMS``): Hann-windowed STFT (n_fft 200, hop 100, centred, reflect
padding), power spectrum, 64 HTK mel triangles without area normalisation, log(x + 1e-6), orthonormal DCT-II to 20
coefficients. tests/tasks/test_speech_commands.py checks it against a float64 computation of the same definition."""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["MFCC_PARAMS", "SAMPLE_RATE", "dct_matrix", "hz_to_mel", "mel_filterbank", "mel_to_hz", "mfcc"]

SAMPLE_RATE = 16_000
MFCC_PARAMS: dict[str, Any] = dict(sample_rate=SAMPLE_RATE, n_mfcc=20, n_fft=200, hop_length=100, n_mels=64,
                                   f_min=0.0, f_max=SAMPLE_RATE / 2, window="hann (periodic)", center=True,
                                   pad_mode="reflect", power=2.0, mel_scale="htk", mel_norm=None, log_offset=1e-6,
                                   dct="DCT-II, orthonormal")


def hz_to_mel(freq: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq / 700.0)  # HTK


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int = MFCC_PARAMS["n_fft"] // 2 + 1, n_mels: int = MFCC_PARAMS["n_mels"],
                   sample_rate: int = SAMPLE_RATE, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """(n_freqs, n_mels) float64 HTK-mel triangles, peak 1, no area normalisation (torchaudio melscale_fbanks).

    Bin k sits at ``k * (sample_rate // 2) / (n_freqs - 1)`` Hz; the triangles' corners are ``n_mels + 2`` points
    equally spaced in mel between f_min and f_max. Some low filters fall between two bins and are all zero
    (with n_fft = 200 the bins are 80 Hz apart); torchaudio keeps them too, so their log is log(1e-6).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)                       # (F,)
    lo, hi = hz_to_mel(torch.tensor(f_min, dtype=torch.float64)), hz_to_mel(torch.tensor(f_max, dtype=torch.float64))
    corners = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))        # (M + 2,)
    rise = (freqs[:, None] - corners[None, :-2]) / (corners[1:-1] - corners[:-2])                    # (F, M)
    fall = (corners[None, 2:] - freqs[:, None]) / (corners[2:] - corners[1:-1])                      # (F, M)
    return torch.clamp(torch.minimum(rise, fall), min=0.0)


def dct_matrix(n_mfcc: int = MFCC_PARAMS["n_mfcc"], n_mels: int = MFCC_PARAMS["n_mels"]) -> torch.Tensor:
    """(n_mels, n_mfcc) float64 orthonormal DCT-II: column k is sqrt(2/N) cos(pi k (n + 1/2) / N), k = 0 over sqrt 2."""
    n = torch.arange(n_mels, dtype=torch.float64)[:, None]
    k = torch.arange(n_mfcc, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)                    # (N, K)
    basis[:, 0] /= math.sqrt(2.0)
    return basis


def mfcc(waves: torch.Tensor) -> torch.Tensor:
    """(B, T) float waveforms -> (B, T // 100 + 1, 20) MFCCs in the input's dtype (the parameters of MFCC_PARAMS)."""
    p = MFCC_PARAMS
    window = torch.hann_window(p["n_fft"], periodic=True, dtype=waves.dtype)
    spec = torch.stft(waves, n_fft=p["n_fft"], hop_length=p["hop_length"], window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)  # (B, F, frames)
    power = spec.abs() ** 2                                                                         # (B, F, frames)
    mel = power.transpose(1, 2) @ mel_filterbank().to(waves.dtype)                                  # (B, frames, 64)
    return torch.log(mel + p["log_offset"]) @ dct_matrix().to(waves.dtype)                          # (B, frames, 20)
