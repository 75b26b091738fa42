"""``slicer vm ...``: micro-VMs through the REST API."""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

import click

from pyslicer.durations import format_go_duration
from pyslicer.errors import NotFound

from ._common import Api, Duration, KeyValue, api_command, wait_for
from ._output import dumps, fields, human_bytes, human_duration, table, timestamp

if TYPE_CHECKING:
    from pyslicer.client import ExecFrame, SlicerClient


@click.group()
def vm() -> None:
    """Manage micro-VMs."""


@vm.command("list")
@click.option("--group", "-g", help="Only VMs in this host group.")
@click.option("--tag", help="Only VMs with this exact tag.")
@click.option("--tag-prefix", help="Only VMs with a tag starting with this.")
@api_command
def vm_list(api: Api, group: str | None, tag: str | None, tag_prefix: str | None) -> None:
    """List VMs."""
    if tag and tag_prefix:
        raise click.UsageError("use one of --tag and --tag-prefix")
    client = api.client
    nodes = client.group_nodes(group, tag, tag_prefix) if group else client.nodes(tag, tag_prefix)
    if not api.json and not nodes:
        click.echo("No VMs found.", err=True)
        return
    rows = [
        [
            node.hostname,
            node.hostgroup or group or "-",
            node.ip or "-",
            node.status or "-",
            str(node.cpus) if node.cpus else "-",
            human_bytes(node.ram_bytes),
            ",".join(node.tags) or "-",
            timestamp(node.created_at),
        ]
        for node in nodes
    ]
    api.emit(nodes, lambda: table(["HOSTNAME", "GROUP", "IP", "STATUS", "CPUS", "RAM", "TAGS", "CREATED"], rows))


@vm.command("group")
@api_command
def vm_group(api: Api) -> None:
    """List host groups."""
    groups = api.client.host_groups()
    rows = [
        [g.name, str(g.count), str(g.cpus), human_bytes(g.ram_bytes), str(g.gpu_count), g.arch or "-"] for g in groups
    ]
    api.emit(groups, lambda: table(["NAME", "COUNT", "CPUS", "RAM", "GPUS", "ARCH"], rows))


@vm.command("add")
@click.argument("group")
@click.option("--cpus", type=click.IntRange(min=1), help="vCPUs (at most the group's).")
@click.option("--ram-gb", type=click.FloatRange(min=0, min_open=True), help="RAM in GiB.")
@click.option("--ram-mb", type=click.IntRange(min=1), help="RAM in MiB.")
@click.option("--userdata", help="Script to run once at first boot.")
@click.option(
    "--userdata-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read the userdata script from a file.",
)
@click.option("--tag", "tags", multiple=True, help="Tag the VM (repeatable).")
@click.option("--persistent/--ephemeral", default=None, help="Keep the disk when the VM is deleted.")
@click.option(
    "--secret", "secrets", multiple=True, metavar="NAME", help="Grant only these secrets (repeatable) [default: all]."
)
@click.option("--ttl", type=Duration(), help="Remove the VM this long after it is created (e.g. 10m, 2h).")
@click.option("--wait", type=click.Choice(["agent", "userdata"]), help="Return once the agent (or userdata) is ready.")
@click.option("--timeout", type=Duration(), help="How long --wait may take (e.g. 5m).")
@api_command
def vm_add(
    api: Api,
    group: str,
    cpus: int | None,
    ram_gb: float | None,
    ram_mb: int | None,
    userdata: str | None,
    userdata_file: str | None,
    tags: tuple[str, ...],
    persistent: bool | None,
    secrets: tuple[str, ...],
    ttl: float | None,
    wait: str | None,
    timeout: float | None,
) -> None:
    """Launch a VM in GROUP and print its hostname."""
    if ram_gb is not None and ram_mb is not None:
        raise click.UsageError("use one of --ram-gb and --ram-mb")
    if userdata is not None and userdata_file is not None:
        raise click.UsageError("use one of --userdata and --userdata-file")
    if userdata_file is not None:
        with open(userdata_file) as file:
            userdata = file.read()
    ram_bytes = None
    if ram_gb is not None:
        ram_bytes = int(ram_gb * 1024**3)
    elif ram_mb is not None:
        ram_bytes = ram_mb * 1024**2
    node = api.client.create_node(
        group,
        cpus=cpus,
        ram_bytes=ram_bytes,
        userdata=userdata,
        tags=list(tags) or None,
        persistent=persistent,
        secrets=list(secrets) or None,
        ttl=ttl,
        wait=wait_for(wait),
        timeout=format_go_duration(timeout) if timeout is not None else None,
    )
    api.emit(node, lambda: node.hostname)


