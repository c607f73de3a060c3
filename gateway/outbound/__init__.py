"""Outgoing mail: what to send, composed once, sent by a task.

Each mail is an :class:`~gateway.outbound.models.OutboundMail` row written in
the transaction that decided to send it, with its final bytes and its own
Message-ID. The sending task moves it ``pending → sending → sent`` (or
``failed``/``suppressed``); see ``workers``.
"""
