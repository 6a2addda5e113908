"""Property tests (issue 10, item 9): the job spec model and the list cursor codec take any input and
either accept it, with every result well-defined, or refuse it with the one error they document.
Deterministic (derandomized, no example database), so a failure here fails every run."""

from __future__ import annotations

import base64
import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.cursors import decode, encode
from service.cost import estimate
from service.errors import InvalidInput
from service.schemas import SEED_MAX, CNNSpec, FCSpec, job_spec_adapter

PROPERTY = settings(
    max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- the job spec --------------------------------------------------------------------------------

FIELDS = (
    "architecture", "n_hidden", "n_features", "epochs", "batch_size", "test_batch_size", "lr", "momentum",
    "seed", "permutation_seed", "dataset", "max_attempts",
)  # fmt: skip
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=70_000),  # around the bounds
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 3.0, 0.5, 0.999, 10.0, 10.5, -0.0, 1e-300]),
    st.text(max_size=8),
    st.sampled_from(["fc", "cnn", "mnist", "fashion-mnist", "10", "1_0", "transformer", ""]),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
specs = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=len(FIELDS)),
    st.dictionaries(st.sampled_from(FIELDS), json_scalars, max_size=len(FIELDS)),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_scalars, max_size=5),
    st.fixed_dictionaries(  # mostly valid: in-bounds integers and numbers, some fields missing
        {"architecture": st.sampled_from(["fc", "cnn"])},
        optional={
            "n_hidden": st.integers(1, 4096),
            "n_features": st.integers(1, 256),
            "epochs": st.integers(0, 101),
            "batch_size": st.integers(1, 60_000),
            "test_batch_size": st.integers(1, 10_000),
            "lr": st.floats(0, 10, exclude_min=True),
            "momentum": st.floats(0, 1, exclude_max=True),
            "seed": st.integers(0, SEED_MAX),
            "permutation_seed": st.none() | st.integers(0, SEED_MAX),
            "dataset": st.sampled_from(["mnist", "fashion-mnist"]),
        },
    ),
)


def assert_well_defined(spec: FCSpec | CNNSpec) -> None:
    assert 1 <= spec.epochs <= 100 and 1 <= spec.batch_size <= 60_000 and 1 <= spec.test_batch_size <= 10_000
    assert 0 < spec.lr <= 10 and 0 <= spec.momentum < 1 and math.isfinite(spec.lr) and math.isfinite(spec.momentum)
    for value in (spec.epochs, spec.batch_size, spec.test_batch_size):
        assert type(value) is int
    assert spec.seed is None or 0 <= spec.seed <= SEED_MAX
    assert spec.permutation_seed is None or 0 <= spec.permutation_seed <= SEED_MAX
    if isinstance(spec, FCSpec):
        assert type(spec.n_hidden) is int and 1 <= spec.n_hidden <= 4096
    else:
        assert type(spec.n_features) is int and 1 <= spec.n_features <= 256
    assert len(spec.pack_key) == 64
    assert spec.param_count > 0
    cost = estimate(spec)
    assert cost.param_count == spec.param_count and cost.steps >= 1
    assert math.isfinite(cost.flops) and cost.flops > 0 and cost.peak_memory_bytes > 0


@PROPERTY
@given(specs)
@example({"architecture": "fc", "epochs": True})
@example({"architecture": "fc", "epochs": "1_0"})
@example({"architecture": "fc", "epochs": 3.0})
@example({"architecture": "fc", "lr": float("nan")})
@example({"architecture": "cnn", "n_features": 256, "batch_size": 60_000})
@example({"architecture": "fc", "n_hidden": 4096, "epochs": 100, "batch_size": 1})
@example({"architecture": ["fc"]})
@example({"architecture": {"fc": 1}})
@example({})
def test_any_spec_validates_in_bounds_or_is_a_validation_error(raw):
    """From Python values (as the routes' tests build them) and from JSON text (as the API reads it)."""
    for parse in (job_spec_adapter.validate_python, lambda value: job_spec_adapter.validate_json(json.dumps(value))):
        try:
            spec = parse(raw)
        except ValidationError:
            continue
        assert_well_defined(spec)


