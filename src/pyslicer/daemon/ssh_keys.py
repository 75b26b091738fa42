"""SSH keys for the guest's default user: the config's ``ssh_keys`` and a create's, written into its
``authorized_keys`` each time the agent says READY (so a relaunched or adopted VM has them too).

``github_user`` and ``import_user`` would fetch keys from the internet, which this daemon never reaches: they
are refused at once (never a hang on a lookup that cannot succeed).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from pyslicer.daemon.exec import ExecExited, ExecRequest
from pyslicer.daemon.node import Node
from pyslicer.errors import InvalidArgument, SlicerError
from pyslicer.image.rootfs import DEFAULT_UID

log = logging.getLogger(__name__)

MAX_KEYS = 64
MAX_KEY_BYTES = 16 * 1024
_KEY_RE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( [^\r\n]*)?$")

# Run as root in the guest; the default user's home comes from its account (nothing happens without one).
_INSTALL = f"""set -e
home=$(getent passwd {DEFAULT_UID} | cut -d: -f6)
[ -n "$home" ] || exit 0
install -d -m 700 -o {DEFAULT_UID} -g {DEFAULT_UID} "$home/.ssh"
printf '%s\\n' "$SLICER_SSH_KEYS" > "$home/.ssh/authorized_keys.new"
chown {DEFAULT_UID}:{DEFAULT_UID} "$home/.ssh/authorized_keys.new"
chmod 600 "$home/.ssh/authorized_keys.new"
mv "$home/.ssh/authorized_keys.new" "$home/.ssh/authorized_keys"
"""


def check_keys(keys: Sequence[str], field: str = "ssh_keys") -> tuple[str, ...]:
    """The keys, stripped. Raises InvalidArgument naming ``field[i]`` for one that is not an OpenSSH public key
    line, and for too many or too large."""
    if len(keys) > MAX_KEYS:
        raise InvalidArgument(f"{field}: at most {MAX_KEYS} keys", code="ssh_keys")
    checked = []
    for index, key in enumerate(keys):
        line = key.strip() if isinstance(key, str) else ""
        if len(line) > MAX_KEY_BYTES or not _KEY_RE.fullmatch(line):
            raise InvalidArgument(
                f"{field}[{index}]: not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... me@host')",
                code="ssh_keys",
            )
        checked.append(line)
    return tuple(checked)


def refuse_import(github_user: str, import_user: str) -> None:
    """Raises InvalidArgument naming the field when a create asks to fetch keys from the internet (a 400, not a
    5xx: the daemon is fine, the request cannot be met here)."""
    for field, value in (("github_user", github_user), ("import_user", import_user)):
        if value:
            raise InvalidArgument(
                f"{field}: importing SSH keys for {value!r} needs the internet, which this daemon does not reach; "
                "pass the public keys in ssh_keys instead",
                code="offline",
            )


async def install_keys(node: Node, keys: Sequence[str]) -> None:
    """Write ``keys`` as the default user's authorized_keys (nothing to do for none). Raises nothing: a failure
    is logged (the VM runs without them)."""
    if not keys:
        return
    request = ExecRequest(cmd="/bin/sh", args=["-c", _INSTALL], env=["SLICER_SSH_KEYS=" + "\n".join(keys)], uid=0)
    try:
        outcome = await node.exec(request).collect(limit=64 * 1024)
    except SlicerError as exc:
        log.warning("%s: could not install its SSH keys: %s", node.hostname, exc)
        return
    if not (isinstance(outcome.end, ExecExited) and outcome.end.exit_code == 0):
        log.warning("%s: installing its SSH keys failed: %s", node.hostname, b"".join(outcome.stderr)[:500])
