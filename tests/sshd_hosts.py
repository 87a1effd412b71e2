"""A real OpenSSH server on two loopback aliases of this machine, 127.0.0.1 and 127.0.0.2: two "hosts" that
tests reach through ssh as users reach their nodes (the DeepSpeed runner's ssh check, pdsh).

Everything lives in the session's temporary directory: the server's config and host key, a client key
authorised for the user running the tests, the client's config and known hosts. The machine's own ssh setup
(/etc/ssh, ~/.ssh, a running sshd) is neither read nor changed. The one path outside is /run/sshd, the empty
directory a root sshd needs for privilege separation: created when missing, as the openssh-server service
does, and left there (another session's server may be using it).

The client is the real ssh reading this session's config, as it would read a user's ~/.ssh/config: the
DeepSpeed runner runs ``ssh <host> hostname`` and pdsh runs ``ssh``, both from PATH, and ssh finds ~/.ssh
through the password database, not $HOME. So ``SshHosts.environ()`` puts first on PATH a directory whose
``ssh`` execs the installed one with ``-F <this session's config>``.

Where sshd, ssh, ssh-keygen or pdsh is missing, or the server cannot start, a test that asks for ``ssh_hosts``
is skipped saying why; with CI=true in the environment it fails instead (CI installs them).
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from conftest import free_port, kill_tree

HOSTS = ("127.0.0.1", "127.0.0.2")
_SBIN = "/usr/sbin:/sbin"  # sshd lives there, often outside a user's PATH
_CONNECTION = re.compile(r"^Connection from (\S+) port (\d+) on (\S+) port \d+", re.M)
_ACCEPTED = re.compile(r"^Accepted publickey for \S+ from (\S+) port (\d+)", re.M)


@dataclass(frozen=True)
class SshHosts:
    hosts: tuple[str, ...]
    bin_dir: Path
    """Holds ``ssh``: the installed client reading this session's config."""
    log: Path
    """The server's log (LogLevel VERBOSE: each connection with the address it reached)."""
    server: subprocess.Popen

    def environ(self) -> dict[str, str]:
        """This process's environment with the configured ssh first on PATH."""
        return {**os.environ, "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def logins(self) -> dict[tuple[str, str], str]:
        """Every accepted login, as the server logged it: the client's (address, port), as a session's
        $SSH_CONNECTION starts, to the address it reached (one of ``hosts``)."""
        text = self.log.read_text()
        reached = {(client, port): server for client, port, server in _CONNECTION.findall(text)}
        return {(client, port): reached[client, port] for client, port in _ACCEPTED.findall(text)}

    def end_sessions(self) -> None:
        """Kill every process started through ssh (each session is a child of the server), keeping the server."""
        for session in psutil.Process(self.server.pid).children():
            kill_tree(session.pid)


def unavailable(reason: str) -> None:
    """Skip, saying why; under CI, where the tools are installed for these tests, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _tools() -> dict[str, str]:
    tools = {}
    for name in ("sshd", "ssh", "ssh-keygen", "pdsh"):
        path = shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}{_SBIN}")
        if path is None:
            unavailable(f"{name} is not installed (Debian: apt-get install openssh-server openssh-client pdsh)")
        tools[name] = os.path.abspath(path)  # sshd re-executes itself, and refuses a relative path
    return tools


def _keygen(ssh_keygen: str, path: Path) -> str:
    """An ed25519 key pair without a passphrase; returns the public key's line."""
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "weam-ds-tests", "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def _server_config(root: Path, port: int, user: str) -> str:
    listen = "".join(f"ListenAddress {host}:{port}\n" for host in HOSTS)
    return (f"{listen}HostKey {root / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AllowUsers {user}\n"
            "PermitRootLogin prohibit-password\n"  # the key only, for root as for anyone
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\n"  # PAM would read the machine's own /etc/pam.d and limits
            "StrictModes no\n"  # the files are in a temporary directory, whatever its owner and modes
            "LogLevel VERBOSE\n")


def _client_config(root: Path, port: int, user: str) -> str:
    return (f"Host {' '.join(HOSTS)}\n"
            f"  Port {port}\n  User {user}\n"
            f'  IdentityFile "{root / "client_ed25519"}"\n  IdentitiesOnly yes\n'
            f'  UserKnownHostsFile "{root / "known_hosts"}"\n  GlobalKnownHostsFile /dev/null\n'
            "  StrictHostKeyChecking yes\n"  # the server's key is known: a prompt or a stranger is an error
            "  BatchMode yes\n  LogLevel ERROR\n")


def _wait_until_listening(server: subprocess.Popen, log: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while log.read_text().count("Server listening on") < len(HOSTS):
        if server.poll() is not None or time.monotonic() > deadline:
            kill_tree(server.pid)
            unavailable(f"sshd did not start on {', '.join(HOSTS)}: {log.read_text().strip()[-500:]}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory) -> SshHosts:
    """The server, started once for the session and stopped (with every session it holds) at its end."""
    tools = _tools()
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    root = tmp_path_factory.mktemp("sshd")
    user, port = pwd.getpwuid(os.geteuid()).pw_name, free_port()  # whom ssh logs in as (%u)
    host_key = _keygen(tools["ssh-keygen"], root / "host_ed25519")
    (root / "authorized_keys").write_text(_keygen(tools["ssh-keygen"], root / "client_ed25519") + "\n")
    (root / "known_hosts").write_text(",".join(f"[{host}]:{port}" for host in HOSTS) + f" {host_key}\n")
    (root / "sshd_config").write_text(_server_config(root, port, user))
    (root / "ssh_config").write_text(_client_config(root, port, user))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(f'#!/bin/sh\nexec {shlex.quote(tools["ssh"])} -F {shlex.quote(str(root / "ssh_config"))} "$@"\n')
    ssh.chmod(0o755)
    log = root / "sshd.log"
    with log.open("a") as errors:  # what sshd says before it opens its log (a config error) goes there too
        server = subprocess.Popen([tools["sshd"], "-D", "-f", str(root / "sshd_config"), "-E", str(log)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
    _wait_until_listening(server, log)
    try:
        yield SshHosts(HOSTS, bin_dir, log, server)
    finally:
        kill_tree(server.pid)
