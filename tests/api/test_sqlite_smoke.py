"""Smoke tier on SQLite, the embedded default: the same API over the same migrations."""

from __future__ import annotations

import pytest

from gateway.users.services import add_user_cli


@pytest.fixture
def sqlite_admin(sqlite_app):
    app, db = sqlite_app
    with db.transaction() as s:
        _, token = add_user_cli(s, "root@example.com", "admin", "Root", None)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    return client, headers


def test_walkthrough_on_sqlite(sqlite_admin):
    client, h = sqlite_admin
    made = []
    for i in range(12):
        r = client.post(
            "/api/v1/tickets",
            headers=h,
            json={
                "title": f"t{i}",
                "priority": ["low", "high"][i % 2],
                "tags": ["even" if i % 2 == 0 else "odd"],
                "metadata": {"n": str(i)},
                "customer_email": f"c{i % 3}@example.org",
            },
        )
        assert r.status_code == 201, r.get_json()
        made.append(r.get_json())
    assert [t["number"] for t in made] == list(range(1, 13))
    for sort in ("-updated_at", "created_at", "priority", "-status", "number"):
        seen, cursor = [], None
        while True:
            q = f"/api/v1/tickets?sort={sort}&limit=5" + (f"&cursor={cursor}" if cursor else "")
            body = client.get(q, headers=h).get_json()
            seen += [t["id"] for t in body["items"]]
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert sorted(seen) == sorted(t["id"] for t in made), sort
    odd = client.get("/api/v1/tickets?tag=odd&priority=high", headers=h).get_json()["items"]
    assert len(odd) == 6
    assert [
        t["id"] for t in client.get("/api/v1/tickets?metadata.n=3", headers=h).get_json()["items"]
    ] == [made[3]["id"]]
    url = f"/api/v1/tickets/{made[0]['id']}"
    r = client.patch(url, headers={**h, "If-Match": '"1"'}, json={"status": "open"})
    assert r.status_code == 200
    assert (
        client.patch(url, headers={**h, "If-Match": '"1"'}, json={"status": "solved"}).status_code
        == 412
    )
    assert client.patch(url, headers=h, json={"status": "new"}).status_code == 409
    m = client.post(f"{url}/messages", headers=h, json={"body": "*hi*", "format": "markdown"})
    assert m.status_code == 201
    assert client.get(f"{url}/messages", headers=h).get_json()["items"][0]["body_html"]
    assert len(client.get(f"{url}/history", headers=h).get_json()["items"]) >= 2
    assert client.delete(url, headers=h).status_code == 204
    assert client.delete(f"{url}?purge=true", headers=h).status_code == 204
    assert client.get(url, headers=h).status_code == 404
    assert client.get("/readyz").status_code == 200
