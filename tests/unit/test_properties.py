"""Property tests: the job spec model and the list cursor codec take any input and
either accept it, with every result well-defined, or refuse it with the one error they document.
Deterministic (derandomized, no example database), so a failure here fails every run."""

from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.cursors import decode, encode
from api.routes.jobs import aware, parse_permutation_seed
from service.jobs.cost import estimate
from service.jobs.schemas import SEED_MAX, CNNSpec, FCSpec, job_spec_adapter
from service.platform.errors import InvalidInput

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


# -- every query and path parameter of every route -------------------------------------------------

INT64 = 2**63
# Values that once reached a bare 500: Unicode digits int() takes, datetimes whose offset carries them
# past year 1 or 9999 in UTC, integers past the databases' signed 64 bits.
NAMED_HOSTILE = [
    "²", "①", "١٢", "٣", "𝟗", str(INT64), str(-INT64 - 1), str(10**30), str(2**64), "-1",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59.999999-00:01", "1e3", "NaN", "", " 1", "1_0", "\x00", "%", "../..",
]  # fmt: skip
unicode_digits = st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=20).filter(
    lambda text: not text.isascii()
)
overflowing = st.one_of(
    st.sampled_from([INT64, -INT64 - 1, 10**30]),
    st.integers(min_value=INT64, max_value=10**40),
    st.integers(min_value=-(10**40), max_value=-1),
).map(str)
extreme_datetimes = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(max_value=datetime(1, 1, 2)) | st.datetimes(min_value=datetime(9999, 12, 30)),
    st.integers(-1439, 1439),
)
# In-range ASCII integers are left out: they are valid, and a valid permutation_seed or count would
# render a picture per example.
any_text = st.text(max_size=40).filter(lambda text: not (text.isascii() and text.strip().isdigit()))
hostile_values = st.one_of(unicode_digits, overflowing, extreme_datetimes, any_text, st.sampled_from(NAMED_HOSTILE))


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    required_query: dict[str, str]


def operations(client) -> list[Operation]:
    """Every operation of the OpenAPI document with a query or path parameter."""
    found = []
    for path, items in client.app.openapi()["paths"].items():
        for method, operation in items.items():
            params = [p for p in operation.get("parameters", []) if p["in"] in {"query", "path"}]
            if not params:
                continue
            required = {  # a required choice (format=onnx) gets a valid value, so the others are reached
                p["name"]: p["schema"]["enum"][0]
                for p in params
                if p["in"] == "query" and p.get("required") and "enum" in p["schema"]
            }
            found.append(
                Operation(
                    method.upper(),
                    path,
                    tuple(p["name"] for p in params if p["in"] == "path"),
                    tuple(p["name"] for p in params if p["in"] == "query"),
                    required,
                )
            )
    return found


def existing_ids(client) -> dict[str, str]:
    """Path values that exist, so a hostile query value reaches past the 404 of a missing job."""
    job = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
    comparison = client.post("/v1/comparisons", json={"seeds": 1, "architectures": ["fc"]}).json()["id"]
    return {"job_id": job, "comparison_id": comparison, "name": "mnist"}


def ask(client, operation: Operation, valid: dict[str, str], name: str, value: str):
    """The operation with `name` set to `value`, every other path parameter valid; the answer's status
    and headers, and its body when it is an error (an event stream is closed unread)."""
    path_values = {p: quote(value if p == name else valid[p], safe="") for p in operation.path_params}
    query = dict(operation.required_query) | ({name: value} if name in operation.query_params else {})
    with client.stream(operation.method, operation.path.format(**path_values), params=query) as answer:
        body = answer.read() if answer.status_code >= 400 else b""
    return answer, body


def assert_never_5xx(answer, body: bytes, where: str) -> None:
    assert answer.status_code < 500, f"{where}: {answer.status_code} {body[:300]!r}"
    if answer.status_code >= 400:
        assert answer.headers["content-type"] == "application/problem+json", where
        assert answer.headers.get("x-request-id"), where
        problem = json.loads(body)
        assert problem["status"] == answer.status_code, where
        if answer.status_code == 422:
            assert problem["field"], where


def test_the_named_hostile_values_in_every_parameter_of_every_route(client):
    found, valid = operations(client), existing_ids(client)
    assert {"/v1/jobs", "/v1/jobs/{job_id}/metrics", "/v1/events"} <= {op.path for op in found}
    for operation in found:
        for name in operation.path_params + operation.query_params:
            for value in NAMED_HOSTILE:
                answer, body = ask(client, operation, valid, name, value)
                assert_never_5xx(answer, body, f"{operation.method} {operation.path} {name}={value!r}")


def test_every_integer_parameter_is_bounded_by_64_bits(client):
    """An unbounded integer parameter would carry 2**63 to the database driver (a 500)."""
    for path, items in client.app.openapi()["paths"].items():
        for method, operation in items.items():
            for param in operation.get("parameters", []):
                schema = param["schema"]
                for option in schema.get("anyOf", [schema]):
                    if option.get("type") == "integer":
                        assert option.get("maximum", INT64) < INT64, f"{method} {path} {param['name']}"
                        assert option.get("minimum", -INT64 - 1) >= -INT64, f"{method} {path} {param['name']}"


ROUTE_PROPERTY = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@ROUTE_PROPERTY
@given(data=st.data(), value=hostile_values)
def test_any_hostile_parameter_value_is_never_a_5xx(client, data, value):
    found = operations(client)
    valid = getattr(client, "_valid_ids", None) or existing_ids(client)
    client._valid_ids = valid  # one job and one comparison for all the examples
    operation = data.draw(st.sampled_from(found), label="operation")
    name = data.draw(st.sampled_from(operation.path_params + operation.query_params), label="parameter")
    answer, body = ask(client, operation, valid, name, value)
    assert_never_5xx(answer, body, f"{operation.method} {operation.path} {name}={value!r}")


@PROPERTY
@given(st.one_of(st.text(max_size=21), unicode_digits, overflowing, st.integers(0, SEED_MAX).map(str)))
@example("²")
@example("①")
@example(str(SEED_MAX))
@example(str(INT64))
def test_a_permutation_seed_filter_is_an_integer_in_range_or_invalid_input(text):
    try:
        parsed = parse_permutation_seed(text)
    except InvalidInput as exc:
        field = exc.field
    else:
        field = None
        assert parsed == "none" or (type(parsed) is int and 0 <= parsed <= SEED_MAX and str(parsed) == text)
    assert field in (None, "query.permutation_seed")


@PROPERTY
@given(st.datetimes(timezones=st.integers(-1439, 1439).map(lambda minutes: timezone(timedelta(minutes=minutes)))))
@example(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))))
@example(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))))
def test_a_created_filter_is_the_same_instant_in_utc_or_invalid_input(moment):
    try:
        in_utc = aware(moment, "created_after")
    except InvalidInput as exc:
        field = exc.field
        assert moment.utcoffset() != timedelta(0) and moment.year in {1, 9999}  # only past the ends
    else:
        field = None
        assert in_utc == moment and in_utc is not None and in_utc.utcoffset() == timedelta(0)
    assert field in (None, "query.created_after")
