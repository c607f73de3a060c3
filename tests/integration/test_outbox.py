"""The outbox state machine, the dead-letter list and its replay, the sweeper,
the relay, and the Celery settings that make kill -9 survivable."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from gateway.config import Settings
from gateway.db import utcnow
from gateway.events import OutboxTask, enqueue
from workers.celery_app import ALL_QUEUES, VISIBILITY_TIMEOUT, make_celery, queue_for
from workers.inprocess import TaskRunner
from workers.outbox import claim, run_task, sweep
from workers.queue import Relay


def add_task(db, kind="email.send", key="k1", payload=None):
    with db.transaction() as s:
        task = enqueue(s, kind, key, payload or {"n": 1})
        s.flush()
        return task.id


def state_of(db, task_id):
    with db.transaction() as s:
        return s.get(OutboxTask, task_id)


def test_celery_settings_survive_kill_9_and_keep_to_our_queues(settings):
    app = make_celery(
        Settings(**{**settings.model_dump(), "redis_url": "redis://h:6379/0"}, _env_file=None)
    )
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_time_limit < conf.broker_transport_options["visibility_timeout"]
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT
    assert conf.broker_url == "redis://h:6379/11"  # our own database, never db 0
    assert conf.task_default_queue.startswith("supportgate.")
    assert all(q.startswith("supportgate.") for q in ALL_QUEUES)
    assert "celery" not in ALL_QUEUES
    assert queue_for("inbound.ingest") == "supportgate.ingest"
    assert {
        "supportgate.run",
        "supportgate.ingest",
        "supportgate.mail",
        "supportgate.sweep",
        "supportgate.maintenance",
    } <= set(app.tasks)


def test_failing_task_backs_off_then_is_dead_lettered_and_replayed(db, admin):
    calls = []

    def flaky(payload):
        calls.append(payload)
        raise RuntimeError("relay down")

    task_id = add_task(db)
    for attempt in range(1, 4):
        assert run_task(db, {"email.send": flaky}, task_id, max_attempts=3) in ("pending", "dead")
        row = state_of(db, task_id)
        assert row.attempts == attempt
        if attempt < 3:
            assert row.state == "pending"
            assert row.available_at > utcnow()  # backoff, in the database
            with db.transaction() as s:
                s.execute(update(OutboxTask).values(available_at=utcnow()))
    assert state_of(db, task_id).state == "dead"
    assert state_of(db, task_id).last_error == "RuntimeError: relay down"

    listed = admin.get("/api/v1/admin/failed-tasks").get_json()["items"]
    assert [t["id"] for t in listed] == [str(task_id)]
    assert listed[0]["last_error"] == "RuntimeError: relay down"
    r = admin.post(f"/api/v1/admin/failed-tasks/{task_id}/retry")
    assert r.status_code == 200
    assert r.get_json()["state"] == "pending" and r.get_json()["attempts"] == 0
    assert admin.post(f"/api/v1/admin/failed-tasks/{task_id}/retry").status_code == 409
    assert admin.get("/api/v1/admin/failed-tasks").get_json()["items"] == []
    ran = []
    assert run_task(db, {"email.send": ran.append}, task_id) == "done"
    assert ran == [{"n": 1}]


def test_a_task_runs_once_however_often_it_is_delivered(db):
    task_id = add_task(db)
    ran = []
    assert run_task(db, {"email.send": ran.append}, task_id) == "done"
    assert run_task(db, {"email.send": ran.append}, task_id) == "skipped"
    assert claim(db, task_id) is None
    assert len(ran) == 1


def test_sweeper_hands_back_work_of_a_dead_worker(db):
    running, queued, fresh = add_task(db, key="a"), add_task(db, key="b"), add_task(db, key="c")
    old = utcnow() - timedelta(minutes=10)
    with db.transaction() as s:
        s.execute(
            update(OutboxTask)
            .where(OutboxTask.id == running)
            .values(state="running", updated_at=old)
        )
        s.execute(
            update(OutboxTask).where(OutboxTask.id == queued).values(state="queued", updated_at=old)
        )
        s.execute(update(OutboxTask).where(OutboxTask.id == fresh).values(state="running"))
    assert sweep(db, timedelta(minutes=5)) == 2
    assert state_of(db, running).state == "pending"
    assert state_of(db, queued).state == "pending"
    assert state_of(db, fresh).state == "running"  # still within its time


class FakePublisher:
    """Records what the relay publishes (the Celery publisher's interface)."""

    def __init__(self, fail=False):
        self.published = []
        self.fail = fail

    def publish(self, rows):
        if self.fail:
            raise ConnectionError("redis away")
        self.published += rows


def test_relay_publishes_due_rows_once_and_hands_back_on_failure(db):
    task_id = add_task(db, kind="inbound.ingest", payload={"inbound_id": "x"})
    with db.transaction() as s:  # older than the producer's own fast path
        s.execute(update(OutboxTask).values(updated_at=utcnow() - timedelta(minutes=1)))
    broken = FakePublisher(fail=True)
    with pytest.raises(ConnectionError):
        Relay(db, broken).run_once()
    assert state_of(db, task_id).state == "pending"
    with db.transaction() as s:
        s.execute(update(OutboxTask).values(updated_at=utcnow() - timedelta(minutes=1)))
    publisher = FakePublisher()
    relay = Relay(db, publisher)
    assert relay.run_once() == 1
    assert relay.run_once() == 0
    assert publisher.published == [(task_id, "inbound.ingest")]
    assert state_of(db, task_id).state == "queued"


def test_in_process_runner_shares_the_rules(db):
    ids = [add_task(db, key=str(i)) for i in range(5)]
    ran = []
    runner = TaskRunner(db, {"email.send": ran.append})
    runner.drain()
    assert len(ran) == 5
    with db.transaction() as s:
        assert set(s.scalars(select(OutboxTask.state).where(OutboxTask.id.in_(ids)))) == {"done"}


def test_api_hands_committed_tasks_to_celery_at_once(settings, db, pg_url, make_caller):
    """With Redis, an agent's reply reaches the mail queue right after its commit."""
    import json

    import redis as redis_lib

    from gateway.config import Settings as S
    from web.app import create_app

    queue_db = 14
    client = redis_lib.Redis.from_url(f"redis://127.0.0.1:6379/{queue_db}")
    client.delete("supportgate.mail")
    with_redis = S(
        **{
            **settings.model_dump(),
            "redis_url": "redis://127.0.0.1:6379/0",
            "celery_redis_db": queue_db,
            "database_url": pg_url,
        },
        _env_file=None,
    )
    app = create_app(with_redis)  # its own Database, so the publisher is installed
    try:
        agent = make_caller("agent")
        headers = {"Authorization": f"Bearer {agent.token}"}
        api = app.test_client()
        ticket = api.post(
            "/api/v1/tickets",
            headers=headers,
            json={"title": "x", "customer_email": "c@example.org"},
        ).get_json()
        r = api.post(
            f"/api/v1/tickets/{ticket['id']}/messages", headers=headers, json={"body": "hello"}
        )
        assert r.status_code == 201
        messages = [json.loads(m) for m in client.lrange("supportgate.mail", 0, -1)]
        assert [m["headers"]["task"] for m in messages] == ["supportgate.mail"]
        with db.transaction() as s:
            task_id = s.scalar(select(OutboxTask.id).where(OutboxTask.kind == "email.reply"))
        assert messages[0]["headers"]["argsrepr"] == repr([str(task_id)])
    finally:
        client.delete("supportgate.mail")
        client.close()
        app.extensions["supportgate"].db.dispose()


def test_send_interrupted_mid_relay_is_dead_lettered_not_resent(mail_server, db, relay, admin):
    """A retry that finds a mail 'sending' does not send it blindly again."""
    from gateway.outbound.models import OutboundMail
    from tests.integration.conftest import make_mail

    mail_server.send(make_mail())
    runner = mail_server.runner
    all_handlers = runner.handlers
    runner.handlers = {k: v for k, v in all_handlers.items() if k != "email.send"}
    runner.drain()  # ingested; the acknowledgment is composed but held back
    with db.transaction() as s:
        s.execute(update(OutboundMail).values(state="sending"))  # as if killed mid-send
    runner.handlers = all_handlers
    runner.drain()
    assert relay[0].messages == []
    with db.transaction() as s:
        assert s.scalar(select(OutboundMail.state)) == "uncertain"
    [dead] = admin.get("/api/v1/admin/failed-tasks").get_json()["items"]
    assert "uncertain" in dead["last_error"]
    assert admin.post(f"/api/v1/admin/failed-tasks/{dead['id']}/retry").status_code == 200
    runner.drain()
    assert len(relay[0].messages) == 1
    with db.transaction() as s:
        assert s.scalar(select(OutboundMail.state)) == "sent"


def _publisher_app(settings, queue_db):
    from gateway.config import Settings as S
    from workers.queue import make_publisher_app

    return make_publisher_app(
        S(
            **{
                **settings.model_dump(),
                "redis_url": "redis://127.0.0.1:6379/0",
                "celery_redis_db": queue_db,
            },
            _env_file=None,
        )
    )


def test_publisher_sends_each_row_of_a_batch_to_its_queue_in_order(settings):
    """Rows committed together are published in one Redis pipeline, one message per row."""
    import json

    import redis as redis_lib

    from workers.queue import CeleryPublisher

    queue_db = 13
    client = redis_lib.Redis.from_url(f"redis://127.0.0.1:6379/{queue_db}")
    queues = ("supportgate.ingest", "supportgate.mail")
    client.delete(*queues)
    app = _publisher_app(settings, queue_db)
    rows = [(uuid.uuid4(), "inbound.ingest" if i % 3 else "email.send") for i in range(40)]
    try:
        CeleryPublisher(app).publish(rows)
        for queue, kinds in (
            ("supportgate.ingest", {"inbound.ingest"}),
            ("supportgate.mail", {"email.send"}),
        ):
            # LPUSH, consumed from the right: oldest first
            messages = [json.loads(m) for m in reversed(client.lrange(queue, 0, -1))]
            assert [m["headers"]["task"] for m in messages] == [queue] * len(messages)
            assert [m["headers"]["argsrepr"] for m in messages] == [
                repr([str(i)]) for i, kind in rows if kind in kinds
            ]
    finally:
        client.delete(*queues)
        client.close()
        app.close()


def test_relay_leaves_rows_alone_while_their_queue_has_a_backlog(db, settings):
    """Under a backlog the producer's message for a pending row is most likely still in the
    queue: the relay publishes no second copy until the queue drains, or the row is stale."""
    import redis as redis_lib

    from workers.queue import CeleryPublisher

    queue_db = 12
    client = redis_lib.Redis.from_url(f"redis://127.0.0.1:6379/{queue_db}")
    client.delete("supportgate.ingest")
    app = _publisher_app(settings, queue_db)
    task_id = add_task(db, kind="inbound.ingest", payload={"inbound_id": "x"})
    with db.transaction() as s:  # older than the producer's fast path, younger than stale
        s.execute(update(OutboxTask).values(updated_at=utcnow() - timedelta(minutes=1)))
    relay = Relay(db, CeleryPublisher(app), stale_after=timedelta(minutes=5))
    try:
        client.lpush("supportgate.ingest", b"a message ahead of it")
        assert relay.run_once() == 0
        assert state_of(db, task_id).state == "pending"
        client.delete("supportgate.ingest")  # drained (or lost in a Redis restart)
        assert relay.run_once() == 1
        assert state_of(db, task_id).state == "queued"
        assert client.llen("supportgate.ingest") == 1

        stale = add_task(db, kind="inbound.ingest", key="k2", payload={"inbound_id": "y"})
        with db.transaction() as s:
            s.execute(
                update(OutboxTask)
                .where(OutboxTask.id == stale)
                .values(updated_at=utcnow() - timedelta(minutes=6))
            )
        assert relay.run_once() == 1  # busy queue, but the row is older than stale_after
        assert state_of(db, stale).state == "queued"

        retry = add_task(db, kind="inbound.ingest", key="k3", payload={"inbound_id": "z"})
        with db.transaction() as s:  # failed once; its retry time has come: in no queue
            s.execute(
                update(OutboxTask)
                .where(OutboxTask.id == retry)
                .values(attempts=1, updated_at=utcnow() - timedelta(seconds=30))
            )
        assert relay.run_once() == 1  # published although the queue is still busy
        assert state_of(db, retry).state == "queued"
    finally:
        client.delete("supportgate.ingest")
        client.close()
        app.close()


def test_publisher_names_several_rows_of_a_queue_in_one_message(settings):
    """The SMTP edge's publisher: a committed batch becomes one message per 3 rows of a
    queue here (16 in `supportgate smtp`), in order."""
    import json

    import redis as redis_lib

    from workers.queue import CeleryPublisher

    client = redis_lib.Redis.from_url("redis://127.0.0.1:6379/9")
    queues = ("supportgate.ingest", "supportgate.mail")
    client.delete(*queues)
    app = _publisher_app(settings, 9)
    ingest = [(uuid.uuid4(), "inbound.ingest") for _ in range(7)]
    mail = [(uuid.uuid4(), "email.send") for _ in range(2)]
    try:
        CeleryPublisher(app, rows_per_message=3).publish(ingest[:4] + mail + ingest[4:])

        def args(queue):
            return [
                json.loads(m)["headers"]["argsrepr"] for m in reversed(client.lrange(queue, 0, -1))
            ]

        ids = [str(i) for i, _ in ingest]
        assert args("supportgate.ingest") == [repr(ids[0:3]), repr(ids[3:6]), repr(ids[6:7])]
        assert args("supportgate.mail") == [repr([str(i) for i, _ in mail])]
    finally:
        client.delete(*queues)
        client.close()
        app.close()


def test_a_message_of_several_rows_runs_them_in_order_and_hands_on_over_its_budget(
    db, settings, monkeypatch
):
    import json

    import redis as redis_lib

    import workers.tasks as tasks
    from workers.queue import CeleryPublisher

    client = redis_lib.Redis.from_url("redis://127.0.0.1:6379/10")
    client.delete("supportgate.mail")
    app = _publisher_app(settings, 10)
    ran: list[str] = []
    ids = [str(add_task(db, key=f"m{i}", payload={"n": i})) for i in range(4)]
    monkeypatch.setattr(
        tasks,
        "_state",
        tasks.WorkerState(
            settings, db, {"email.send": lambda p: ran.append(p["n"])}, CeleryPublisher(app)
        ),
    )
    try:
        assert tasks.run_outbox(*ids[:2]) == ["done", "done"]
        assert tasks.run_outbox(ids[0]) == "skipped"  # a second message for a row
        assert ran == [0, 1]
        monkeypatch.setattr(tasks, "MESSAGE_BUDGET_SECONDS", 0.0)
        monkeypatch.setattr(tasks, "CLAIM_AT_ONCE", 1)  # the budget is checked between chunks
        assert tasks.run_outbox(*ids[2:]) == ["done"]  # over budget after the first row
        assert ran == [0, 1, 2]
        assert state_of(db, uuid.UUID(ids[3])).state == "pending"
        handed = [json.loads(m) for m in reversed(client.lrange("supportgate.mail", 0, -1))]
        assert [m["headers"]["argsrepr"] for m in handed] == [repr([ids[3]])]
    finally:
        client.delete("supportgate.mail")
        client.close()
        app.close()
