"""Mail in over real SMTP sessions, through the ingest task, to tickets and answers."""

from __future__ import annotations

import hashlib
import os
import smtplib
from email import message_from_bytes, policy
from email.utils import make_msgid

import pytest
from sqlalchemy import func, select

from gateway.attachments.models import Attachment
from gateway.conversations.models import Message
from gateway.inbound.models import InboundMail
from gateway.outbound.models import OutboundMail
from gateway.storage import LocalStorage
from gateway.tickets.models import Ticket
from tests.blobs import opaque_bytes
from tests.integration.conftest import SUPPORT, make_mail


def tickets(db):
    with db.transaction() as s:
        return s.scalars(select(Ticket).order_by(Ticket.number)).unique().all()


def messages(db, ticket_id):
    with db.transaction() as s:
        return (
            s.scalars(
                select(Message).where(Message.ticket_id == ticket_id).order_by(Message.created_at)
            )
            .unique()
            .all()
        )


def sent(relay):
    return [message_from_bytes(m["raw"], policy=policy.default) for m in relay[0].messages]


def test_rcpt_is_checked_and_size_is_advertised(mail_server):
    with smtplib.SMTP("127.0.0.1", mail_server.port) as client:
        code, _features = client.ehlo("client.example.org")
        assert code == 250
        assert client.has_extn("size")
        assert int(client.esmtp_features["size"]) == mail_server.settings.max_message_bytes
        client.mail("alice@example.org")
        assert client.rcpt("someone@else.example.com")[0] == 550
        code, text = client.rcpt("sales@help.example.com")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt(SUPPORT)[0] == 250
        assert client.rcpt("support+t1-abc@help.example.com")[0] == 250
        assert client.rcpt("SUPPORT@HELP.EXAMPLE.COM")[0] == 250


def test_oversized_mail_is_552_5_3_4(mail_server):
    big = make_mail(body="x" * 100)
    big.add_attachment(
        os.urandom(mail_server.settings.max_message_bytes),
        maintype="application",
        subtype="octet-stream",
        filename="big.bin",
    )
    # Undeclared size: refused after DATA.
    with smtplib.SMTP("127.0.0.1", mail_server.port) as client:
        client.ehlo()
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt(SUPPORT)[0] == 250
        code, text = client.data(big.as_bytes(policy=policy.SMTP))
    assert code == 552
    assert text.startswith(b"5.3.4")
    # Declared size: refused at MAIL FROM.
    with smtplib.SMTP("127.0.0.1", mail_server.port) as client:
        client.ehlo()
        code, text = client.mail(
            "alice@example.org", [f"SIZE={mail_server.settings.max_message_bytes + 1}"]
        )
    assert code == 552
    assert text.startswith(b"5.3.4")


def test_a_malformed_sender_address_is_refused_as_such_not_deferred(mail_server):
    with smtplib.SMTP("127.0.0.1", mail_server.port) as client:
        client.ehlo()
        for malformed in ("a@", "<a@[>"):
            code, _ = client.docmd(f"MAIL FROM:{malformed}")
            assert code == 553  # aiosmtpd alone raises here: a 451 (try again) for good
        assert client.mail("alice@example.org")[0] == 250
        code, _ = client.docmd("RCPT TO:<support@[>")
        assert code == 553


