"""The deletion policy (one row, id 1)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from gateway.audit import log_action
from gateway.db import utcnow
from gateway.permissions import Principal, require_admin
from gateway.policies.models import DeletionPolicy
from gateway.policies.schemas import DeletionPolicyIn

POLICY_ID = 1


def get_deletion_policy(session: Session) -> DeletionPolicy:
    policy = session.get(DeletionPolicy, POLICY_ID)
    if policy is None:
        # The migration seeds this row; a database emptied by hand gets it back.
        policy = DeletionPolicy(id=POLICY_ID, require_soft_delete_before_purge=True)
        session.add(policy)
        session.flush()
    return policy


def update_deletion_policy(
    session: Session, principal: Principal, data: DeletionPolicyIn
) -> DeletionPolicy:
    require_admin(principal)
    policy = get_deletion_policy(session)
    log_action(
        session,
        principal,
        "policy.deletion.updated",
        "policy",
        "deletion",
        old=deletion_policy_out(policy),
        new=data.model_dump(),
    )
    policy.purge_deleted_after_days = data.purge_deleted_after_days
    policy.archive_closed_after_days = data.archive_closed_after_days
    policy.require_soft_delete_before_purge = data.require_soft_delete_before_purge
    policy.updated_at = utcnow()
    session.flush()
    return policy


def deletion_policy_out(policy: DeletionPolicy) -> dict[str, Any]:
    return {
        "purge_deleted_after_days": policy.purge_deleted_after_days,
        "archive_closed_after_days": policy.archive_closed_after_days,
        "require_soft_delete_before_purge": policy.require_soft_delete_before_purge,
        "updated_at": policy.updated_at.isoformat(),
    }
