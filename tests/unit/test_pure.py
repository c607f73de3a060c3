from __future__ import annotations

import pytest

from gateway.config import Settings, load_settings
from gateway.conversations.rendering import html_to_text, markdown_to_html, sanitise_html
from gateway.errors import ConfigurationError, InvalidTransition, ValidationFailed
from gateway.pagination import decode_cursor, encode_cursor
from gateway.tickets.workflow import STATUSES, TRANSITIONS, check_transition


def test_closed_is_terminal_and_new_is_initial_only():
    assert TRANSITIONS["closed"] == frozenset()
    assert all("new" not in targets for targets in TRANSITIONS.values())
    with pytest.raises(InvalidTransition) as info:
        check_transition("solved", "pending")
    assert info.value.data["allowed"] == ["closed", "open"]
    check_transition("open", "open")  # no change is no transition
    assert set(TRANSITIONS) == set(STATUSES)


def test_cursor_roundtrip_and_tampering():
    c = encode_cursor("tickets:-updated_at", "2026-01-01T00:00:00+00:00", "abc")
    assert decode_cursor(c, kinds=("tickets:-updated_at",))[1:] == [
        "2026-01-01T00:00:00+00:00",
        "abc",
    ]
    with pytest.raises(ValidationFailed):
        decode_cursor(c, kinds=("tickets:number",))
    for bad in ("", "!!!", "bnVsbA", "W10"):
        with pytest.raises(ValidationFailed):
            decode_cursor(bad, kinds=("tickets:number",))


def test_sanitiser_strips_active_content():
    dirty = (
        '<div style="x" onmouseover="a()"><script>b()</script><iframe src="x"></iframe>'
        '<a href="javascript:c()">l</a><img src="cid:logo@x"><p>ok</p></div>'
    )
    clean = sanitise_html(dirty)
    for bad in ("script", "iframe", "onmouseover", "javascript:", "style="):
        assert bad not in clean
    assert 'src="cid:logo@x"' in clean
    assert "<p>ok</p>" in clean


def test_markdown_escapes_raw_html():
    html = markdown_to_html("<b>raw</b> and **bold**")
    assert "<b>raw</b>" not in html
    assert "<strong>bold</strong>" in html


def test_html_to_text_keeps_structure():
    text = html_to_text(
        "<html><head><style>p{}</style></head><body><p>One &amp; two</p>"
        "<ul><li>a</li><li>b</li></ul><p>Three</p></body></html>"
    )
    assert text == "One & two\n\n- a\n- b\n\nThree"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SUPPORTGATE_API_PORT": "http"}, "SUPPORTGATE_API_PORT"),
        ({"SUPPORTGATE_API_PORT": "70000"}, "SUPPORTGATE_API_PORT"),
        ({"SUPPORTGATE_DATABASE_URL": "mysql://x"}, "SUPPORTGATE_DATABASE_URL"),
        ({"SUPPORTGATE_REDIS_URL": "http://x"}, "SUPPORTGATE_REDIS_URL"),
        ({"SUPPORTGATE_SUPPORT_ADDRESS": "support+x@example.com"}, "SUPPORTGATE_SUPPORT_ADDRESS"),
        ({"SUPPORTGATE_LOG_LEVEL": "LOUD"}, "SUPPORTGATE_LOG_LEVEL"),
    ],
)
def test_invalid_settings_give_one_actionable_line(monkeypatch, env, needle):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_defaults_are_the_embedded_mode(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None)
    assert settings.embedded
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.api_port == 8000 and settings.smtp_port == 2525
    assert settings.max_message_bytes == 26214400
    assert Settings(database_url="postgresql://u@h/d", _env_file=None).database_url == (
        "postgresql+psycopg://u@h/d"
    )


def test_dotenv_is_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SUPPORTGATE_API_PORT=8111\n")
    assert load_settings().api_port == 8111


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url):
    with pytest.raises(ConfigurationError):
        load_settings(database_url=url, _env_file=None)
