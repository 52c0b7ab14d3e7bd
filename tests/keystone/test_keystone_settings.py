"""How ``serve --auth keystone`` is configured: file, environment, refusals, no secrets shown.

No Keystone is needed here: these check :func:`load_keystone_settings` and the import cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.http.keystone import KeystoneConfigError, KeystoneSettings, load_keystone_settings

ROOT = Path(__file__).resolve().parents[2]

FILE = """\
[keystone_authtoken]
auth_url = http://keystone.example:5000/v3
username = cinderblock
password = file-secret-1234
project_name = service
token_cache_time = 60
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "keystone.conf"
    path.write_text(text)
    return path


def test_file_gives_every_option(tmp_path):
    s = load_keystone_settings(write(tmp_path, FILE), environ={})
    assert s == KeystoneSettings(
        auth_url="http://keystone.example:5000/v3",
        username="cinderblock",
        password="file-secret-1234",
        project_name="service",
        token_cache_time=60,
    )
    assert s.user_domain_name == "Default"
    assert s.interface == "internal"
    assert s.public_auth_uri == "http://keystone.example:5000"


def test_environment_overrides_the_file(tmp_path):
    env = {
        "CINDERBLOCK_KEYSTONE_PASSWORD": "env-secret-5678",
        "CINDERBLOCK_KEYSTONE_WWW_AUTHENTICATE_URI": "https://id.example/identity",
        "CINDERBLOCK_KEYSTONE_TOKEN_CACHE_TIME": "-1",
    }
    s = load_keystone_settings(write(tmp_path, FILE), environ=env)
    assert s.password == "env-secret-5678"
    assert s.token_cache_time == -1
    assert s.public_auth_uri == "https://id.example/identity"
    assert s.username == "cinderblock"


def test_environment_alone_is_enough():
    env = {
        "CINDERBLOCK_KEYSTONE_AUTH_URL": "http://127.0.0.1:5000/v3",
        "CINDERBLOCK_KEYSTONE_USERNAME": "svc",
        "CINDERBLOCK_KEYSTONE_PASSWORD": "pw-9",
        "CINDERBLOCK_KEYSTONE_PROJECT_NAME": "service",
    }
    s = load_keystone_settings(None, environ=env)
    assert (s.auth_url, s.username, s.password, s.project_name) == (
        "http://127.0.0.1:5000/v3",
        "svc",
        "pw-9",
        "service",
    )


def test_password_is_never_shown(tmp_path):
    s = load_keystone_settings(write(tmp_path, FILE), environ={})
    assert "file-secret-1234" not in repr(s)
    assert "file-secret-1234" not in str(s)


def test_missing_password_says_where_to_put_it(tmp_path):
    path = write(tmp_path, FILE.replace("password = file-secret-1234\n", ""))
    with pytest.raises(KeystoneConfigError) as err:
        load_keystone_settings(path, environ={})
    assert str(err.value) == (
        "Keystone auth needs 'password': set password in [keystone_authtoken] of the "
        "--auth-config file or CINDERBLOCK_KEYSTONE_PASSWORD in the environment."
    )


def test_unknown_option_is_refused(tmp_path):
    path = write(tmp_path, FILE + "projct_name = typo\n")
    with pytest.raises(KeystoneConfigError, match=r"^Unknown option 'projct_name' in") as err:
        load_keystone_settings(path, environ={})
    assert "known options: admin_role, auth_url," in str(err.value)
    assert "file-secret-1234" not in str(err.value)


def test_missing_section_and_missing_file(tmp_path):
    path = write(tmp_path, "[DEFAULT]\nauth_url = http://x/v3\n")
    with pytest.raises(KeystoneConfigError, match=r"has no \[keystone_authtoken\] section"):
        load_keystone_settings(path, environ={})
    with pytest.raises(KeystoneConfigError, match=r"^Cannot read the Keystone config file"):
        load_keystone_settings(tmp_path / "absent.conf", environ={})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("auth_url = keystone:5000/v3", "auth_url must be an http:// or https:// URL"),
        ("token_cache_time = soon", "token_cache_time in .* must be a whole number"),
        ("token_cache_time = -5", "token_cache_time must be a whole number of seconds, or -1"),
        ("interface = private", "interface must be one of public, internal, admin"),
    ],
)
def test_malformed_values_are_refused(tmp_path, line, message):
    name = line.split(" = ")[0]
    text = "".join(ln + "\n" for ln in FILE.splitlines() if not ln.startswith(name + " ="))
    with pytest.raises(KeystoneConfigError, match=message):
        load_keystone_settings(write(tmp_path, text + line + "\n"), environ={})


def test_keyword_options_are_checked():
    from engine.http.keystone import keystone_auth

    with pytest.raises(TypeError, match="unknown options: user"):
        keystone_auth(lambda e, s: [], auth_url="http://x/v3", user="u")
    with pytest.raises(KeystoneConfigError, match="needs 'password'"):
        keystone_auth(lambda e, s: [], auth_url="http://x/v3", username="u", project_name="p")


def test_import_is_cheap_when_unused():
    """``serve --auth noauth`` imports the module but must not pay for keystonemiddleware."""
    code = (
        "import sys, engine.http.keystone\n"
        "heavy = [m for m in ('keystonemiddleware', 'keystoneauth1', 'oslo_config', 'webob')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_config_file_named_by_the_environment(tmp_path):
    path = write(tmp_path, FILE)
    env = {"CINDERBLOCK_KEYSTONE_CONFIG": str(path), "CINDERBLOCK_KEYSTONE_USERNAME": "other"}
    s = load_keystone_settings(None, environ=env)
    assert (s.auth_url, s.username, s.password) == (
        "http://keystone.example:5000/v3",
        "other",
        "file-secret-1234",
    )