def test_new_ticket_then_threaded_reply_and_agent_answer(mail_server, db, relay, make_caller):
    first = make_mail()
    reply_to_us = mail_server.send(first)
    assert reply_to_us == {}
    mail_server.process()
    [ticket] = tickets(db)
    assert ticket.title == "Printer on fire"
    assert ticket.channel == "email"
    assert ticket.customer.email == "alice@example.org"
    assert ticket.customer.name == "Alice Example"
    [ack] = sent(relay)
    assert ack["To"].addresses[0].addr_spec == "alice@example.org"
    assert ack["Subject"] == f"Re: Printer on fire [#{ticket.number}]"
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["In-Reply-To"] == first["Message-ID"]
    assert ack["Reply-To"].addresses[0].addr_spec.startswith(f"support+t{ticket.number}-")

    # The customer answers the acknowledgment: threaded by In-Reply-To.
    follow = make_mail(
        subject=f"Re: Printer on fire [#{ticket.number}]",
        body="It is still burning.\n\nOn Thu, Alice wrote:\n> old text",
        In_Reply_To=ack["Message-ID"],
        References=ack["Message-ID"],
    )
    mail_server.send(follow)
    mail_server.process()
    assert len(tickets(db)) == 1
    msgs = messages(db, ticket.id)
    assert [m.kind for m in msgs] == ["customer", "customer"]
    assert msgs[1].body_text == "It is still burning."
    assert len(sent(relay)) == 1  # no acknowledgment for a follow-up

    # An agent answers through the API: mailed to the customer, chained to their mail.
    agent = make_caller("agent", "agent@help.example.com", "Alan")
    r = agent.post(
        f"/api/v1/tickets/{ticket.id}/messages",
        json={"body": "**Water**, now.", "format": "markdown"},
    )
    assert r.status_code == 201
    mail_server.process()
    answer = sent(relay)[-1]
    assert answer["Subject"] == f"Re: Printer on fire [#{ticket.number}]"
    assert answer["In-Reply-To"] == follow["Message-ID"]
    assert first["Message-ID"] in answer["References"]
    assert answer["Auto-Submitted"] is None
    assert answer.get_body(("plain",)).get_content().strip() == "**Water**, now."
    assert "<strong>Water</strong>" in answer.get_body(("html",)).get_content()
    assert r.get_json()["id"]
    stored = messages(db, ticket.id)[-1]
    assert stored.email_message_id == answer["Message-ID"]

    # The customer answers the agent's mail through its Reply-To address only.
    tag_address = answer["Reply-To"].addresses[0].addr_spec
    by_address = make_mail(subject="thanks", body="That worked.", to=tag_address)
    mail_server.send(by_address, to=[tag_address])
    mail_server.process()
    assert len(tickets(db)) == 1
    assert messages(db, ticket.id)[-1].body_text == "That worked."


def test_stranger_with_subject_number_opens_a_new_ticket(mail_server, db):
    mail_server.send(make_mail())
    mail_server.process()
    [ticket] = tickets(db)
    spoof = make_mail(
        subject=f"Re: [#{ticket.number}] give me the data", sender="mallory@evil.example"
    )
    mail_server.send(spoof)
    mail_server.process()
    assert len(tickets(db)) == 2
    assert len(messages(db, ticket.id)) == 1
    # The ticket's own customer may use the number.
    mail_server.send(make_mail(subject=f"[#{ticket.number}] more"))
    mail_server.process()
    assert len(messages(db, ticket.id)) == 2


def test_reply_address_issued_to_someone_else_does_not_thread(mail_server, db, relay):
    mail_server.send(make_mail())
    mail_server.process()
    [_ticket] = tickets(db)
    ack = sent(relay)[0]
    address = ack["Reply-To"].addresses[0].addr_spec
    mail_server.send(
        make_mail(subject="hi", sender="mallory@evil.example", to=address), to=[address]
    )
    mail_server.process()
    assert len(tickets(db)) == 2


def test_cc_participant_may_thread_by_number(mail_server, db):
    msg = make_mail()
    msg["Cc"] = "Bob <bob@example.org>"
    mail_server.send(msg)
    mail_server.process()
    [ticket] = tickets(db)
    mail_server.send(make_mail(subject=f"[#{ticket.number}] me too", sender="bob@example.org"))
    mail_server.process()
    assert len(tickets(db)) == 1
    assert len(messages(db, ticket.id)) == 2


def test_duplicate_delivery_is_stored_once(mail_server, db, relay):
    msg = make_mail()
    mail_server.send(msg)
    mail_server.send(msg)
    mail_server.process()
    assert len(tickets(db)) == 1
    with db.transaction() as s:
        states = sorted(s.scalars(select(InboundMail.state)))
    assert states == ["duplicate", "processed"]
    assert len(sent(relay)) == 1