@vm.command("describe")
@click.argument("hostname")
@api_command
def vm_describe(api: Api, hostname: str) -> None:
    """Show a VM: its resources, image, tags, expiry and network policy."""
    found = api.client.describe(hostname)
    network = found.network

    def cidrs(values: list[str] | None) -> str:
        return ", ".join(values or []) or "-"

    pairs = [
        ("hostname", found.hostname),
        ("group", found.hostgroup or "-"),
        ("status", found.status or "-"),
        ("ip", found.ip or "-"),
        ("cpus", str(found.cpus) if found.cpus else "-"),
        ("ram", human_bytes(found.ram_bytes)),
        ("disk", human_bytes(found.disk_bytes)),
        ("persistent", "yes" if found.persistent else "no"),
        ("created", timestamp(found.created_at)),
        ("expires", timestamp(found.expires_at) if found.expires_at else "never"),
        ("tags", ", ".join(found.tags) or "-"),
        ("storage", found.storage or "-"),
        ("image", found.image or "-"),
        ("commit", found.commit_id or "-"),
        ("parent commit", found.parent_commit_id or "-"),
        ("network", f"{network.mode or '-'} (policy from {network.policy_source or '-'})"),
        ("allow", cidrs(network.effective.allow)),
        ("drop", cidrs(network.effective.drop)),
    ]
    api.emit(found, lambda: fields(pairs))


@vm.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("hostname")
@click.option("--user", "-u", default="ubuntu", show_default=True, help="The guest account to log in as.")
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@api_command
def vm_ssh(api: Api, hostname: str, user: str, ssh_args: tuple[str, ...]) -> None:
    """Log in to a VM with the local OpenSSH client (run inside the daemon's network namespace, so this must
    run on the daemon's host, as root). Arguments after the hostname go to ssh: `slicer vm ssh vm-1 -i KEY id`."""
    import os
    import shutil

    found = api.client.describe(hostname)
    if not found.ip:
        raise click.ClickException(f"{hostname} has no address")
    ssh = shutil.which("ssh")
    if ssh is None:
        raise click.ClickException("ssh: the OpenSSH client is not installed (Debian: apt-get install openssh-client)")
    argv = [ssh, "-o", "StrictHostKeyChecking=accept-new", "-l", user, found.ip, *ssh_args]
    if found.network.namespace:
        ip = shutil.which("ip")
        if ip is None:
            raise click.ClickException("ip: iproute2 is not installed")
        argv = [ip, "netns", "exec", found.network.namespace, *argv]
    sys.stdout.flush()
    os.execv(argv[0], argv)


@vm.command("tag")
@click.argument("hostname")
@click.option("--add", "add", multiple=True, metavar="TAG", help="Add a tag (repeatable).")
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove a tag (repeatable).")
@click.option("--replace", "replace", multiple=True, metavar="TAG", help="Replace every tag but name= (repeatable).")
@click.option("--clear", is_flag=True, help="Remove every tag but name=.")
@api_command
def vm_tag(
    api: Api, hostname: str, add: tuple[str, ...], remove: tuple[str, ...], replace: tuple[str, ...], clear: bool
) -> None:
    """Show a VM's tags, or change them with one of --add, --remove, --replace and --clear.

    A name= tag cannot be removed or changed. Tag expires_at=<RFC 3339> to have the VM removed at that time.
    """
    chosen = [
        name
        for name, given in (("--add", add), ("--remove", remove), ("--replace", replace), ("--clear", clear))
        if given
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"use one of {', '.join(chosen)}")
    client = api.client
    if not chosen:
        result = client.tags(hostname)
    elif clear or replace:
        result = client.update_tags(hostname, replace=list(replace))
    else:
        result = (
            client.update_tags(hostname, add=list(add)) if add else client.update_tags(hostname, remove=list(remove))
        )
    api.emit(result, lambda: "\n".join(result.tags))


def _group_of(client: SlicerClient, hostname: str) -> str:
    node = next((n for n in client.nodes() if n.hostname == hostname), None)
    if node is None:
        raise NotFound(f"no VM named {hostname!r}")
    if node.hostgroup:
        return node.hostgroup
    for group in client.host_groups():
        if any(n.hostname == hostname for n in client.group_nodes(group.name)):
            return group.name
    return hostname.rsplit("-", 1)[0]


@vm.command("delete")
@click.argument("hostname")
@click.option("--group", "-g", help="The VM's host group (found from the VM list when omitted).")
@api_command
def vm_delete(api: Api, hostname: str, group: str | None) -> None:
    """Delete a VM."""
    client = api.client
    result = client.delete_node(group or _group_of(client, hostname), hostname)
    api.emit(result, lambda: f"deleted {hostname}")


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (ValueError, OSError):
        return True


