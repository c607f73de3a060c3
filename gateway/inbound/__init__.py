"""Inbound mail: from raw bytes accepted at the edge to tickets and messages.

store.py      accept_many() / accept_raw(): the durable first step (before any 250)
message.py    InboundMessage: the normalised, parsed form (built by
              adapters/email/parsing.py, never raising)
models.py     inbound_mail rows (raw bytes + processing state), IMAP checkpoints
"""
