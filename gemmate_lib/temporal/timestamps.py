"""Timestamps for GemmaTE (07_temporal_encoding, sections 1-2): ms, `datetime` or ISO-8601 to checked
milliseconds, refusing what cannot be a time with the fix, and the signed log-days around 2006-05-23."""
from __future__ import annotations

import bisect
import numbers
from datetime import datetime, timezone

import numpy as np
import torch

from gemmate_lib.config import REFERENCE_MS
from gemmate_lib.guard_rails.errors import DataError

DAY_MS = 86_400_000  # one day in ms: the unit inside the log
MIN_MS = -2_208_988_800_000  # 1900-01-01T00:00:00Z: earliest accepted timestamp
MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z: latest accepted timestamp
TIMESTAMP_UNITS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}  # each unit as a factor to milliseconds
PLAUSIBLE_MS = 1e11  # |ms| below this (1966-10..1973-03) is far more often seconds by mistake


def _one_to_ms(value, unit: str | None) -> tuple[float, bool]:
    """(milliseconds, came from a bare number) for one timestamp."""
    if value is None or isinstance(value, (bool, np.bool_)):
        raise DataError(f"timestamp {value!r} is not a time",
                        "give milliseconds since 1970-01-01 UTC, a datetime or an ISO-8601 string")
    if isinstance(value, datetime):  # a naive datetime is UTC, the convention of the whole course
        return value.replace(tzinfo=value.tzinfo or timezone.utc).timestamp() * 1000.0, False
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():  # "1633046400000": a number written as text
            return _one_to_ms(int(text), unit)
        try:
            return _one_to_ms(datetime.fromisoformat(text.replace("Z", "+00:00")), unit)
        except ValueError:
            raise DataError(f"timestamp {value!r} is not an ISO-8601 date", 'write it like "2014-03-05" or '
                            '"2014-03-05T12:00:00Z", or give milliseconds') from None
    if isinstance(value, numbers.Real):
        try:
            return float(value) * TIMESTAMP_UNITS[unit or "ms"], True
        except OverflowError:
            raise DataError(f"timestamp {str(value)[:30]}... is too large to be a time",
                            "give milliseconds since 1970-01-01 UTC (13 digits for today's dates)") from None
    kind = type(value).__name__
    if isinstance(value, (list, tuple, dict, set, np.ndarray, torch.Tensor)):
        raise DataError(f"a timestamp must be one value, got a {kind}: {str(value)[:60]}", "give one "
                        "timestamp per text (or a rectangular [batch, seq] array for per-token stamps)")
    raise DataError(f"timestamp {value!r} has type {kind}", "give int/float milliseconds, a datetime, "
                    "an ISO-8601 string, or a numpy/torch array of ms")


def _likely_unit(ms: float) -> str:
    size = abs(ms)
    if 1e8 <= size < PLAUSIBLE_MS:
        return "seconds"
    return ("nanoseconds" if size >= 1e17 else "microseconds") if size > MAX_MS else "an unknown unit"


def to_milliseconds(values, unit: str | None = None) -> torch.Tensor:
    """Timestamps (one, or a sequence / array / tensor of any shape) as checked float64 ms since the epoch.
    `unit` ("s", "ms", "us", "ns") says what bare numbers are; without it, |ms| < 1e11 is refused."""
    if unit is not None and unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp unit {unit!r} is not known", f"use one of: {', '.join(TIMESTAMP_UNITS)}")
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool:
            raise DataError("timestamps are booleans", "give milliseconds since 1970-01-01 UTC")
        if values.dtype in (torch.float16, torch.bfloat16):
            raise DataError(f"timestamps are a {values.dtype} tensor: 16-bit floats round dates by ~99 days "
                            "(bf16) or overflow (fp16)",
                            "pass them as int64 or float64 (torch.tensor(ms, dtype=torch.float64))")
        ms, numeric = values.detach().to("cpu", torch.float64) * TIMESTAMP_UNITS[unit or "ms"], True
    elif isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        ms, numeric = torch.from_numpy(values.astype(np.float64)) * TIMESTAMP_UNITS[unit or "ms"], True
    elif isinstance(values, (list, tuple, np.ndarray)):
        try:
            array = np.asarray(values, dtype=object)
        except ValueError:
            raise DataError("timestamps form a ragged nested list", "give one timestamp per text, or a "
                            "rectangular [batch, seq] list for per-token stamps") from None
        pairs = [_one_to_ms(v, unit) for v in array.ravel()]
        ms = torch.tensor([m for m, _ in pairs], dtype=torch.float64).reshape(array.shape)
        numeric = torch.tensor([n for _, n in pairs], dtype=torch.bool).reshape(array.shape)
    else:
        value, numeric = _one_to_ms(values, unit)
        ms = torch.tensor(value, dtype=torch.float64)
    if (bad := ~torch.isfinite(ms)).any():
        raise DataError(f"{int(bad.sum())} timestamp(s) are NaN or infinite",
                        "drop or fix those rows before encoding")
    if unit is None and (implausible := (ms.abs() < PLAUSIBLE_MS) & torch.as_tensor(numeric)).any():
        first = float(ms[implausible].flatten()[0])
        raise DataError(f"timestamp {first:.0f} looks like {_likely_unit(first)}, not milliseconds (as "
                        f"ms it would be {datetime.fromtimestamp(first / 1000, timezone.utc):%Y-%m-%d})",
                        'give milliseconds since 1970-01-01 UTC, or say the unit: unit="s" '
                        '(the JSONL field "timestamp_unit", or --timestamp_unit s)')
    if (out := (ms < MIN_MS) | (ms > MAX_MS)).any():
        first = float(ms[out].flatten()[0])
        raise DataError(f"timestamp {first:.0f} ms is outside 1900-01-01..2100-01-01"
                        + (f" (it looks like {_likely_unit(first)})" if unit is None else ""),
                        "timestamps are milliseconds since 1970-01-01 UTC within 1900-2100; for another unit "
                        'pass unit="s", "us" or "ns"')
    return ms


def signed_log_days(ms: torch.Tensor, reference_ms: int = REFERENCE_MS) -> torch.Tensor:
    """x = sign(t - ref) * log1p(|t - ref| / 1 day): negative before the reference, positive after."""
    rel = ms.to(torch.float64) - reference_ms
    return torch.sign(rel) * torch.log1p(rel.abs() / DAY_MS)


def date_ms(year: int, month: int = 1, day: int = 1) -> int:
    """Midnight UTC of a calendar day, in ms since the epoch (the unit of every GemmaTE timestamp)."""
    return int(datetime(year, month, day, tzinfo=timezone.utc).timestamp() * 1000)


def draw_minutes(rng, low: int, high: int, n: int, taken: set) -> list[int]:
    """n whole-minute timestamps, uniform in [low, high), none in `taken` (they join it): disjoint splits."""
    out: list[int] = []
    while len(out) < n:
        ms = rng.randrange(low, high) // 60_000 * 60_000
        if ms not in taken:
            taken.add(ms)
            out.append(ms)
    return out


def nearest(sorted_stamps: list[int], ms: float) -> int:
    """The timestamp in `sorted_stamps` closest to `ms` (ties: the earlier): 07's lookup baseline."""
    i = bisect.bisect_left(sorted_stamps, ms)
    return min(sorted_stamps[max(i - 1, 0):i + 1], key=lambda stamp: abs(stamp - ms))
