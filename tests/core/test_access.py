from __future__ import annotations

import pytest

from core.access import AccessPolicy, UnknownKey


def test_keys_roles_and_contacts() -> None:
    policy = AccessPolicy(keys={"k1": "operations", "k2": "viewer"}, anonymous_role="viewer")
    assert policy.role_for(None) == "viewer"
    assert policy.role_for("k1") == "operations"
    with pytest.raises(UnknownKey):
        policy.role_for("k3")
    assert policy.sees_contacts("operations") and not policy.sees_contacts("viewer")
    assert not policy.sees_contacts(None)


def test_policy_refuses_unknown_roles_and_anonymous_contact_access() -> None:
    with pytest.raises(ValueError, match="unknown roles"):
        AccessPolicy(keys={"k": "superuser"})
    with pytest.raises(ValueError, match="anonymous"):
        AccessPolicy(anonymous_role="operations")
    assert AccessPolicy(anonymous_role=None).role_for("") is None
