"""Repository locations, credentials from the environment, and the retry budget: what the
object stores decide before any request (their behaviour against a real server is in
tests/remote)."""

from __future__ import annotations

import pytest

from engine.errors import StoreError, TransientStoreError
from engine.store import LocalBlobStore, open_store, parse_location
from engine.store.retry import RetryPolicy, Transient
from engine.store.swift import SwiftAuth
from engine.store.url import Location


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/srv/repo", Location("file", "/srv/repo")),
        ("relative/dir", Location("file", "relative/dir")),
        ("swift://backups", Location("swift", "backups")),
        ("swift://backups/", Location("swift", "backups")),
        ("swift://backups/site/a", Location("swift", "backups", "site/a")),
        ("SWIFT://backups/x/", Location("swift", "backups", "x")),
        ("s3://my-bucket/p", Location("s3", "my-bucket", "p")),
    ],
)
def test_locations_parse(text, expected):
    assert parse_location(text) == expected
    assert str(expected) == text.rstrip("/").replace("SWIFT", "swift")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://host/x", "scheme 'ftp' is not supported"),
        ("swift://", "names no container or bucket"),
        ("swift://user:key@cont", "must not hold credentials"),
        ("s3://bucket?x=1", "must not hold credentials, a query"),
        ("swift://c/a//b", "empty or dot component"),
        ("swift://c/../b", "empty or dot component"),
        ("", "is not valid"),
    ],
)
def test_bad_locations_are_refused_saying_what_is_accepted(text, message):
    with pytest.raises(ValueError) as info:
        parse_location(text)
    assert message in str(info.value)


def test_open_store_of_a_path_is_the_local_directory(tmp_path):
    store = open_store(str(tmp_path))
    assert isinstance(store, LocalBlobStore) and store.root == str(tmp_path)
    with pytest.raises(ValueError, match="S3 bucket name 'Bad_Name' is not valid"):
        open_store("s3://Bad_Name")


def test_swift_v1_credentials_from_st_variables():
    env = {"ST_AUTH": "http://h/auth/v1.0", "ST_USER": "acc:me", "ST_KEY": "k3y-value"}
    auth = SwiftAuth.from_env(env)
    assert (auth.auth_url, auth.user, auth.key, auth.auth_version) == (
        "http://h/auth/v1.0",
        "acc:me",
        "k3y-value",
        "1",
    )
    assert "k3y-value" not in auth.describe() and "k3y-value" not in repr(auth)


def test_swift_keystone_v3_credentials_from_os_variables():
    env = {
        "OS_AUTH_URL": "http://ks/v3",
        "OS_USERNAME": "alice",
        "OS_PASSWORD": "pw-secret",
        "OS_PROJECT_NAME": "proj",
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_NAME": "Default",
        "OS_REGION_NAME": "RegionOne",
        "OS_INTERFACE": "internal",
        # Keystone wins over v1 variables also present.
        "ST_AUTH": "http://other",
        "ST_USER": "x",
        "ST_KEY": "y",
    }
    auth = SwiftAuth.from_env(env)
    assert auth.auth_version == "3" and auth.user == "alice"
    assert auth.os_options == {
        "project_name": "proj",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
        "region_name": "RegionOne",
        "endpoint_type": "internalURL",
    }
    assert auth.describe() == "user 'alice' (project 'proj') at http://ks/v3"


def test_swift_credentials_from_clouds_yaml(tmp_path):
    path = tmp_path / "clouds.yaml"
    path.write_text(
        "clouds:\n  lab:\n    region_name: R2\n    auth:\n      auth_url: http://ks:5000/v3\n"
        "      username: bob\n      password: s3cr3t\n      project_name: ops\n"
    )
    auth = SwiftAuth.from_env({"OS_CLOUD": "lab", "OS_CLIENT_CONFIG_FILE": str(path)})
    assert (auth.auth_url, auth.user, auth.key) == ("http://ks:5000/v3", "bob", "s3cr3t")
    assert auth.os_options["region_name"] == "R2"
    with pytest.raises(StoreError, match="OS_CLOUD='nope': no such cloud in"):
        SwiftAuth.from_env({"OS_CLOUD": "nope", "OS_CLIENT_CONFIG_FILE": str(path)})


def test_missing_swift_credentials_say_what_to_set():
    with pytest.raises(StoreError, match="no Swift credentials: set OS_CLOUD"):
        SwiftAuth.from_env({})
    with pytest.raises(StoreError, match="incomplete: set ST_KEY"):
        SwiftAuth.from_env({"ST_AUTH": "http://h", "ST_USER": "u"})


def test_retry_backs_off_with_jitter_within_the_budget():
    now = [0.0]
    pauses = []

    def sleep(s):
        pauses.append(s)
        now[0] += s

    calls = [0]

    def flaky():
        calls[0] += 1
        now[0] += 0.01
        if calls[0] < 5:
            raise Transient("HTTP 503")
        return "ok"

    policy = RetryPolicy(budget=10, base=0.1, max_delay=1)
    assert policy.run(flaky, "PUT k", sleep=sleep, clock=lambda: now[0]) == "ok"
    assert calls[0] == 5 and len(pauses) == 4
    for i, p in enumerate(pauses):
        assert 0 <= p <= min(1, 0.1 * 2**i)


def test_retry_gives_up_after_the_budget_with_a_clear_message():
    now = [0.0]

    def sleep(s):
        now[0] += s

    def down():
        now[0] += 0.5
        raise Transient("ConnectionError")

    policy = RetryPolicy(budget=5, base=0.2, max_delay=1)
    with pytest.raises(TransientStoreError) as info:
        policy.run(down, "Swift PUT k on http://h", sleep=sleep, clock=lambda: now[0])
    text = str(info.value)
    assert text.startswith("Swift PUT k on http://h failed ")
    assert "giving up after the retry budget of 5 s ($CINDERBLOCK_STORE_RETRY_SECONDS)" in text
    assert text.endswith("last error: ConnectionError")
    assert now[0] <= 5 + 0.5


def test_retry_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("CINDERBLOCK_STORE_RETRY_SECONDS", "12.5")
    assert RetryPolicy.from_env().budget == 12.5
    monkeypatch.setenv("CINDERBLOCK_STORE_RETRY_SECONDS", "soon")
    with pytest.raises(ValueError, match="must be a number of seconds, got 'soon'"):
        RetryPolicy.from_env()
    with pytest.raises(ValueError, match="budget must be a non-negative number"):
        RetryPolicy(budget=-1)
