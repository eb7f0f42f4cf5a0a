"""The IAM and STS actions, with real semantics: every code goes through the core.

Each action takes the validated parameters and answers its result members (or None for
actions without output); refusals are `AwsError`s. The core's errors are translated to
AWS's codes and statuses in one table (`translate`).

Users are implicit, as everywhere in foblab: a user exists while it holds a device, and an
access key may act on every user, unless it is bound to one (`aws-keys create --user`).
Where AWS falls back to the calling user (UserName left out), foblab uses the bound user,
else the device's assigned user (DeactivateMFADevice, GetMFADevice) or every user
(ListMFADevices).

`authorize` runs before every action, with AWS's rules for the two scopes foblab has:
session credentials obtained without an MFA code may call no IAM action (AWS: "cannot call
any IAM API operations unless MFA authentication information is included"), and a key
bound to a user may manage only that user's MFA devices, as AWS's self-service MFA policy
allows (create and list virtual devices; enable, resync, deactivate, get and list the
user's own; delete and tag devices not assigned to someone else).
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import segno

from protocol import Hash, Kind
from validator import errors as core_errors
from validator.aws import params as p
from validator.aws.errors import (
    AwsError,
    access_denied_mfa,
    no_such_entity,
    service_unavailable,
    validation_error,
)
from validator.aws.store import AwsStore, VirtualDevice
from validator.aws.xml import Members, blob, boolean, iso8601
from validator.service import TokenInfo, Validator

AWS_SEED_BYTES = 40  # AWS's virtual-device seeds are 64 base32 characters
MAX_TAGS = 50
DEFAULT_SESSION_SECONDS = 43_200


@dataclass(frozen=True, slots=True)
class Caller:
    """Who signed the request: a long-term key, or session credentials from STS. `mfa`:
    the session was obtained with an MFA code (True for a long-term key). `user`: the one
    user the key (or the session's parent key) is bound to, None for any user."""

    access_key_id: str | None
    session: bool = False
    mfa: bool = True
    user: str | None = None


@dataclass
class Context:
    validator: Validator
    store: AwsStore
    account_id: str
    now: float
    caller: Caller


Handler = Callable[[Context, p.Params], "Members | None"]


def translate(exc: core_errors.ValidatorError, serial: str | None = None,
              max_devices: int = 8) -> AwsError:
    """The core's refusal as AWS's error."""
    where = f" {serial}" if serial else ""
    if isinstance(exc, core_errors.DatabaseUnavailable):
        return service_unavailable()
    if isinstance(exc, core_errors.UnknownSerial):
        return no_such_entity(f"MFA device with serial number{where} does not exist.")
    if isinstance(exc, core_errors.AlreadyAssigned):
        return AwsError("EntityAlreadyExists", "MFA Device is already in use.", 409)
    if isinstance(exc, core_errors.DuplicateSerial):
        return AwsError("EntityAlreadyExists", "MFADevice entity at the same path and name "
                        "already exists.", 409)
    if isinstance(exc, core_errors.DeviceLimit):
        return AwsError("LimitExceeded", "Cannot exceed quota for MFADevicesPerUser: "
                        f"{max_devices}", 409)
    if isinstance(exc, core_errors.InvalidAuthenticationCode):
        detail = ""
        if exc.reason == "locked":
            detail = (" The device is locked after repeated failures; try again in "
                      f"{max(1, round(exc.retry_after))} seconds.")
        return AwsError("InvalidAuthenticationCode",
                        "Authentication code for device is not valid." + detail, 403)
    if isinstance(exc, core_errors.NotAssigned):
        return no_such_entity(f"MFA device{where} is not assigned to the user.")
    if isinstance(exc, core_errors.DeleteConflict):
        return AwsError("DeleteConflict", "MFA VirtualDevice in use. Must deactivate first.",
                        409)
    if isinstance(exc, core_errors.Conflict):
        return AwsError("ConcurrentModification", exc.message, 409)
    if isinstance(exc, core_errors.InvalidUser | core_errors.InvalidParameter):
        return AwsError("ValidationError", exc.message, 400)
    return AwsError("InvalidInput", exc.message, 400)


def _user_arn(ctx: Context, user: str) -> str:
    return f"arn:aws:iam::{ctx.account_id}:user/{user}"


def _user_id(user: str) -> str:
    # IAM user ids are opaque; a stable one per implicit user, shaped like AWS's (AIDA...).
    digest = base64.b32encode(hashlib.sha256(b"foblab-user\x00" + user.encode()).digest())
    return "AIDA" + digest.decode()[:17]


def _user_members(ctx: Context, info: TokenInfo) -> Members:
    assert info.user is not None
    created = info.assigned_at if info.assigned_at is not None else info.created
    return [("Path", "/"), ("UserName", info.user), ("UserId", _user_id(info.user)),
            ("Arn", _user_arn(ctx, info.user)), ("CreateDate", iso8601(created))]


def _tag_members(tags: list[tuple[str, str]]) -> list[tuple[str, object]]:
    return [("member", [("Key", k), ("Value", v)]) for k, v in tags]


def _token(ctx: Context, serial: str) -> TokenInfo:
    try:
        return ctx.validator.get_token(serial, now=ctx.now)
    except core_errors.UnknownSerial as exc:
        raise translate(exc, serial) from None


def _virtual(ctx: Context, serial: str) -> VirtualDevice:
    device = ctx.store.get_virtual(serial)
    if device is None:
        raise no_such_entity(f"VirtualMFADevice with serial number {serial} does not exist.")
    return device


def _page(items: list[Members], marker: str | None, max_items: int,
          key: str, result: Members) -> Members:
    """Offset paging: `items` is the whole ordered list, `marker` the offset as text."""
    try:
        start = int(marker) if marker is not None else 0
    except ValueError:
        raise validation_error("marker", "Member must be a Marker returned by a previous "
                               "call") from None
    chunk = items[start:start + max_items]
    more = start + max_items < len(items)
    result.append((key, [("member", m) for m in chunk]))
    result.append(("IsTruncated", boolean(more)))
    if more:
        result.append(("Marker", p.encode_marker(str(start + max_items))))
    return result


# -- IAM -------------------------------------------------------------------------------

def create_virtual_mfa_device(ctx: Context, params: p.Params) -> Members:
    name = params.required("VirtualMFADeviceName")
    if not p.DEVICE_NAME.fullmatch(name):
        raise validation_error("virtualMFADeviceName", "Member must be 1-226 characters of "
                               "[\\w+=,.@-]")
    path = params.optional("Path") or "/"
    if len(path) > 512 or not p.PATH.fullmatch(path):
        raise validation_error("path", "Member must be '/' or start and end with '/', "
                               "1-512 printable characters")
    tags = params.tags()
    serial = f"arn:aws:iam::{ctx.account_id}:mfa{path}{name}"
    if not p.SERIAL.fullmatch(serial):
        raise AwsError("InvalidInput", "The path and name make a serial number (ARN) that is "
                       "not 9-256 characters of [\\w+=/:,.@-].", 400)
    seed = secrets.token_bytes(AWS_SEED_BYTES)
    base32 = base64.b32encode(seed).decode("ascii").rstrip("=")
    try:
        ctx.validator.register_token(serial, seed, kind=Kind.TOTP, digits=6, hash=Hash.SHA1,
                                     period=30, now=ctx.now)
    except core_errors.ValidatorError as exc:
        raise translate(exc, serial) from None
    try:
        ctx.store.add_virtual(VirtualDevice(serial, name, path, ctx.now), tags)
    except BaseException:
        ctx.validator.delete_token(serial, now=ctx.now)  # leave nothing half-created
        raise
    # AWS's URI: otpauth://totp/$virtualMFADeviceName@$AccountName?secret=$Base32String
    uri = f"otpauth://totp/{quote(name, safe='')}@{ctx.account_id}?secret={base32}"
    png = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(png, kind="png", scale=6, border=4)
    return [("VirtualMFADevice", [
        ("SerialNumber", serial), ("Base32StringSeed", blob(base32.encode("ascii"))),
        ("QRCodePNG", blob(png.getvalue())),
        ("Tags", _tag_members(tags) if tags else None)])]


def _two_codes(ctx: Context, params: p.Params,
               call: Callable[[str, str, str, str, float], object]) -> None:
    """EnableMFADevice and ResyncMFADevice: a user, a serial and two consecutive codes, handed
    to the core's enable or resync."""
    user = params.user()
    serial = params.serial()
    code1 = params.code("AuthenticationCode1")
    code2 = params.code("AuthenticationCode2")
    assert user is not None and serial is not None and code1 is not None and code2 is not None
    try:
        call(user, serial, code1, code2, ctx.now)
    except core_errors.ValidatorError as exc:
        raise translate(exc, serial, ctx.validator.policy.max_devices) from None


def enable_mfa_device(ctx: Context, params: p.Params) -> None:
    _two_codes(ctx, params, ctx.validator.enable)


def resync_mfa_device(ctx: Context, params: p.Params) -> None:
    _two_codes(ctx, params, ctx.validator.resync)


def deactivate_mfa_device(ctx: Context, params: p.Params) -> None:
    user = params.user(required=False)
    serial = params.serial()
    assert serial is not None
    if user is None:
        user = _token(ctx, serial).user
        if user is None:
            raise no_such_entity(f"MFA device {serial} is not assigned to any user.")
    try:
        ctx.validator.deactivate(user, serial, now=ctx.now)
    except core_errors.ValidatorError as exc:
        raise translate(exc, serial) from None
    return None


def list_mfa_devices(ctx: Context, params: p.Params) -> Members:
    user = params.user(required=False) or ctx.caller.user
    marker, max_items = params.paging()
    try:
        if user is not None:
            tokens = ctx.validator.list_devices(user, now=ctx.now)
        else:
            tokens, offset = [], 0
            while True:  # every assigned device of every (implicit) user
                batch = ctx.validator.list_tokens(assigned=True, limit=1000, offset=offset,
                                                  now=ctx.now)
                tokens += batch
                offset += len(batch)
                if len(batch) < 1000:
                    break
    except core_errors.ValidatorError as exc:
        raise translate(exc) from None
    items: list[Members] = [
        [("UserName", t.user), ("SerialNumber", t.serial),
         ("EnableDate", iso8601(t.assigned_at if t.assigned_at is not None else t.created))]
        for t in tokens]
    return _page(items, marker, max_items, "MFADevices", [])


def list_virtual_mfa_devices(ctx: Context, params: p.Params) -> Members:
    status = params.optional("AssignmentStatus") or "Any"
    if status not in ("Assigned", "Unassigned", "Any"):
        raise validation_error("assignmentStatus", "Member must satisfy enum value set: "
                               "[Assigned, Unassigned, Any]")
    marker, max_items = params.paging()
    chosen: list[Members] = []
    next_serial: str | None = None
    first = marker
    while next_serial is None:
        batch = ctx.store.virtual_from(first, 200)
        for device in batch:
            try:
                info = ctx.validator.get_token(device.serial, now=ctx.now)
            except core_errors.UnknownSerial:
                continue  # deleted through the core API; not a device any more
            if (status == "Assigned" and info.user is None) or \
                    (status == "Unassigned" and info.user is not None):
                continue
            if len(chosen) == max_items:
                next_serial = device.serial
                break
            member: Members = [("SerialNumber", device.serial)]
            if info.user is not None:
                member.append(("User", _user_members(ctx, info)))
                member.append(("EnableDate", iso8601(info.assigned_at or info.created)))
            tags = ctx.store.tags(device.serial)
            if tags:
                member.append(("Tags", _tag_members(tags)))
            chosen.append(member)
        if len(batch) < 200:
            break
        first = batch[-1].serial + "\x00"
    result: Members = [("VirtualMFADevices", [("member", m) for m in chosen]),
                       ("IsTruncated", boolean(next_serial is not None))]
    if next_serial is not None:
        result.append(("Marker", p.encode_marker(next_serial)))
    return result


def delete_virtual_mfa_device(ctx: Context, params: p.Params) -> None:
    serial = params.serial()
    assert serial is not None
    _virtual(ctx, serial)
    try:
        ctx.validator.delete_token(serial, now=ctx.now)
    except core_errors.UnknownSerial:
        pass  # already gone from the core: finish the job
    except core_errors.ValidatorError as exc:
        raise translate(exc, serial) from None
    ctx.store.delete_virtual(serial)
    return None


def get_mfa_device(ctx: Context, params: p.Params) -> Members:
    serial = params.serial()
    user = params.user(required=False)
    assert serial is not None
    info = _token(ctx, serial)
    if info.user is None or (user is not None and info.user != user):
        raise no_such_entity(f"MFA device {serial} is not assigned to "
                             f"{'the user' if user else 'any user'}.")
    return [("UserName", info.user), ("SerialNumber", serial),
            ("EnableDate", iso8601(info.assigned_at or info.created))]


def tag_mfa_device(ctx: Context, params: p.Params) -> None:
    serial = params.serial()
    assert serial is not None
    tags = params.tags(required=True)
    _virtual(ctx, serial)
    if not ctx.store.tag(serial, tags, MAX_TAGS):
        raise AwsError("LimitExceeded", f"Cannot exceed quota for TagsPerMFADevice: "
                       f"{MAX_TAGS}", 409)
    return None


def untag_mfa_device(ctx: Context, params: p.Params) -> None:
    serial = params.serial()
    assert serial is not None
    keys = params.tag_keys()
    _virtual(ctx, serial)
    ctx.store.untag(serial, keys)
    return None


def list_mfa_device_tags(ctx: Context, params: p.Params) -> Members:
    serial = params.serial()
    assert serial is not None
    marker, max_items = params.paging()
    _virtual(ctx, serial)
    items: list[Members] = [[("Key", k), ("Value", v)] for k, v in ctx.store.tags(serial)]
    return _page(items, marker, max_items, "Tags", [])


# -- STS -------------------------------------------------------------------------------

def get_session_token(ctx: Context, params: p.Params) -> Members:
    duration = params.integer("DurationSeconds", 900, 129_600) or DEFAULT_SESSION_SECONDS
    serial = params.serial(required=False)
    code = params.code("TokenCode", required=False)
    params.integer("MinimumSessionTokenSize", 0, 4096)
    if ctx.caller.session:
        raise AwsError("AccessDenied", "Cannot call GetSessionToken with session "
                       "credentials", 403)
    bound = ctx.caller.user
    user: str | None = None
    if serial is not None or code is not None:
        if serial is None:
            raise validation_error("serialNumber", "SerialNumber is required with TokenCode")
        if code is None:
            raise access_denied_mfa()
        try:
            info = ctx.validator.get_token(serial, now=ctx.now)
        except core_errors.UnknownSerial:
            raise access_denied_mfa() from None
        if info.user is None or (bound is not None and info.user != bound):
            raise access_denied_mfa()  # a bound key proves MFA with its own user's device
        result = ctx.validator.verify(info.user, code, now=ctx.now, serial=serial)
        if not result.accepted:
            raise access_denied_mfa()
        user = info.user
    try:
        session = ctx.store.create_session(user, serial, ctx.now + duration, ctx.now,
                                           parent=ctx.caller.access_key_id)
    except LookupError:  # the key was deleted while this request ran
        raise AwsError("InvalidClientTokenId", "The security token included in the "
                       "request is invalid.", 403) from None
    return [("Credentials", [
        ("AccessKeyId", session.access_key_id), ("SecretAccessKey", session.secret_access_key),
        ("SessionToken", session.session_token), ("Expiration", iso8601(session.expires))])]


# -- who may call what -----------------------------------------------------------------

_ANY_DEVICE = frozenset({"CreateVirtualMFADevice", "ListVirtualMFADevices"})
_NAMED_USER = frozenset({"EnableMFADevice", "ResyncMFADevice"})
_USER_OR_DEVICE = frozenset({"DeactivateMFADevice", "GetMFADevice"})
_UNCLAIMED_DEVICE = frozenset({"DeleteVirtualMFADevice", "TagMFADevice", "UntagMFADevice",
                               "ListMFADeviceTags"})


def _denied(ctx: Context, action: str, resource: str | None, why: str = "") -> AwsError:
    caller = ctx.caller
    who = _user_arn(ctx, caller.user) if caller.user else f"access key {caller.access_key_id}"
    on = f" on resource: {resource}" if resource else ""
    return AwsError("AccessDenied", f"User: {who} is not authorized to perform: "
                    f"iam:{action}{on}{why}", 403)


def _device_user(ctx: Context, serial: str) -> str | None:
    try:
        return ctx.validator.get_token(serial, now=ctx.now).user
    except core_errors.UnknownSerial:
        return None  # the action itself answers NoSuchEntity


def authorize(ctx: Context, action: str, params: p.Params) -> None:
    """Refuse (AccessDenied, 403) what the caller's scope does not allow; see the module
    docstring. Runs after the signature check, before the action."""
    if action not in IAM_ACTIONS:
        return
    caller = ctx.caller
    if caller.session and not caller.mfa:
        raise _denied(ctx, action, None, " because no MFA code was presented when these "
                      "session credentials were requested (GetSessionToken without "
                      "SerialNumber and TokenCode)")
    own = caller.user
    if own is None or action in _ANY_DEVICE:
        return
    if action in _NAMED_USER or action == "ListMFADevices":
        user = params.user(required=action in _NAMED_USER)
        if user is not None and user != own:
            raise _denied(ctx, action, _user_arn(ctx, user))
        return
    serial = params.serial()
    assert serial is not None
    if action in _USER_OR_DEVICE:
        user = params.user(required=False) or _device_user(ctx, serial)
        if user is not None and user != own:
            raise _denied(ctx, action, _user_arn(ctx, user))
        return
    assert action in _UNCLAIMED_DEVICE, action
    holder = _device_user(ctx, serial)
    if holder is not None and holder != own:
        raise _denied(ctx, action, serial)


IAM_ACTIONS: dict[str, Handler] = {
    "CreateVirtualMFADevice": create_virtual_mfa_device,
    "EnableMFADevice": enable_mfa_device,
    "ResyncMFADevice": resync_mfa_device,
    "DeactivateMFADevice": deactivate_mfa_device,
    "ListMFADevices": list_mfa_devices,
    "ListVirtualMFADevices": list_virtual_mfa_devices,
    "DeleteVirtualMFADevice": delete_virtual_mfa_device,
    "GetMFADevice": get_mfa_device,
    "TagMFADevice": tag_mfa_device,
    "UntagMFADevice": untag_mfa_device,
    "ListMFADeviceTags": list_mfa_device_tags,
}
STS_ACTIONS: dict[str, Handler] = {
    "GetSessionToken": get_session_token,
}
