"""The web server's skeleton (node/web/app.py, session.py): who may call what over
HTTP, the session cookie, CSRF, errors that never show a traceback, and the server
thread itself."""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Iterator

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from raftflow.config import ConfigError, load
from raftflow.core import commands as c
from raftflow.web import session
from raftflow.web.app import WebServer, _QuietServer, build_app
from web_support import BASE_URL, WebWorld


@pytest.fixture
def world(tmp_path: Path) -> WebWorld:
    return WebWorld(tmp_path)


def test_a_request_without_a_token_is_401_saying_what_to_send(world: WebWorld) -> None:
    response = world.client().get("/api/v2/dags")
    assert response.status_code == 401
    assert "Authorization: Bearer TOKEN" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_unknown_token_is_401(world: WebWorld) -> None:
    response = world.client(authorization="Bearer not-a-token").get("/api/v2/dags")
    assert response.status_code == 401 and "unknown or revoked token" in response.json()["detail"]
    response = world.client(authorization="Basic abc").get("/api/v2/dags")
    assert response.status_code == 401 and "must be 'Bearer TOKEN'" in response.json()["detail"]


def test_a_viewer_reads_but_may_not_pause_and_nothing_changes(world: WebWorld) -> None:
    viewer = world.client("viewer")
    assert viewer.get("/api/v2/dags/d").json()["is_paused"] is False
    before = world.log_size()
    response = viewer.patch("/api/v2/dags/d", json={"is_paused": True})
    assert response.status_code == 403
    assert response.json()["detail"] == "SetPaused needs role operator; token 'viewer' has role viewer"
    assert world.log_size() == before and not world.replica.state.dags["d"].paused


def test_an_operator_pauses_and_the_write_is_proposed_as_its_token(world: WebWorld) -> None:
    response = world.client("operator").patch("/api/v2/dags/d", json={"is_paused": True})
    assert response.status_code == 200 and response.json()["is_paused"] is True
    assert world.replica.state.dags["d"].paused
    assert world.proposers_of(c.SetPaused) == ["token:operator"]


def test_whoami_names_the_token_and_its_role(world: WebWorld) -> None:
    assert world.client("operator").get("/api/v2/raftflow/whoami").json() == {
        "name": "operator", "role": "operator", "node_id": "n1", "by_cookie": False}


def test_health_and_version_need_no_token(world: WebWorld) -> None:
    health = world.client().get("/api/v2/monitor/health")
    assert health.status_code == 200
    assert health.json()["metadatabase"] == {"status": "healthy"}
    assert health.json()["raftflow"]["leader"] == "n1"
    assert world.client().get("/api/v2/version").json()["version"]


# ---------------------------------------------------------------- the session cookie
def test_login_sets_a_secure_http_only_cookie_and_redirects_to_a_local_next(world: WebWorld) -> None:
    client = world.client()
    response = client.post("/login", data={"token": world.secrets["viewer"], "next": "/dags/d/graph?run_id=x"},
                           headers={"origin": BASE_URL})
    assert response.status_code == 303 and response.headers["location"] == "/dags/d/graph?run_id=x"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{session.COOKIE}={world.secrets['viewer']};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie     # plain HTTP (insecure): a Secure cookie would never come back
    assert client.get("/api/v2/raftflow/whoami").json()["by_cookie"] is True


def test_the_cookie_is_secure_over_https(tmp_path: Path) -> None:
    world = WebWorld(tmp_path, https=True)
    client = world.client()
    response = client.post("/login", data={"token": world.secrets["viewer"]}, headers={"origin": BASE_URL})
    assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize("next_path", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "dags", ""])
def test_login_never_redirects_off_this_server(world: WebWorld, next_path: str) -> None:
    response = world.client().post("/login", data={"token": world.secrets["viewer"], "next": next_path},
                                   headers={"origin": BASE_URL})
    assert response.status_code == 303 and response.headers["location"] == "/dags"


