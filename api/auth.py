"""The caller's role, from the ``X-API-Key`` header (or ``Authorization: Bearer <key>``)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request

from core.access import AccessPolicy, UnknownKey


def role_dependency(policy: AccessPolicy) -> Callable[[Request], str]:
    def caller_role(request: Request) -> str:
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        try:
            role = policy.role_for(key)
        except UnknownKey:
            raise HTTPException(status_code=401, detail="unknown API key") from None
        if role is None:
            raise HTTPException(
                status_code=401,
                detail="an API key is required (X-API-Key header)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return role

    return caller_role
