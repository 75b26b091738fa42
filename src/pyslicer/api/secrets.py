"""Secrets: list (never their values), create, update, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from starlette.responses import Response

from pyslicer.api.dependencies import DaemonDep, body_schema, json_body_of
from pyslicer.api.errors import ERROR_RESPONSES
from pyslicer.api.schemas import ErrorBody, SecretInfo
from pyslicer.daemon import MAX_SECRET_BYTES, NewSecret, SecretChange
from pyslicer.daemon import SecretInfo as StoredSecret

router = APIRouter(responses=ERROR_RESPONSES)
# A secret's value arrives as base64 (4/3 of its size) inside JSON: room for the largest, and its fields.
MAX_SECRET_BODY = MAX_SECRET_BYTES * 4 // 3 + 64 * 1024
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such secret"}}
STORE_FULL: dict[int | str, dict[str, Any]] = {503: {"model": ErrorBody, "description": "the secret store is full"}}


def secret_info(secret: StoredSecret) -> SecretInfo:
    return SecretInfo(
        name=secret.name,
        size=secret.size,
        permissions=secret.permissions,
        uid=secret.uid,
        gid=secret.gid,
        modified_at=secret.modified_at,
        mod_time=secret.modified_at,
    )


@router.get("/secrets", summary="Stored secrets, without their values")
async def list_secrets(daemon: DaemonDep) -> list[SecretInfo]:
    return [secret_info(secret) for secret in await daemon.list_secrets()]


@router.post(
    "/secrets",
    status_code=201,
    summary="Store a secret and sync it into the running VMs granted it",
    openapi_extra=body_schema(NewSecret),
    responses={409: {"model": ErrorBody, "description": "a secret of that name exists"}, **STORE_FULL},
)
async def create_secret(
    daemon: DaemonDep, body: Annotated[NewSecret, json_body_of(NewSecret, MAX_SECRET_BODY)]
) -> SecretInfo:
    return secret_info(await daemon.create_secret(body))


@router.patch(
    "/secrets/{name}",
    summary="Change a secret's value, owner or mode (an empty data keeps the value)",
    openapi_extra=body_schema(SecretChange),
    responses={**NOT_FOUND, **STORE_FULL},
)
async def update_secret(
    daemon: DaemonDep, name: str, body: Annotated[SecretChange, json_body_of(SecretChange, MAX_SECRET_BODY)]
) -> SecretInfo:
    return secret_info(await daemon.update_secret(name, body))


@router.delete(
    "/secrets/{name}",
    summary="Remove a secret, from the store and from the VMs",
    response_class=Response,
    responses={200: {"description": "deleted (no body)"}, **NOT_FOUND},
)
async def delete_secret(daemon: DaemonDep, name: str) -> Response:
    await daemon.delete_secret(name)
    return Response(status_code=200)
