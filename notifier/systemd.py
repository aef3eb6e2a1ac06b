"""systemd integration: ``sd_notify`` over the notify socket, the watchdog, the unit file.

``sd_notify`` is a datagram of ``KEY=value`` lines sent to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). Nothing here
needs libsystemd; outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from notifier import __version__

logger = logging.getLogger(__name__)

UNIT_NAME: Final = "bcs-notifier"
DEFAULT_CONFIG_DIR: Final = Path("/etc/bcs-notifier")
DEFAULT_STATE_DIR: Final = Path("/var/lib/bcs-notifier")
CREDENTIALS_SOURCE_DIR: Final = DEFAULT_CONFIG_DIR / "credentials"
DEFAULT_STOP_GRACE: Final = 10.0
SEND_TIMEOUT: Final = 1.0


def notify_address(value: str | None) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract one."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other forms are not supported; systemd uses them only in VMs


class SystemdNotifier:
    """Send ``sd_notify`` messages; never raises, logs a failed send once."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = notify_address(raw)
        if raw and address is None:
            logger.warning("NOTIFY_SOCKET=%s is not a unix socket address; not notifying", raw)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True when it was sent."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # a full receive queue must never hang the loop
                    self._socket.settimeout(SEND_TIMEOUT)
                self._socket.sendto(payload, self._address)
            except OSError as exc:
                self._close_locked()
                if not self._warned:
                    logger.warning("cannot notify systemd: %s", exc)
                    self._warned = True
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, or None when off.

    ``$WATCHDOG_PID``, when set, must be this process (systemd sets it for the main PID).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


# -- the unit file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitOptions:
    """What the printed unit depends on; ``from_install`` fills it for this install."""

    exec_start: Sequence[str]
    config_path: Path = DEFAULT_CONFIG_DIR / "notifier.toml"
    user: str | None = None  # None: DynamicUser=yes
    group: str | None = None
    watchdog_sec: int = 60
    stop_grace: float = 10.0
    database_dir: Path | None = DEFAULT_STATE_DIR  # None: not SQLite
    credentials: Sequence[str] = ()
    http_port: int | None = None
    extra_read_paths: Sequence[Path] = field(default_factory=tuple)
    warnings: Sequence[str] = field(default_factory=tuple)
    database_unit: str | None = None  # a database server on this host: start after it


def executable_command() -> list[str]:
    """How systemd should start this install: the console script next to the interpreter."""
    script = Path(sys.executable).with_name("bcs-notifier")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(Path(sys.executable)), "-m", "notifier"]


def credentials_in(config_path: Path) -> list[str]:
    """Relative ``*_file`` values in the config: the credentials systemd should load.

    Relative names are looked up in ``$CREDENTIALS_DIRECTORY`` first, which is what
    ``LoadCredential=NAME:...`` provides; absolute paths are read as they are.
    """
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    names: list[str] = []
    for key, value in _walk(data):
        if key.endswith("_file") and isinstance(value, str) and value and "${" not in value:
            relative = Path(value)
            if not relative.is_absolute() and len(relative.parts) == 1 and value not in names:
                names.append(value)
    return names


def credentials_source_dir(config_path: Path) -> Path:
    """Where ``LoadCredential=`` takes the secrets from: ``credentials/`` next to the config
    (``/etc/bcs-notifier/credentials`` for the default config)."""
    return config_path.parent / "credentials"