def test_the_spec_properties_hold_at_the_bounds():
    for raw in (
        {"architecture": "fc", "n_hidden": 4096, "epochs": 100, "batch_size": 1, "test_batch_size": 10_000},
        {"architecture": "cnn", "n_features": 256, "epochs": 100, "batch_size": 60_000, "test_batch_size": 10_000},
        {"architecture": "fc", "n_hidden": 1, "lr": 5e-324, "momentum": 0.9999999999999999, "seed": SEED_MAX},
    ):
        assert_well_defined(job_spec_adapter.validate_python(raw))


# -- the list cursor -----------------------------------------------------------------------------


def encode_cursor(created_at, job_id):
    return encode(created_at, job_id)


def decode_cursor(cursor):
    after = decode(cursor)
    assert after.test_accuracy is None
    return after.created_at, after.id


@PROPERTY
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.uuids(),
    st.floats(0, 1),
)
def test_an_accuracy_cursor_round_trips(created_at, job_id, accuracy):
    created_at = created_at.replace(tzinfo=UTC)
    after = decode(encode(created_at, str(job_id), accuracy), with_accuracy=True)
    assert (after.created_at, after.id, after.test_accuracy) == (created_at, str(job_id), accuracy)


utc_datetimes = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
    lambda value: value.replace(tzinfo=UTC)
)


@PROPERTY
@given(utc_datetimes, st.uuids())
def test_a_cursor_round_trips(created_at, job_id):
    assert decode_cursor(encode_cursor(created_at, str(job_id))) == (created_at, str(job_id))


@PROPERTY
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5))]),
    ),
    st.uuids(),
)
def test_a_cursor_of_any_time_zone_decodes_to_the_same_instant_in_utc(created_at, job_id):
    decoded, _ = decode_cursor(encode_cursor(created_at, str(job_id)))
    assert decoded == created_at and decoded.tzinfo is UTC


def b64(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return base64.urlsafe_b64encode(text.encode()).decode()


GOOD_ID = "45eb52f4-6c43-4ce7-90f7-09efa7adef18"  # fixed: parametrize ids must be the same in every xdist worker
HOSTILE_CURSORS = [
    b64(["2024-01-01T00:00:00", GOOD_ID]),  # a naive datetime (was a 500)
    b64(["0001-01-01T00:00:00+01:00", GOOD_ID]),  # before year 1 in UTC (was a 500)
    b64(["9999-12-31T23:59:59-01:00", GOOD_ID]),  # after year 9999 in UTC (was a 500)
    b64("[" * 2000),  # a nesting bomb (was a 500)
    b64("[" * 2000 + "]" * 2000),
    b64(["2024-01-01T00:00:00+00:00", 5]),  # an id that is not a string
    b64(["2024-01-01T00:00:00+00:00", ["x"]]),
    b64([1, GOOD_ID]),
    b64(["2024-01-01T00:00:00+00:00", GOOD_ID, "extra"]),
    b64({"a": 1, "b": 2}),  # unpacks into two keys
    b64("ab"),
    b64(["2024-01-01T00:00:00+00:00", "not-a-uuid"]),
    b64([None, None]),
    "",
    "=",
    "%%%",
    "not base64 at all",
    "\udcff",  # a lone surrogate
    "é" * 10,
    "A" * 10_000,
]


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS)
def test_a_hostile_cursor_is_invalid_input(cursor):
    with pytest.raises(InvalidInput):
        decode_cursor(cursor)


@PROPERTY
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="),
        st.binary().map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
        json_values.map(b64),
        st.tuples(st.text(max_size=40), st.text(max_size=40)).map(lambda pair: b64(list(pair))),
        st.tuples(st.datetimes(timezones=st.none() | st.timezones()), st.uuids()).map(
            lambda pair: b64([pair[0].isoformat(), str(pair[1])])
        ),
    )
)
@example(HOSTILE_CURSORS[0])
def test_any_string_decodes_or_is_invalid_input(cursor):
    try:
        created, job_id = decode_cursor(cursor)
    except InvalidInput as exc:
        field = exc.field
    else:
        field = None
        assert created.tzinfo is UTC and str(uuid.UUID(job_id)) == job_id
    assert field in (None, "cursor")
