"""Who may call the API and who may see personal contact data: API keys mapped to roles.

Keys come from the environment (``RW_API__KEYS='{"<key>": "operations"}'``), never from files in
the repository. Roles are ordered by what they may see; personal contact data (phone, email, member
id) goes only to the roles listed in ``contact_roles``, because a recall needs to reach customers but
a dashboard or a quality analysis never does.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

ROLES = ("viewer", "analyst", "quality", "quality_manager", "operations", "admin")

_WORK_ON_CASES = frozenset(
    {"assess", "acknowledge", "take", "score", "evidence", "add_task", "complete_task"}
)
_DECIDE_CASES = frozenset(
    {"open", "assign", "decide", "launch_campaign", "close", "reassess", "reopen", "silence"}
)
CASE_COMMANDS: dict[str, frozenset[str]] = {
    "viewer": frozenset(),
    "operations": frozenset(),
    "analyst": _WORK_ON_CASES,
    "quality": _WORK_ON_CASES,
    "quality_manager": _WORK_ON_CASES | _DECIDE_CASES,
    "admin": _WORK_ON_CASES | _DECIDE_CASES,
}
"""Which case commands each role may send. Analysts (and the quality team) investigate, score and
keep tasks moving; deciding, assigning, silencing and launching or closing a recall is a quality
manager's call. Viewers and operations read cases; only analysts and up read the full audit trail."""
AUDIT_ROLES = frozenset({"analyst", "quality", "quality_manager", "admin"})


class UnknownKey(Exception):
    """A key was given but is not one of ours."""


@dataclass(frozen=True)
class AccessPolicy:
    keys: Mapping[str, str] = field(default_factory=dict)  # key -> role
    anonymous_role: str | None = "viewer"  # None: every request needs a key
    contact_roles: frozenset[str] = frozenset({"operations", "admin"})

    def __post_init__(self) -> None:
        roles = {*self.keys.values(), *self.contact_roles}
        if self.anonymous_role is not None:
            roles.add(self.anonymous_role)
        unknown = sorted(roles - set(ROLES))
        if unknown:
            raise ValueError(f"unknown roles {unknown}; roles are {list(ROLES)}")
        if self.anonymous_role in self.contact_roles:
            raise ValueError("anonymous callers must never see contact data")

    def role_for(self, key: str | None) -> str | None:
        """The caller's role; None if a key is required and missing. Raises UnknownKey for a bad key.

        >>> policy = AccessPolicy(keys={"k-ops": "operations"}, anonymous_role=None)
        >>> policy.role_for("k-ops"), policy.role_for(None)
        ('operations', None)
        """
        if not key:
            return self.anonymous_role
        for known, role in self.keys.items():
            # Constant-time comparison: response timing must not reveal how much of a key matched.
            if hmac.compare_digest(known.encode(), key.encode()):
                return role
        raise UnknownKey

    def sees_contacts(self, role: str | None) -> bool:
        return role is not None and role in self.contact_roles

    def may_command(self, role: str | None, kind: str) -> bool:
        """Whether ``role`` may send the case command ``kind``.

        >>> AccessPolicy().may_command("analyst", "score"), AccessPolicy().may_command("analyst", "decide")
        (True, False)
        """
        return role is not None and kind in CASE_COMMANDS.get(role, frozenset())

    def reads_audit(self, role: str | None) -> bool:
        return role in AUDIT_ROLES