def _walk(data: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(data, list):
        for item in data:
            yield from _walk(item)


def _quote(argument: str) -> str:
    """Quote one ExecStart argument (systemd accepts shell-style double quotes)."""
    if argument and all(c.isalnum() or c in "/._-=:@+," for c in argument):
        return argument
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _under(path: Path, *roots: str) -> bool:
    return any(path == Path(root) or Path(root) in path.parents for root in roots)


def unit_text(options: UnitOptions) -> str:
    """A hardened ``bcs-notifier.service`` with every line explained in a comment."""
    command = [*options.exec_start, "--config", str(options.config_path), "run"]
    if options.stop_grace != DEFAULT_STOP_GRACE:
        command += ["--stop-grace", f"{options.stop_grace:g}"]
    exec_start = " ".join(_quote(part) for part in command)
    executable = Path(options.exec_start[0])
    paths = [executable, options.config_path, *options.extra_read_paths]
    if options.database_dir is not None:
        paths.append(options.database_dir)
    in_home = any(_under(path, "/home", "/root", "/run/user") for path in paths)
    lines: list[str] = []

    def add(comment: str, directive: str | None = None) -> None:
        lines.extend(f"# {text}" if text else "#" for text in comment.splitlines())
        if directive is not None:
            lines.append(directive)

    add(
        f"{UNIT_NAME}.service, printed by `bcs-notifier print-unit` "
        f"(bcs-notifier {__version__}).\n"
        f"Install: save as /etc/systemd/system/{UNIT_NAME}.service, then\n"
        f"  systemctl daemon-reload && systemctl enable --now {UNIT_NAME}"
    )
    for warning in options.warnings:
        add(f"WARNING: {warning}")
    lines.append("")
    lines.append("[Unit]")
    add(
        "What `systemctl status` shows.",
        "Description=bcs-notifier: Huawei Cloud BCS operation notifications",
    )
    add("Polling needs the network up, not just configured.", "Wants=network-online.target")
    add("Start after the network is online.", "After=network-online.target")
    if options.database_unit is not None:
        add(
            "The database runs on this host: start it first (the service also waits and\n"
            "retries while it is down).",
            f"Wants={options.database_unit}",
        )
        add("Start after it.", f"After={options.database_unit}")
    add(
        "Give up restarting after 5 failed starts within 10 minutes ...",
        "StartLimitIntervalSec=600",
    )
    add(
        "... (a broken config exits 78 and is not restarted at all, see below).",
        "StartLimitBurst=5",
    )
    lines.append("")
    lines.append("[Service]")
    add(
        "The service sends READY=1 once config, migrations and channels are valid,\n"
        "STATUS= with the last poll and outbox depth, and STOPPING=1 on shutdown.",
        "Type=notify",
    )
    add("Only the main process may send notifications.", "NotifyAccess=main")
    add(
        "The command: the console script of this install, with its config file.",
        f"ExecStart={exec_start}",
    )
    add(
        "`systemctl reload` re-reads the config; an invalid one is logged and ignored.",
        "ExecReload=/bin/kill -HUP $MAINPID",
    )
    add(
        "The loop sends WATCHDOG=1 every cycle; systemd restarts it when a cycle hangs.",
        f"WatchdogSec={options.watchdog_sec}",
    )
    add("Restart after a crash, a watchdog timeout or a failed start.", "Restart=on-failure")
    add("Wait a little between restarts.", "RestartSec=10")
    add(
        "Exit 78 (EX_CONFIG) means the configuration is invalid: fix it, do not loop.",
        "RestartPreventExitStatus=78",
    )
    stop_timeout = int(options.stop_grace) + 60
    add(
        "SIGTERM stops within --stop-grace (polls and sends included) and exits 0; the\n"
        "margin beyond the grace only covers start-up of the stop and the journal.",
        f"TimeoutStopSec={stop_timeout}",
    )
    add(
        "Logs go to the journal; lines carry <N> level prefixes and no own timestamp.",
        "SyslogIdentifier=bcs-notifier",
    )
    lines.append("")
    add("-- identity and state --")
    if options.user is None:
        add(
            "A transient user allocated at start: no account to create, nothing it can own\n"
            "outside its StateDirectory.",
            "DynamicUser=yes",
        )
    else:
        add(
            "The dedicated system account that runs the service (create it first:\n"
            f"  useradd --system --home-dir {DEFAULT_STATE_DIR} --shell /usr/sbin/nologin "
            f"{options.user}).",
            f"User={options.user}",
        )
        add("Its group.", f"Group={options.group or options.user}")
    add(
        f"{DEFAULT_STATE_DIR} is created for the service and is the only place it may write:\n"
        "the SQLite database, its lock file and its pre-migration backups live there.",
        f"StateDirectory={UNIT_NAME}",
    )
    add("Keep the database private to the service user.", "StateDirectoryMode=0700")
    add(
        f"{DEFAULT_CONFIG_DIR} holds notifier.toml (read-only to the service).",
        f"ConfigurationDirectory={UNIT_NAME}",
    )
    add("New files readable by the service user only.", "UMask=0077")
    if options.database_dir is not None and not _under(
        options.database_dir, str(DEFAULT_STATE_DIR)
    ):
        add(
            "The configured SQLite database lives outside the StateDirectory: allow writing there.",
            f"ReadWritePaths={options.database_dir}",
        )
    lines.append("")
    add("-- secrets --")
    # the credentials/ folder next to the config: where the config's *_file keys are found
    # outside the service too (`status`, `check-config` run by root)
    credentials_dir = credentials_source_dir(options.config_path)
    add(
        "Secrets never sit in the unit or the config: the config names them as *_file and\n"
        "systemd copies each from a root-only file into $CREDENTIALS_DIRECTORY, readable by\n"
        f"this service alone. Put each file in {credentials_dir}/ (mode 0600, root)."
    )
    if options.credentials:
        for name in options.credentials:
            add(
                f"Credential {name!r}, referenced by a *_file key in the config.",
                f"LoadCredential={name}:{credentials_dir / name}",
            )
    else:
        add(
            'No *_file key found in the config. Example, for password_file = "bcs-password":\n'
            f"LoadCredential=bcs-password:{credentials_dir / 'bcs-password'}"
        )
    add(
        "Values for ${VAR} references in notifier.toml (e.g. a Slack token or SMTP password\n"
        "inside a channel URL): NAME=value lines in a root-only (0600) file; optional.",
        f"EnvironmentFile=-{DEFAULT_CONFIG_DIR}/environment",
    )
    lines.append("")
    add("-- hardening (check with `systemd-analyze security bcs-notifier`) --")
    add("The whole file system is read-only except the directories above.", "ProtectSystem=strict")
    if in_home:
        add(
            "This install (or its config or database) lives under a home directory: it must\n"
            "stay readable. Prefer /opt and /etc, then use ProtectHome=yes.",
            "ProtectHome=read-only",
        )
    else:
        add("No access to /home, /root and /run/user.", "ProtectHome=yes")
    add("A private /tmp and /var/tmp, removed when the service stops.", "PrivateTmp=yes")
    add(
        "Its own mount namespace: no mount it could make is seen by the host.",
        "PrivateMounts=yes",
    )
    add(
        "Its own user namespace: only root and the service user exist in it, so it has no\n"
        "access to other users' processes or files beyond what everyone may read.",
        "PrivateUsers=yes",
    )
    add("No physical devices (only /dev/null, /dev/urandom and the like).", "PrivateDevices=yes")
    add(
        "Neither the service nor its children can gain privileges (setuid, file caps).",
        "NoNewPrivileges=yes",
    )
    add("No capabilities at all: it needs none.", "CapabilityBoundingSet=")
    add("And none handed to it.", "AmbientCapabilities=")
    add(
        "Only unix sockets (journal, sd_notify) and IP (the BCS API, channels).",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    )
    add("No new namespaces.", "RestrictNamespaces=yes")
    add("No realtime scheduling.", "RestrictRealtime=yes")
    add("No setuid/setgid files.", "RestrictSUIDSGID=yes")
    add(
        "No writable-and-executable memory (Python does not need it).", "MemoryDenyWriteExecute=yes"
    )
    add("No personality changes.", "LockPersonality=yes")
    add("Kernel tunables in /proc and /sys are read-only.", "ProtectKernelTunables=yes")
    add("No kernel module loading.", "ProtectKernelModules=yes")
    add("No access to the kernel log.", "ProtectKernelLogs=yes")
    add("The cgroup tree is read-only.", "ProtectControlGroups=yes")
    add("The system clock cannot be changed.", "ProtectClock=yes")
    add("The host name cannot be changed.", "ProtectHostname=yes")
    add("Other users' processes are invisible in /proc.", "ProtectProc=invisible")
    add("Only /proc/PID entries, not the rest of /proc.", "ProcSubset=pid")
    add("No System V IPC objects survive the service.", "RemoveIPC=yes")
    add(
        "Native system calls only (no 32-bit compatibility layer).",
        "SystemCallArchitectures=native",
    )
    add("The system calls a typical service needs ...", "SystemCallFilter=@system-service")
    add(
        "... minus privileged and resource-changing ones.",
        "SystemCallFilter=~@privileged @resources",
    )
    add(
        "A refused system call fails with EPERM instead of killing the process.",
        "SystemCallErrorNumber=EPERM",
    )
    if options.http_port is not None:
        add(
            f"[service.http] is on: /healthz and /metrics listen on port {options.http_port}\n"
            "(127.0.0.1 by default); nothing else is served."
        )
    lines.append("")
    lines.append("[Install]")
    add("`systemctl enable` starts it at boot.", "WantedBy=multi-user.target")
    return "\n".join(lines) + "\n"


def unit_options_for(
    config_path: Path,
    *,
    database_url: str | None,
    http_port: int | None = None,
    user: str | None = None,
    group: str | None = None,
    watchdog_sec: int = 60,
    stop_grace: float = 10.0,
    exec_start: Sequence[str] | None = None,
) -> UnitOptions:
    """Options for this install: its executable, the config's credentials and database."""
    database_dir: Path | None = None
    warnings: list[str] = []
    if database_url is not None:
        database_dir = sqlite_directory(database_url)
        if database_dir is not None and not database_dir.is_absolute():
            warnings.append(
                f"service.database {database_url!r} is a relative path; under systemd use an "
                "absolute one, e.g. sqlite:////var/lib/bcs-notifier/state.db"
            )
            database_dir = None
    command = list(exec_start) if exec_start else executable_command()
    extra: list[Path] = []
    if command and Path(command[0]).name.startswith("python"):
        extra.append(Path(command[0]))
    return UnitOptions(
        exec_start=command,
        config_path=config_path.resolve() if config_path.exists() else config_path,
        user=user,
        group=group,
        watchdog_sec=watchdog_sec,
        stop_grace=stop_grace,
        database_dir=database_dir,
        credentials=credentials_in(config_path),
        http_port=http_port,
        extra_read_paths=extra,
        warnings=warnings,
        database_unit=local_database_unit(database_url) if database_url else None,
    )


#: systemd units of local database servers, by SQLAlchemy backend name
DATABASE_UNITS = {"postgresql": "postgresql.service", "mysql": "mysql.service"}
LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "[::1]"})


def local_database_unit(url: str) -> str | None:
    """``postgresql.service`` when ``url`` points to a PostgreSQL on this host (no host, a
    loopback host, or a unix-socket directory), else None."""
    from notifier.store.db import database_address

    parsed = database_address(url)
    if parsed is None:
        return None
    unit = DATABASE_UNITS.get(parsed.backend)
    if parsed.backend == "mysql" and "mariadb" in parsed.driver:
        unit = "mariadb.service"
    if unit is None:
        return None
    if parsed.host not in (None, *LOCAL_HOSTS):
        return None
    if any(
        host and not host.startswith("/") and host not in LOCAL_HOSTS for host in parsed.query_hosts
    ):
        return None
    return unit


def sqlite_directory(url: str) -> Path | None:
    """The directory of a ``sqlite:///`` database file, or None for other URLs."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    database = url[len(prefix) :].split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    return Path(database).parent
