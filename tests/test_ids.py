"""Container id validation and lookup by id or unique prefix."""

from __future__ import annotations

import pytest

from sandboxrt._core.ids import MAX_ID_LENGTH, resolve_id, validate_id
from sandboxrt._core.plan import id_file_name
from sandboxrt.errors import (
    AmbiguousIDError,
    ContainerNotFoundError,
    InvalidIDError,
    SandboxrtError,
)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/b", "'/'"),
        ("../etc", "'/'"),
        ("/abs", "'/'"),
        ("a\0b", "NUL"),
        ("-a", "start with a letter or digit"),
        ("_a", "start with a letter or digit"),
        (".hidden", "start with a letter or digit"),
        ("+a", "start with a letter or digit"),
        ("a b", "only letters"),
        ("a:b", "only letters"),
        ("a\nb", "only letters"),
        ("ä", "start with a letter or digit"),
        ("aä", "only letters"),
        ("a" * (MAX_ID_LENGTH + 1), f"at most {MAX_ID_LENGTH}"),
    ],
)
def test_invalid_ids_are_rejected_with_reason(bad: str, reason: str) -> None:
    with pytest.raises(InvalidIDError) as info:
        validate_id(bad)
    assert reason in info.value.reason
    assert info.value.container_id == bad
    assert "invalid container id" in str(info.value)


def test_non_string_id_is_rejected() -> None:
    with pytest.raises(InvalidIDError):
        validate_id(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "good", ["a", "0", "web1", "A.b_c+d-e", "a..b", "sha256.abc", "a" * MAX_ID_LENGTH]
)
def test_valid_ids_are_returned_unchanged(good: str) -> None:
    assert validate_id(good) == good


def test_max_length_is_1024() -> None:
    assert MAX_ID_LENGTH == 1024


def test_long_id_message_is_shortened() -> None:
    with pytest.raises(InvalidIDError) as info:
        validate_id("x" * 5000)
    assert len(str(info.value)) < 300


def test_error_classes_are_builtin_kinds() -> None:
    assert issubclass(InvalidIDError, ValueError)
    assert issubclass(InvalidIDError, SandboxrtError)
    assert issubclass(ContainerNotFoundError, LookupError)
    assert issubclass(AmbiguousIDError, LookupError)


KNOWN = ["foo-2", "foo", "bar1", "baz"]


def test_exact_match_wins_over_prefix_matches() -> None:
    assert resolve_id("foo", KNOWN) == "foo"
    assert resolve_id("foo", ["foo", "foo-2"]) == "foo"


def test_unique_prefix_resolves() -> None:
    assert resolve_id("foo-", KNOWN) == "foo-2"
    assert resolve_id("bar", KNOWN) == "bar1"
    assert resolve_id("baz", iter(KNOWN)) == "baz"


def test_ambiguous_prefix_names_all_candidates() -> None:
    with pytest.raises(AmbiguousIDError) as info:
        resolve_id("fo", KNOWN)
    assert info.value.candidates == ["foo", "foo-2"]
    assert info.value.prefix == "fo"
    assert "'foo'" in str(info.value)
    assert "'foo-2'" in str(info.value)


def test_no_match_is_not_found() -> None:
    with pytest.raises(ContainerNotFoundError) as info:
        resolve_id("qux", KNOWN)
    assert info.value.container_id == "qux"
    with pytest.raises(ContainerNotFoundError):
        resolve_id("bar", ["foo", "foo-2"])
    with pytest.raises(ContainerNotFoundError):
        resolve_id("a", [])


def test_prefix_is_validated() -> None:
    with pytest.raises(InvalidIDError):
        resolve_id("", KNOWN)
    with pytest.raises(InvalidIDError):
        resolve_id("../foo", KNOWN)


@pytest.mark.parametrize("length", [41, 64, MAX_ID_LENGTH])
def test_a_long_ids_file_name_is_no_id_of_its_own(length: int) -> None:
    # Else creating that id would take (and remove) the long one's runtime directory.
    long_id = "a" * length
    name = id_file_name(long_id)
    assert len(name) == 40
    assert name != id_file_name("a" * (length + 1))
    with pytest.raises(InvalidIDError):
        validate_id(name)
    assert id_file_name("b" * 40) == "b" * 40  # short ones stay as they are
