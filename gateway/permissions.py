"""Who may do what: every authorisation decision of the domain lives here.

Roles:

    admin     everything
    agent     every ticket and message; no user, token or policy administration
    customer  only tickets where they are the customer; never internal notes,
              never another customer's data

A ticket the caller may not see is reported as NotFound, exactly like one that
does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select

from gateway.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from gateway.tickets.models import Ticket
    from gateway.users.models import User


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a unit of work."""

    user_id: uuid.UUID | None
    role: str
    email: str = ""
    name: str = ""

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(user_id=user.id, role=user.role, email=user.email, name=user.name)

    @classmethod
    def system(cls) -> Principal:
        """The gateway itself (mail ingestion, policy jobs)."""
        return cls(user_id=None, role="system", email="", name="Supportgate")

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "system")

    @property
    def is_staff(self) -> bool:
        return self.role in ("admin", "agent", "system")

    @property
    def is_customer(self) -> bool:
        return self.role == "customer"

    def as_actor(self) -> dict[str, Any] | None:
        if self.user_id is None:
            return None
        return {"id": str(self.user_id), "email": self.email, "name": self.name, "role": self.role}


def require_staff(principal: Principal) -> None:
    if not principal.is_staff:
        raise Forbidden("this needs an agent or admin")


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this needs an admin")


def can_see_ticket(principal: Principal, ticket: Ticket) -> bool:
    if principal.is_staff:
        return True
    return (
        principal.is_customer
        and ticket.customer_id == principal.user_id
        and ticket.deleted_at is None
    )


def check_ticket_visible(principal: Principal, ticket: Ticket | None) -> Ticket:
    """Return the ticket or raise NotFound when the caller may not see it."""
    if ticket is None or not can_see_ticket(principal, ticket):
        raise NotFound("no such ticket")
    return ticket


def scope_tickets(stmt: Select[Any], principal: Principal, customer_id: Any = None) -> Select[Any]:
    """Narrow a ticket query to what the caller may see.

    ``customer_id`` stands for the caller's id when given (a bind parameter, in
    a statement built once and run for many customers)."""
    from gateway.tickets.models import Ticket

    if principal.is_staff:
        return stmt
    owner = principal.user_id if customer_id is None else customer_id
    return stmt.where(Ticket.customer_id == owner, Ticket.deleted_at.is_(None))


def can_see_internal(principal: Principal) -> bool:
    return principal.is_staff
