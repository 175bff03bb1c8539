"""The control API's rules without sockets: roles, routes, hashes, credentials, config."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from data_ingestion.access import (
    Access,
    Action,
    AuditEntry,
    AuthenticationFailed,
    Identity,
    allowed,
    masked_config,
    route,
)
from data_ingestion.control import ControlClient
from pipelines.config import parse_config
from pipelines.control_config import (
    ControlConfig,
    ControlUser,
    hash_password,
    is_loopback,
    parse_password_hash,
    verify_password,
)
from typed_config import ConfigError

ITERATIONS = 100_000
HASH = hash_password("s3cret-pw", iterations=ITERATIONS, salt=b"0123456789abcdef")
TOKEN = "deploy-token-" + "z" * 20


@pytest.mark.parametrize(
    ("action", "viewer", "operator", "admin"),
    [
        (Action.READ, True, True, True),
        (Action.PAUSE, False, True, True),
        (Action.RESUME, False, True, True),
        (Action.ACK, False, True, True),
        (Action.RESTART, False, True, True),
        (Action.VALIDATE_CONFIG, False, False, True),
        (Action.APPLY_CONFIG, False, False, True),
    ],
)
def test_each_role_may_do_exactly_its_actions(
    action: Action, viewer: bool, operator: bool, admin: bool
) -> None:
    assert (allowed("viewer", action), allowed("operator", action), allowed("admin", action)) == (
        viewer,
        operator,
        admin,
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/sources/fh_bus/pause", (Action.PAUSE, "fh_bus")),
        ("/api/sources/line-c.iot/resume", (Action.RESUME, "line-c.iot")),
        ("/api/alerts/3f2a9c1d0b7e/ack", (Action.ACK, "3f2a9c1d0b7e")),
        ("/api/restart", (Action.RESTART, "")),
        ("/api/config/validate", (Action.VALIDATE_CONFIG, "")),
        ("/api/config/apply", (Action.APPLY_CONFIG, "")),
        ("/api/sources/a b/pause", None),
        ("/api/sources//pause", None),
        ("/api/alerts/NOT-HEX/ack", None),
        ("/api/restart/now", None),
        ("/api/status", None),
    ],
)
def test_a_post_path_names_one_action_and_its_target(
    path: str, expected: tuple[Action, str] | None
) -> None:
    assert route(path) == expected


def test_a_password_hash_verifies_its_password_only() -> None:
    assert HASH.startswith("pbkdf2_sha256$100000$")
    assert verify_password("s3cret-pw", HASH)
    assert not verify_password("s3cret-pW", HASH)
    iterations, salt, digest = parse_password_hash(HASH)
    assert (iterations, salt, len(digest)) == (ITERATIONS, b"0123456789abcdef", 32)
    # A fresh salt each time: the same password never gives the same hash.
    assert hash_password("x", iterations=1000) != hash_password("x", iterations=1000)


@pytest.mark.parametrize(
    ("encoded", "problem"),
    [
        ("s3cret-pw", "not a pbkdf2_sha256$ITERATIONS$SALT$HASH string"),
        ("md5$1$abc$def", "not a pbkdf2_sha256$ITERATIONS$SALT$HASH string"),
        ("pbkdf2_sha256$many$abc$def", "its ITERATIONS is not a whole number"),
        ("pbkdf2_sha256$1000$%%%$def", "its SALT or HASH is not base64"),
        ("pbkdf2_sha256$1000$c2FsdA$c2hvcnQ", "its HASH must be 32 bytes and its SALT not empty"),
    ],
)
def test_a_malformed_hash_says_what_is_wrong(encoded: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("$", r"\$")):
        parse_password_hash(encoded)


def _access() -> Access:
    return Access(
        ControlConfig(
            users=(
                ControlUser("alice", "operator", password_hash=HASH),
                ControlUser("deploy", "admin", token=TOKEN),
            )
        )
    )


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_and_bearer_name_the_user_and_role() -> None:
    access = _access()
    assert access.identify(_basic("alice", "s3cret-pw")) == Identity("alice", "operator")
    # Again: remembered, and still only for the right password.
    assert access.identify(_basic("alice", "s3cret-pw")) == Identity("alice", "operator")
    assert access.identify(f"Bearer {TOKEN}") == Identity("deploy", "admin")
    assert access.identify(f"bearer   {TOKEN}  ") == Identity("deploy", "admin")
    assert access.identify(None) is None and access.identify("") is None


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (_basic("alice", "s3cret-pW"), "wrong password for 'alice'"),
        (_basic("mallory", "s3cret-pw"), "no user 'mallory' with a password"),
        # A token user has no password, a password user no token.
        (_basic("deploy", TOKEN), "no user 'deploy' with a password"),
        ("Bearer s3cret-pw", "unknown bearer token"),
        (f"Bearer {TOKEN}x", "unknown bearer token"),
        ("Basic not-base64!", "malformed Basic credentials"),
        ("Basic " + base64.b64encode(b"alice").decode(), "malformed Basic credentials"),
        ("Digest username=alice", "unsupported scheme 'Digest'"),
    ],
)
def test_wrong_credentials_are_refused_with_the_reason_for_the_log(header: str, why: str) -> None:
    access = _access()
    access.identify(_basic("alice", "s3cret-pw"))  # a remembered password changes nothing
    with pytest.raises(AuthenticationFailed) as refused:
        access.identify(header)
    assert str(refused.value).startswith(why)


def _control(**fields: Any) -> dict[str, Any]:
    return {"users": [{"name": "alice", "role": "operator", "password_hash": HASH}], **fields}


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        (
            {"control": {"users": []}},
            ["control.users: empty: add at least one user, or leave out the control section "
             "(reads then stay open and every change action is refused)"],
        ),
        (
            {"control": {"users": [{"name": "a", "role": "admin", "password_hash": HASH,
                                    "token": TOKEN},
                                   {"name": "a", "role": "viewer"}]}},
            ["control.users[0]: give exactly one of password_hash (HTTP Basic; make one with "
             "`python -m data_ingestion ctl hash-password`) and token (HTTP Bearer)",
             "control.users[1]: give exactly one of password_hash (HTTP Basic; make one with "
             "`python -m data_ingestion ctl hash-password`) and token (HTTP Bearer)",
             "control.users[1].name: 'a' is already used by control.users[0]"],
        ),
        (
            {"control": {"users": [{"name": "a", "role": "admin", "token": "short"},
                                   {"name": "b", "role": "viewer",
                                    "password_hash": hash_password("x", iterations=1000)}]}},
            ["control.users[0].token: shorter than 16 characters (not shown: a secret; make one "
             "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
             "control.users[1].password_hash: 1000 iterations are too few to resist cracking "
             "(at least 100000; make one with `python -m data_ingestion ctl hash-password`)"],
        ),
        (
            {"control": _control(tls_certfile="/no/such.pem")},
            ["control.tls_keyfile: required with tls_certfile (give both PEM files, or neither)",
             "control.tls_certfile: no such file '/no/such.pem' (relative paths start at the "
             "working directory)"],
        ),
        (
            {"monitoring": {"http_host": "0.0.0.0"}, "control": _control()},
            ["control: users are configured and monitoring.http_host '0.0.0.0' is reachable "
             "from other machines, so passwords and tokens would cross the network in clear: "
             "set control.tls_certfile and control.tls_keyfile, or control.allow_plain_http: "
             "true when TLS ends at a proxy on this host"],
        ),
        ({"monitoring": {"http_host": "0.0.0.0"}, "control": _control(allow_plain_http=True)}, []),
        ({"monitoring": {"http_host": "::1"}, "control": _control()}, []),
        ({"monitoring": {"http_host": "0.0.0.0"}}, []),
    ],
)  # fmt: skip
def test_the_control_section_is_checked_before_anything_serves(
    data: dict[str, Any], errors: list[str]
) -> None:
    if not errors:
        parse_config(data)
        return
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert refused.value.errors == errors


def test_a_bad_hash_is_an_error_that_does_not_show_it() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"control": {"users": [{"name": "a", "role": "admin",
                                             "password_hash": "hunter2-plain"}]}})  # fmt: skip
    assert refused.value.errors == [
        "control.users[0].password_hash: not a pbkdf2_sha256$ITERATIONS$SALT$HASH string (not "
        "shown: a secret; make one with `python -m data_ingestion ctl hash-password`)"
    ]
    assert "hunter2" not in repr(ControlUser("a", "admin", password_hash="hunter2-plain"))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.5", False), ("plant-gw", False)],
)  # fmt: skip
def test_only_loopback_hosts_count_as_this_machine(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_shown_config_masks_every_secret() -> None:
    config = parse_config(
        {
            "sources": {"mqtt": [{"name": "iot", "topics": ["plant/#"], "username": "ingest",
                                  "password": "mqtt-secret-1"}]},
            "notifications": {"webhooks": [{"name": "ops", "url": "http://hook/secret-2",
                                            "headers": {"Authorization": "Bearer secret-3"}}]},
            "control": {"users": [{"name": "deploy", "role": "admin", "token": TOKEN}]},
        }
    )  # fmt: skip
    shown = masked_config(config)
    assert shown["sources"]["mqtt"][0]["password"] == "***"
    assert shown["sources"]["mqtt"][0]["username"] == "ingest"
    assert shown["notifications"]["webhooks"][0]["url"] == "***"
    assert shown["notifications"]["webhooks"][0]["headers"] == {"Authorization": "***"}
    assert shown["control"]["users"][0] == {
        "name": "deploy", "role": "admin", "password_hash": None, "token": "***",
    }  # fmt: skip
    assert shown["kafka"]["sasl_password"] is None  # not set: nothing to hide
    text = repr(shown)
    assert not any(s in text for s in ("mqtt-secret-1", "secret-2", "secret-3", TOKEN))


def test_an_audit_line_says_who_from_where_what_and_how_it_ended() -> None:
    entry = AuditEntry("alice", "operator", "10.0.0.7", "pause", "fh_bus", "done", 200, "paused")
    assert (
        entry.line() == "audit: pause fh_bus by alice (operator) from 10.0.0.7: done (200) paused"
    )
    record = entry.record("line-c")
    assert (record["pipeline"], record["kind"], record["user"], record["outcome"]) == (
        "line-c", "audit", "alice", "done",
    )  # fmt: skip


def test_the_client_takes_one_kind_of_credentials_and_never_shows_them() -> None:
    with pytest.raises(ValueError, match="not both"):
        ControlClient("http://127.0.0.1:9180/", user="a", password="p", token=TOKEN)
    with pytest.raises(ValueError, match="go together"):
        ControlClient("http://127.0.0.1:9180/", user="a")
    client = ControlClient("http://127.0.0.1:9180/", token=TOKEN)
    assert TOKEN not in repr(client) and TOKEN not in str(vars(client).get("url"))
