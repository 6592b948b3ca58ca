"""Timestamps as careless users send them (temporal.timestamps): one clear line each, or the same time."""
import json
from datetime import datetime

import pytest
import torch

from gemmate_lib.errors import DataError
from gemmate_lib.temporal.timestamps import to_milliseconds

MS_2021 = 1_633_046_400_000  # 2021-10-01T00:00:00Z


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


def test_a_seconds_timestamp_in_a_jsonl_names_the_line_and_a_unit_field_fixes_it(tmp_path):
    from gemmate_lib.temporal.data import load_jsonl

    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"text": "a", "timestamp": MS_2021}) + "\n"
                    + json.dumps({"text": "b", "timestamp": 1_633_046_400}) + "\n")
    with pytest.raises(DataError, match="notes.jsonl line 2: timestamp 1633046400 looks like seconds"):
        load_jsonl(path)
    path.write_text(json.dumps({"text": "b", "timestamp": 1_633_046_400, "timestamp_unit": "s"}) + "\n")
    assert load_jsonl(path)[1] == [float(MS_2021)]
    path.write_text(json.dumps({"text": "b", "timestamp": 1_633_046_400}) + "\n")
    assert load_jsonl(path, unit="s")[1] == [float(MS_2021)]  # --timestamp_unit s


def test_dated_text_works_with_datetimes_too():
    assert float(to_milliseconds(datetime(2021, 10, 1))) == MS_2021
