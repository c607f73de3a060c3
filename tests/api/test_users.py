from __future__ import annotations

from sqlalchemy import select

from gateway.users.models import ApiToken


def test_me(agent):
    r = agent.get("/api/v1/me")
    assert r.status_code == 200
    assert r.get_json()["email"] == "agent@example.com"
    assert r.get_json()["role"] == "agent"


def test_admin_creates_lists_and_updates_users(admin, agent):
    r = admin.post(
        "/api/v1/users",
        json={
            "email": "Carol@Example.com",
            "role": "agent",
            "name": "Carol",
            "slack_user_id": "U123ABC",
        },
    )
    assert r.status_code == 201
    carol = r.get_json()
    assert carol["email"] == "carol@example.com"
    assert (
        admin.post(
            "/api/v1/users", json={"email": "carol@example.com", "role": "agent"}
        ).status_code
        == 409
    )
    listed = admin.get("/api/v1/users?role=agent").get_json()["items"]
    assert {u["email"] for u in listed} == {"agent@example.com", "carol@example.com"}
    r = admin.patch(f"/api/v1/users/{carol['id']}", json={"role": "admin", "name": "C."})
    assert r.get_json()["role"] == "admin"
    assert r.get_json()["name"] == "C."
    dup = admin.patch(f"/api/v1/users/{agent.id}", json={"slack_user_id": "U123ABC"})
    assert dup.status_code == 409
    assert admin.patch(f"/api/v1/users/{carol['id']}", json={"role": "boss"}).status_code == 422
    assert admin.patch(f"/api/v1/users/{carol['id']}", json={"role": None}).status_code == 422


def test_user_listing_paginates(admin, make_caller):
    for i in range(5):
        make_caller("customer", f"c{i}@example.org")
    seen, cursor = [], None
    while True:
        page = admin.get(
            "/api/v1/users?limit=2" + (f"&cursor={cursor}" if cursor else "")
        ).get_json()
        seen += [u["email"] for u in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(seen)
    assert len(seen) == 6


def test_mass_assignment_on_users_is_refused(admin, agent):
    r = admin.patch(f"/api/v1/users/{agent.id}", json={"email": "x@example.com"})
    assert r.status_code == 422
    r = admin.patch(f"/api/v1/users/{agent.id}", json={"id": admin.id})
    assert r.status_code == 422


def test_admin_cannot_lock_themselves_out(admin):
    assert admin.patch(f"/api/v1/users/{admin.id}", json={"active": False}).status_code == 409
    assert admin.patch(f"/api/v1/users/{admin.id}", json={"role": "agent"}).status_code == 409


def test_tokens_issue_list_revoke(admin, agent, client, db):
    r = admin.post(f"/api/v1/users/{agent.id}/tokens")
    assert r.status_code == 201
    new = r.get_json()
    assert new["token"].startswith("sg_")
    assert len(new["token"]) >= 40  # 32 random bytes, base64url
    headers = {"Authorization": f"Bearer {new['token']}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    listed = admin.get(f"/api/v1/users/{agent.id}/tokens").get_json()["items"]
    assert len(listed) == 2
    assert [t["last_used_at"] is not None for t in listed] == [False, True]
    assert all("token" not in t for t in listed)
    with db.transaction() as s:
        stored = s.scalars(select(ApiToken.token_hash)).all()
    assert new["token"] not in stored  # only hashes are stored
    assert admin.delete(f"/api/v1/users/{agent.id}/tokens/{new['id']}").status_code == 204
    r = client.get("/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert agent.get("/api/v1/me").status_code == 200  # the other token still works
    assert admin.delete(f"/api/v1/users/{agent.id}/tokens/{admin.id}").status_code == 404


def test_deactivated_user_cannot_authenticate(admin, agent):
    assert admin.patch(f"/api/v1/users/{agent.id}", json={"active": False}).status_code == 200
    assert agent.get("/api/v1/me").status_code == 401
    assert admin.patch(f"/api/v1/users/{agent.id}", json={"active": True}).status_code == 200
    assert agent.get("/api/v1/me").status_code == 200


def test_bad_credentials(client, agent):
    for header in (
        "",
        "Bearer",
        "Bearer nope",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        f"Bearer {agent.token}x",
        f"Bearer {agent.token[:-1]}",
    ):
        r = client.get("/api/v1/me", headers={"Authorization": header} if header else {})
        assert r.status_code == 401, header
        assert r.get_json()["type"].endswith("/problems/unauthorized")


def test_unknown_user_is_404(admin):
    assert admin.get("/api/v1/users/00000000-0000-0000-0000-000000000000").status_code == 404
    assert admin.get("/api/v1/users/nope").status_code == 404
