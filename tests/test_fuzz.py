"""Property-based tests: whatever an upstream answers, a config holds or a template says,
only the documented errors come out (bounded: a few hundred examples in all)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobherald import config as config_module
from jobherald.errors import ConfigError
from jobherald.fetch import parse_retry_after
from jobherald.model import MAX_REASON_TEXT, MAX_REASONS, MAX_TEXT, Snapshot
from jobherald.renderer import check_template
from jobherald.sources import huawei_job, roma
from jobherald.sources.base import load_json
from jobherald.sources.huawei_auth import error_fields

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
    | st.sampled_from(["RUNNING", "SUCCESS", "Failed", "2026-01-01T00:00:00Z", "0001-01-01"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
# Bodies that look like job answers: the keys the parsers read, with any values.
KEYS = [
    "status",
    "progress_percent",
    "type",
    "archive_id",
    "reasons",
    "reason",
    "begin_time",
    "end_time",
    "entities",
    "job_type",
    "fail_reason",
    "error_code",
]
answers = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=len(KEYS))


def bounded(snapshot: Snapshot) -> None:
    for text in (snapshot.raw_status, snapshot.type, snapshot.archive_id, snapshot.link):
        assert text is None or len(text) <= MAX_TEXT
    assert len(snapshot.reasons) <= MAX_REASONS
    for reason in snapshot.reasons:
        for part in (
            reason.resource_type,
            reason.resource_name,
            reason.error_code,
            reason.error_msg,
        ):
            assert part is None or len(part) <= MAX_REASON_TEXT
    assert snapshot.progress is None or 0.0 <= snapshot.progress <= 1.0


@FAST
@given(st.one_of(answers, json_values))
def test_the_job_parsers_give_a_bounded_snapshot_or_a_value_error(body: Any) -> None:
    for parse in (roma.parse_job, huawei_job.parse_job):
        try:
            snapshot = parse(body)
        except ValueError:
            continue  # what the sources turn into a "body" error
        bounded(snapshot)


@FAST
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_bytes_are_json_or_a_value_error_and_errors_are_short(body: bytes) -> None:
    try:
        value = load_json(body)
    except ValueError:
        with pytest.raises((ValueError, RecursionError)):  # json refuses it too
            json.loads(body)
    else:
        assert json.dumps(value) == json.dumps(json.loads(body))  # the same value
    code, message = error_fields(body)
    assert code is None or len(code) <= 200
    assert message is None or len(message) <= 200


@FAST
@given(st.text(max_size=60))
def test_any_retry_after_is_a_finite_wait_or_none(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or (math.isfinite(seconds) and seconds > 0)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


toml_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["5m", "0", "off", "nan", "1e400", "..", "a/b", "roma-connect", "http-json"]),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=8,
)
SECTION_KEYS = {
    "daemon": ["poll_interval", "database", "concurrency", "error_after", "include", "log_level"],
    "sources.s": ["type", "endpoint", "project_id", "instance_id", "token", "timeout", "max_body"],
    "notifiers.n": ["urls", "on", "title", "body", "retry_for", "format"],
    "http": ["listen", "token"],
}
configs = st.fixed_dictionaries(
    {
        section: st.dictionaries(st.sampled_from(keys), toml_values, max_size=len(keys))
        for section, keys in SECTION_KEYS.items()
    }
)


@SLOW
@given(configs)
def test_any_config_loads_or_says_what_is_wrong_in_lines(
    tmp_path_factory: Any, tables: dict[str, dict[str, Any]]
) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "config.toml"
    text = "".join(
        f"[{section}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in keys.items())
        for section, keys in tables.items()
    )
    path.write_text(text, encoding="utf-8")
    try:
        config_module.load(path, check_urls=False)
    except ConfigError as exc:
        assert exc.problems and all(line and "\n" not in line for line in exc.problems)


FRAGMENTS = [
    "{{ job.name }}",
    "{{ job.reasons | length }}",
    "{% for r in job.reasons %}",
    "{% endfor %}",
    "{% if job.progress %}",
    "{% endif %}",
    "{{ job.progress | percent }}",
    "{{ job.duration | duration }}",
    "{{ 'x' * 3 }}",
    "{{ job.nope }}",
    "{{ 1 / 0 }}",
    "{{ event.kind | upper }}",
    "{{",
    "}}",
    "{%",
    "text ",
    "{{ job.reasons[0].error_msg }}",
    "{{ range(10) | list }}",
]


@SLOW
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=10), max_size=8).map("".join))
def test_any_template_is_accepted_or_refused_in_one_line(text: str) -> None:
    why = check_template(text)
    assert why is None or (why.startswith("template ") and "\n" not in why.strip()), why
