"""Timestamps as careless users send them (temporal.timestamps): one clear line each, or the same time."""
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from gemmate_lib.config import REFERENCE_MS, TemporalSettings
from gemmate_lib.guard_rails.errors import DataError
from gemmate_lib.temporal.model import TemporalEncoder
from gemmate_lib.temporal.timestamps import signed_log_days, to_milliseconds

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z
MS_2014 = 1_394_000_000_000  # 2014-03-05 06:13:20 UTC


@pytest.mark.parametrize("value, unit", [(1_633_046_400, "s"), (MS_2021, "ms"), (MS_2021 * 1000, "us"),
                                         (MS_2021 * 1_000_000, "ns"), ("1633046400000", None)])
def test_every_unit_and_digit_strings_give_the_same_time(value, unit):
    assert float(to_milliseconds(value, unit)) == MS_2021


@pytest.mark.parametrize("bad, message", [
    (1_633_046_400, "looks like seconds, not milliseconds (as ms it would be 1970-01-19)"),
    ([MS_2021, 1_633_046_400], "looks like seconds"),
    (torch.tensor([1_633_046_400]), "looks like seconds"),
    ([[MS_2021], MS_2021], "must be one value, got a list"),
    ([[MS_2021, MS_2021], [MS_2021]], "must be one value, got a list"),
    (10**400, "too large to be a time"),
    (torch.tensor([float(MS_2021)], dtype=torch.bfloat16), "16-bit floats round dates"),
    (torch.tensor([1.0], dtype=torch.float16), "16-bit floats"),
])
def test_timestamps_in_the_wrong_unit_or_shape_are_one_clear_error(bad, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        to_milliseconds(bad)
    assert err.value.fix and "\n" not in err.value.problem


def test_an_unknown_unit_is_refused():
    with pytest.raises(DataError, match="unit 'days' is not known"):
        to_milliseconds(1, unit="days")


def test_dated_text_works_with_datetimes_too():
    assert float(to_milliseconds(datetime(2021, 10, 1))) == MS_2021


def test_reference_is_2006_05_23_and_the_sign_follows_it():
    assert to_milliseconds("2006-05-23T00:00:00Z") == REFERENCE_MS
    ms = to_milliseconds([REFERENCE_MS - 86_400_000, REFERENCE_MS, REFERENCE_MS + 86_400_000, "1995-01-01",
                          "2024-06-01"])
    x = signed_log_days(ms)
    assert x[0] < 0 and x[1] == 0 and x[2] > 0 and x[3] < x[0] and x[4] > x[2]
    assert torch.allclose(x[[0, 2]].abs(), torch.tensor([np.log(2.0)] * 2, dtype=torch.float64))
    feats = TemporalEncoder(TemporalSettings())(ms)
    assert feats.shape == (5, 64) and torch.equal(torch.sign(feats[:, 1]), torch.tensor([-1.0, 0, 1, -1, 1]))


def test_every_accepted_form_gives_the_same_milliseconds():
    when = datetime(2014, 3, 5, 6, 13, 20, tzinfo=timezone.utc)
    forms = [MS_2014, float(MS_2014), np.int64(MS_2014), when, when.replace(tzinfo=None),
             "2014-03-05T06:13:20Z", "2014-03-05T07:13:20+01:00", torch.tensor(MS_2014)]
    assert all(float(to_milliseconds(f)) == MS_2014 for f in forms)
    assert to_milliseconds(np.array([MS_2014, REFERENCE_MS])).tolist() == [MS_2014, REFERENCE_MS]


@pytest.mark.parametrize("bad, message", [
    (float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (None, "is not a time"),
    (True, "is not a time"), ("next tuesday", "not an ISO-8601"),
    (1_394_000_000_000_000, "looks like microseconds"),
    (1e16, "outside 1900-01-01..2100-01-01"), ([MS_2014, float("nan")], "1 timestamp"),
    (torch.tensor([True]), "booleans"),
    ({"t": 1}, "must be one value, got a dict"), (object(), "has type object"),
])
def test_invalid_timestamps_raise_a_clear_error(bad, message):
    with pytest.raises(DataError, match=message) as info:
        to_milliseconds(bad)
    assert info.value.fix