def test_a_bad_token_shows_the_login_form_again_with_the_reason(world: WebWorld) -> None:
    response = world.client().post("/login", data={"token": "wrong"}, headers={"origin": BASE_URL})
    assert response.status_code == 401 and "set-cookie" not in response.headers
    assert "unknown or revoked token" in response.text and 'name="token"' in response.text.replace("=token", '="token"')
    empty = world.client().post("/login", data={"token": ""}, headers={"origin": BASE_URL})
    assert empty.status_code == 401 and "Paste a token" in empty.text
    crowded = world.client().post("/login", data={f"f{i}": "x" for i in range(20)}, headers={"origin": BASE_URL})
    assert crowded.status_code == 401 and "Paste a token" in crowded.text
    huge = world.client().post("/login", content=b"token=" + b"x" * 20_000, headers={
        "origin": BASE_URL, "content-type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 401 and "set-cookie" not in huge.headers


def test_logout_clears_the_cookie(world: WebWorld) -> None:
    client = world.browser("viewer")
    response = client.post("/logout", headers={"origin": BASE_URL})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert f'{session.COOKIE}=""' in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    assert client.get("/api/v2/raftflow/whoami").status_code == 401


def test_a_revoked_token_ends_its_sessions(world: WebWorld) -> None:
    client = world.browser("viewer")
    assert client.get("/api/v2/dags").status_code == 200
    world.ops.revoke_token("viewer")
    assert client.get("/api/v2/dags").status_code == 401


def test_a_page_without_a_session_redirects_to_login_with_next(world: WebWorld) -> None:
    def page(request: Request) -> PlainTextResponse:     # any page: it needs a caller
        return PlainTextResponse(session.caller_of(request).name)
    world.app.router.routes.insert(0, Route("/some/page", page))
    response = world.client().get("/some/page?run_id=r1")
    assert response.status_code == 303 and response.headers["location"] == "/login?next=%2Fsome%2Fpage%3Frun_id%3Dr1"
    form = world.client().get(response.headers["location"])
    assert form.status_code == 200 and 'value="/some/page?run_id=r1"' in form.text
    assert world.browser("viewer").get("/some/page").text == "viewer"


# ---------------------------------------------------------------- CSRF
def test_a_cookie_write_from_another_site_is_refused_and_changes_nothing(world: WebWorld) -> None:
    client = world.browser("operator")
    before = world.log_size()
    for headers in ({}, {"origin": "https://evil.example"}, {"referer": "https://evil.example/page"},
                    {"origin": "null"}, {"x-raftflow-csrf": "0"}):
        response = client.patch("/api/v2/dags/d", json={"is_paused": True}, headers=headers)
        assert response.status_code == 403, headers
        assert "refused a cross-site request" in response.json()["detail"]
    assert world.log_size() == before and not world.replica.state.dags["d"].paused


@pytest.mark.parametrize("headers", [{"origin": BASE_URL}, {"referer": BASE_URL + "/dags"}, {"x-raftflow-csrf": "1"}])
def test_a_cookie_write_from_its_own_pages_is_let_in(world: WebWorld, headers: dict[str, str]) -> None:
    response = world.browser("operator").patch("/api/v2/dags/d", json={"is_paused": True}, headers=headers)
    assert response.status_code == 200 and world.replica.state.dags["d"].paused


def test_a_bearer_write_needs_no_origin(world: WebWorld) -> None:
    assert world.client("operator").patch("/api/v2/dags/d", json={"is_paused": True}).status_code == 200


def test_login_and_logout_from_another_site_are_refused(world: WebWorld) -> None:
    response = world.client().post("/login", data={"token": world.secrets["admin"]},
                                   headers={"origin": "https://evil.example"})
    assert response.status_code == 403 and "set-cookie" not in response.headers
    client = world.browser("viewer")
    assert client.post("/logout", headers={"origin": "https://evil.example"}).status_code == 403
    assert client.get("/api/v2/raftflow/whoami").status_code == 200


# ---------------------------------------------------------------- errors
def test_unknown_paths_and_methods_answer_json_under_api_and_html_elsewhere(world: WebWorld) -> None:
    api = world.client("viewer").get("/api/v2/nothing")
    assert api.status_code == 404 and "docs/api.md" in api.json()["detail"]
    page = world.client("viewer").get("/nothing")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert world.client("viewer").delete("/api/v2/version").status_code == 405


def test_a_bug_answers_500_naming_the_node_without_a_traceback(world: WebWorld,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("secret internals")
    monkeypatch.setattr(world.ops, "record", broken)
    response = world.client("viewer").get("/api/v2/dags/d")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error on node n1 (RuntimeError); its log has the details. "
                                          "Nothing is known to have changed"}
    assert "Traceback" not in response.text and "secret internals" not in response.text


def test_every_response_forbids_framing_and_sniffing(world: WebWorld) -> None:
    response = world.client().get("/api/v2/version")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_body_over_the_limit_is_refused_before_it_is_read(world: WebWorld) -> None:
    response = world.client("operator").patch("/api/v2/dags/d", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                                              headers={"content-type": "application/json"})
    assert response.status_code == 413 and not world.replica.state.dags["d"].paused


# ---------------------------------------------------------------- the setting and the server
def _config(tmp_path: Path, **extra: str) -> str:
    lines = ['node_id = "n1"', 'grpc_address = "127.0.0.1:7001"', 'raft_address = "127.0.0.1:7002"',
             'peer_address = "127.0.0.1:7003"', f'data_dir = "{tmp_path / "data"}"',
             f'secret_file = "{tmp_path / "secret"}"', "insecure = true"]
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_http_address_is_optional_and_checked(tmp_path: Path) -> None:
    assert load(_config(tmp_path), environ={}).http_address == ""
    cfg = load(_config(tmp_path, http_address="127.0.0.1:8081"), environ={})
    assert (cfg.http_address, cfg.web_url) == ("127.0.0.1:8081", "http://127.0.0.1:8081")
    with pytest.raises(ConfigError, match="http_address from .* must be HOST:PORT, got '8081'"):
        load(_config(tmp_path, http_address="8081"), environ={})
    with pytest.raises(ConfigError, match="already uses: give the web server a port of its own"):
        load(_config(tmp_path, http_address="127.0.0.1:7001"), environ={})
    assert load(_config(tmp_path), environ={"RAFTFLOW_HTTP_ADDRESS": "127.0.0.1:9"}).http_address == "127.0.0.1:9"


def test_the_server_serves_on_its_thread_and_stops(world: WebWorld) -> None:
    server = WebServer(build_app(world.ctx), "127.0.0.1:0")
    server.start()
    try:
        host, port = server.address.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("GET", "/api/v2/version")
        response = connection.getresponse()
        assert response.status == 200 and b'"version"' in response.read()
        assert response.getheader("date"), "the Date header is kept fresh by the server's tick"
        connection.close()
    finally:
        stopping = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - stopping
    # The server's tick is 1 s (an idle node's cost); a stop wakes it instead of waiting.
    assert stopped_in < _QuietServer.TICK, f"stop took {stopped_in:.2f}s"
    with pytest.raises(OSError):
        http.client.HTTPConnection(host, int(port), timeout=2).request("GET", "/api/v2/version")


def test_a_port_in_use_is_a_config_error(world: WebWorld) -> None:
    first = WebServer(build_app(world.ctx), "127.0.0.1:0")
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on http_address {first.address}"):
            WebServer(build_app(world.ctx), first.address)
    finally:
        first.stop()


def test_every_operation_error_has_its_status() -> None:
    from raftflow.api import errors
    from raftflow.web.app import STATUS, status_of

    kinds = {errors.ServiceError, *errors.ServiceError.__subclasses__(), *errors.Unavailable.__subclasses__()}
    assert kinds - {errors.ServiceError} <= set(STATUS), "an operation error without an HTTP status"
    assert (status_of(errors.NoQuorum("x")), status_of(errors.Invalid("x"))) == (503, 400)


def test_a_node_without_quorum_says_retry_and_changes_nothing(world: WebWorld) -> None:
    world.replica.quorum = False
    response = world.client("operator").patch("/api/v2/dags/d", json={"is_paused": True})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "no quorum" in response.json()["detail"] and not world.replica.state.dags["d"].paused
    assert world.client().get("/api/v2/monitor/health").status_code == 503


def test_a_chunked_body_is_cut_off_at_the_json_limit(world: WebWorld) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"is_paused": true, "pad": "'
        for _ in range(64):
            yield b"x" * 8192
        yield b'"}'
    response = world.client("operator").patch("/api/v2/dags/d", content=chunks(),
                                              headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than 262144 bytes" in response.json()["detail"]
    assert not world.replica.state.dags["d"].paused
