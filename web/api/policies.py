"""/api/v1/policies/deletion (admin)."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy.orm import Session

from gateway.permissions import Principal, require_admin
from gateway.policies.schemas import DeletionPolicyIn, DeletionPolicyOut
from gateway.policies.services import (
    deletion_policy_out,
    get_deletion_policy,
    update_deletion_policy,
)
from web.spec import endpoint

bp = Blueprint("policies", __name__)


@bp.get("/policies/deletion")
@endpoint(summary="The deletion policy (admin)", tag="policies", response=DeletionPolicyOut)
def show(session: Session, principal: Principal):
    require_admin(principal)
    return deletion_policy_out(get_deletion_policy(session))


@bp.put("/policies/deletion")
@endpoint(
    summary="Replace the deletion policy (admin)",
    tag="policies",
    body=DeletionPolicyIn,
    response=DeletionPolicyOut,
)
def replace(session: Session, principal: Principal, body: DeletionPolicyIn):
    return deletion_policy_out(update_deletion_policy(session, principal, body))
