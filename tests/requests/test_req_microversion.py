"""Microversion negotiation: defaults, ``latest``, range and format errors, comparisons."""

import pytest

from engine.errors import BadRequest, NotAcceptable
from engine.requests import MAX_VERSION, MIN_VERSION, Microversion, parse_microversion
from engine.requests.faults import fault_name, http_status


def test_defaults_and_latest():
    assert parse_microversion(None) == Microversion(3, 0)
    assert parse_microversion("latest") == Microversion(3, 71)
    assert str(parse_microversion("latest")) == "3.71"
    assert str(MIN_VERSION) == "3.0"
    assert str(MAX_VERSION) == "3.71"


@pytest.mark.parametrize("text", ["3.0", "3.9", "3.10", "3.43", "3.51", "3.71"])
def test_in_range(text):
    version = parse_microversion(text)
    assert str(version) == text
    assert parse_microversion(version) is version


@pytest.mark.parametrize(
    ("text", "shown"), [("3.72", "3.72"), ("3.100", "3.100"), ("2.0", "2.0"), ("4.0", "4.0")]
)
def test_out_of_range_is_406_with_cinder_text(text, shown):
    with pytest.raises(NotAcceptable) as info:
        parse_microversion(text)
    assert http_status(info.value) == 406
    assert fault_name(info.value) == "computeFault"
    assert str(info.value) == (
        f"Version {shown} is not supported by the API. Minimum is 3.0 and maximum is 3.71."
    )


def test_microversion_object_out_of_range():
    with pytest.raises(NotAcceptable):
        parse_microversion(Microversion(3, 72))


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "3",
        "3.",
        ".1",
        "3.00",
        "03.1",
        "3.01",
        " 3.1",
        "3.1 ",
        "3.1.1",
        "",
        "LATEST",
        "3,1",
        "-3.1",
    ],
)
def test_malformed_is_400(text):
    with pytest.raises(BadRequest) as info:
        parse_microversion(text)
    assert str(info.value) == (
        f"API Version String {text} is of invalid format. Must be of format MajorNum.MinorNum."
    )


def test_numeric_ordering_and_string_comparisons():
    assert Microversion(3, 9) < Microversion(3, 10)
    assert parse_microversion("3.43") >= "3.43"
    assert parse_microversion("3.42") < "3.43"
    assert parse_microversion("3.51") > "3.50"
    assert parse_microversion("3.43") == "3.43"
    assert parse_microversion("3.43") != "3.44"
    assert Microversion(3, 43) != 3.43
    assert len({Microversion(3, 1), parse_microversion("3.1")}) == 1


def test_matches_bounds():
    version = Microversion(3, 43)
    assert version.matches("3.43", "3.50")
    assert version.matches()
    assert version.matches(None, "3.43")
    assert not version.matches("3.44")
    assert not version.matches(None, "3.42")


def test_comparison_with_garbage_string():
    with pytest.raises(BadRequest):
        _ = Microversion(3, 1) < "x"
    assert Microversion(3, 1) != "x"
    assert Microversion(3, 71) != "latest"