def _exit_status(frame: ExecFrame) -> int:
    if frame.signal:
        name = frame.signal.upper()
        try:
            number = int(name) if name.isdigit() else signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
        except KeyError:
            number = 0
        if number:
            return 128 + int(number)
    code = frame.exit_code or 0
    return code if 0 <= code <= 255 else 1


@vm.command("exec")
@click.argument("hostname")
@click.argument("command", nargs=-1, required=True)
@click.option("--uid", type=click.IntRange(min=0), help="Run as this user id.")
@click.option("--gid", type=click.IntRange(min=0), help="Run with this group id.")
@click.option("--cwd", help="Working directory.")
@click.option("--shell", help="Run the command through this shell.")
@click.option("--env", "-e", "env", multiple=True, type=KeyValue(), help="Set an environment variable (repeatable).")
@click.option(
    "--stdin/--no-stdin",
    "use_stdin",
    default=None,
    help="Send this terminal's stdin to the command [default: when stdin is not a TTY].",
)
@api_command
def vm_exec(
    api: Api,
    hostname: str,
    command: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    cwd: str | None,
    shell: str | None,
    env: tuple[str, ...],
    use_stdin: bool | None,
) -> None:
    """Run COMMAND in a VM, streaming its output; exits with its exit code.

    Put -- before the command when it has options: slicer vm exec vm-1 -- ls -la
    """
    if use_stdin is None:
        use_stdin = not _stdin_is_tty()
    frames = api.exec_client.exec(
        hostname,
        command[0],
        command[1:],
        env=list(env) or None,
        uid=uid,
        gid=gid,
        cwd=cwd,
        shell=shell,
        stdin=sys.stdin.buffer if use_stdin else None,
        base64=True,
    )
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    collected = {"stdout": bytearray(), "stderr": bytearray()}
    status, error = 0, None
    for frame in frames:
        if frame.type == "stdout" or frame.type == "stderr":
            if api.json:
                collected[frame.type] += frame.data
            else:
                stream = stdout if frame.type == "stdout" else stderr
                stream.write(frame.data)
                stream.flush()
        elif frame.type == "exit":
            status = _exit_status(frame)
        elif frame.type == "error":
            error = frame.error or "exec failed"
            status = frame.exit_code if frame.exit_code and 0 < frame.exit_code <= 255 else 127
    if api.json:
        result = {
            "stdout": collected["stdout"].decode("utf-8", "replace"),
            "stderr": collected["stderr"].decode("utf-8", "replace"),
            "exit_code": status,
            "error": error,
        }
        click.echo(dumps(result))
    elif error:
        click.echo(f"error: {error}", err=True)
    click.get_current_context().exit(status)


@vm.command("health")
@click.argument("hostname")
@api_command
def vm_health(api: Api, hostname: str) -> None:
    """Show the VM agent's health."""
    health = api.client.health(hostname)
    userdata = "yes" if health.userdata_ran else "no"
    if health.userdata_ran and health.userdata_exit_code is not None:
        userdata += f" (exit code {health.userdata_exit_code})"
    pairs = [
        ("hostname", health.hostname or hostname),
        ("agent", "up" if health.agent_up else "down"),
        ("agent version", health.agent_version or "-"),
        ("agent uptime", human_duration(health.agent_uptime_seconds)),
        ("system uptime", human_duration(health.system_uptime_seconds)),
        ("userdata ran", userdata),
    ]
    if health.ip:
        pairs.append(("ip", health.ip))
    api.emit(health, lambda: fields(pairs))


@vm.command("ready")
@click.argument("hostname")
@click.option("--timeout", type=Duration(), default="60s", show_default=True, help="How long to wait.")
@click.option("--userdata", is_flag=True, help="Also wait for the userdata script to finish.")
@api_command
def vm_ready(api: Api, hostname: str, timeout: float, userdata: bool) -> None:
    """Wait until a VM's agent is ready (exit 0), or time out (exit 1)."""
    health = api.client.wait_ready(hostname, timeout, userdata=userdata)
    api.emit(health, lambda: f"{hostname} is ready")


@vm.command("logs")
@click.argument("hostname")
@click.option("--lines", "-n", type=click.IntRange(min=0), help="Lines from the end (0: all) [default: 20].")
@api_command
def vm_logs(api: Api, hostname: str, lines: int | None) -> None:
    """Print a VM's serial console log."""
    logs = api.client.logs(hostname, lines)
    if api.json:
        click.echo(dumps(logs))
    elif logs.content:
        click.echo(logs.content, nl=not logs.content.endswith("\n"))