def test_solved_reopens_closed_opens_follow_up(mail_server, db, admin):
    first = make_mail()
    mail_server.send(first)
    mail_server.process()
    [ticket] = tickets(db)
    admin.patch(f"/api/v1/tickets/{ticket.id}", json={"status": "solved"})
    mail_server.send(make_mail(subject="Re: Printer on fire", In_Reply_To=first["Message-ID"]))
    mail_server.process()
    assert admin.get(f"/api/v1/tickets/{ticket.id}").get_json()["status"] == "open"
    admin.patch(f"/api/v1/tickets/{ticket.id}", json={"status": "closed"})
    mail_server.send(make_mail(subject="Re: Printer on fire", In_Reply_To=first["Message-ID"]))
    mail_server.process()
    all_tickets = tickets(db)
    assert len(all_tickets) == 2
    follow_up = admin.get(f"/api/v1/tickets/{all_tickets[1].id}").get_json()
    assert follow_up["metadata"] == {"follow_up_of": str(ticket.number)}
    assert admin.get(f"/api/v1/tickets/{ticket.id}").get_json()["status"] == "closed"


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto_Submitted": "auto-replied"},
        {"X_Autoreply": "yes"},
        {"X_Autorespond": "yes"},
        {"Precedence": "bulk", "Subject_": "Out of Office: back Monday"},
    ],
)
def test_auto_replies_never_open_tickets_nor_get_answers(mail_server, db, relay, headers):
    subject = headers.pop("Subject_", "Automatic reply: away")
    mail_server.send(make_mail(subject=subject, **headers))
    mail_server.process()
    assert tickets(db) == []
    assert relay[0].messages == []


def test_auto_reply_on_a_known_ticket_is_a_system_message(mail_server, db, relay):
    first = make_mail()
    mail_server.send(first)
    mail_server.process()
    ack = sent(relay)[0]
    mail_server.send(
        make_mail(
            subject="Out of office", In_Reply_To=ack["Message-ID"], Auto_Submitted="auto-replied"
        )
    )
    mail_server.process()
    [ticket] = tickets(db)
    assert [m.kind for m in messages(db, ticket.id)] == ["customer", "system"]
    assert len(sent(relay)) == 1


def test_no_automatic_mail_to_noreply_lists_and_daemons(mail_server, db, relay):
    mail_server.send(make_mail(sender="no-reply@shop.example"))
    mail_server.send(make_mail(sender="news@list.example", List_Id="<news.list.example>"))
    mail_server.send(make_mail(body="hi"), mail_from="")
    mail_server.process()
    assert len(tickets(db)) == 3
    assert relay[0].messages == []


def test_automatic_mail_is_rate_limited_per_sender(mail_server, db, relay):
    for i in range(7):
        mail_server.send(make_mail(subject=f"question {i}"))
    mail_server.process()
    assert len(tickets(db)) == 7
    assert len(relay[0].messages) == 5
    with db.transaction() as s:
        assert s.scalar(select(func.count()).where(OutboundMail.state == "suppressed")) == 2


def test_bounce_is_attached_to_the_ticket_whose_mail_bounced(mail_server, db, relay):
    mail_server.send(make_mail())
    mail_server.process()
    ack = sent(relay)[0]
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        f"To: {SUPPORT}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.org')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        "Final-Recipient: rfc822; alice@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {ack['Message-ID']}\r\nSubject: {ack['Subject']}\r\n"
        "--B--\r\n"
    ).encode()
    mail_server.send(dsn, mail_from="")
    mail_server.process()
    [ticket] = tickets(db)
    kinds = [(m.kind, m.body_text) for m in messages(db, ticket.id)]
    assert kinds[-1][0] == "system"
    assert "5.1.1" in kinds[-1][1]
    assert len(sent(relay)) == 1
    # A bounce for mail we never sent opens nothing.
    mail_server.send(dsn.replace(ack["Message-ID"].encode(), b"<unknown@x>"), mail_from="")
    mail_server.process()
    assert len(tickets(db)) == 1


def test_attachments_and_inline_images_are_kept_byte_for_byte(mail_server, db, tmp_path):
    msg = make_mail(body="see attached")
    msg.add_alternative('<p>see <img src="cid:logo@x"></p>', subtype="html")
    html_part = msg.get_payload()[1]
    logo = opaque_bytes(2048, "logo")
    html_part.add_related(logo, maintype="image", subtype="png", cid="<logo@x>")
    big = opaque_bytes(10 * 1024 * 1024, "dump")
    msg.add_attachment(big, maintype="application", subtype="octet-stream", filename="dump.bin")
    mail_server.send(msg)
    mail_server.process()
    [_ticket] = tickets(db)
    storage = LocalStorage(mail_server.settings.data_dir / "attachments")
    with db.transaction() as s:
        rows = {a.filename: a for a in s.scalars(select(Attachment))}
    assert rows["dump.bin"].sha256 == hashlib.sha256(big).hexdigest()
    assert rows["dump.bin"].size == len(big)
    with storage.open(rows["dump.bin"].sha256) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == hashlib.sha256(big).hexdigest()
    inline = [a for a in rows.values() if a.inline]
    assert [a.sha256 for a in inline] == [hashlib.sha256(logo).hexdigest()]


def test_unreachable_database_answers_451(mail_server, db, monkeypatch):
    from gateway.inbound import store

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("adapters.email.smtp_server.accept_many", broken)
    with (
        pytest.raises(smtplib.SMTPDataError) as info,
        smtplib.SMTP("127.0.0.1", mail_server.port) as client,
    ):
        client.send_message(make_mail(), to_addrs=[SUPPORT])
    assert info.value.smtp_code == 451
    assert info.value.smtp_error.startswith(b"4.3.0")
    assert store.accept_many is not broken


def test_raw_message_is_retrievable_by_admins(mail_server, db, admin, agent):
    raw = make_mail().as_bytes(policy=policy.SMTP)
    mail_server.send(raw, mail_from="alice@example.org")
    mail_server.process()
    [ticket] = tickets(db)
    [first] = messages(db, ticket.id)
    r = admin.get(f"/api/v1/messages/{first.id}/raw")
    assert r.status_code == 200
    assert r.mimetype == "message/rfc822"
    assert r.data == raw
    assert agent.get(f"/api/v1/messages/{first.id}/raw").status_code == 403


def test_charsets_and_encoded_subjects(mail_server, db):
    raw = (
        (
            "From: =?koi8-r?B?98HT0Q==?= <vasya@example.ru>\r\n"
            f"To: {SUPPORT}\r\n"
            "Subject: =?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=\r\n"
            "Message-ID: <koi@example.ru>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=koi8-r\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + "Привет, мир".encode("koi8-r")
        + b"\r\n"
    )
    mail_server.send(raw, mail_from="vasya@example.ru")
    mail_server.process()
    [ticket] = tickets(db)
    assert ticket.title == "テスト"
    assert ticket.customer.name == "Вася"
    assert messages(db, ticket.id)[0].body_text == "Привет, мир"


def test_redelivered_ingest_task_changes_nothing(mail_server, db, relay):
    mail_server.send(make_mail())
    mail_server.process()
    from gateway.events import OutboxTask
    from workers.handlers import TaskContext, ingest
    from workers.outbox import Job

    with db.transaction() as s:
        inbound_id = s.scalar(select(InboundMail.id))
        task_id = s.scalar(select(OutboxTask.id).where(OutboxTask.kind == "inbound.ingest"))
    job = Job(db, task_id, attempts=2)
    ingest(TaskContext.create(mail_server.settings, db), {"inbound_id": str(inbound_id)}, job)
    mail_server.process()
    assert len(tickets(db)) == 1
    assert len(sent(relay)) == 1


def test_header_injection_through_title_is_impossible(mail_server, db, admin, relay):
    mail_server.send(make_mail())
    mail_server.process()
    [ticket] = tickets(db)
    admin.patch(
        f"/api/v1/tickets/{ticket.id}", json={"title": "hi\r\nBcc: victim@example.net\r\nX-Evil: 1"}
    )
    admin.post(f"/api/v1/tickets/{ticket.id}/messages", json={"body": "answer"})
    mail_server.process()
    answer = sent(relay)[-1]
    assert answer["Bcc"] is None and answer["X-Evil"] is None
    assert relay[0].messages[-1]["to"] == ["alice@example.org"]
