"""Who may publish and subscribe to what: the NATS identities of AIOS and their subject permissions, as data.

One table (``ROLES``) renders the ``authorization`` block of the shipped server configs (``aios nats-config``,
deploy/nats/auth.conf) and gives ``aios up --secure`` its per-process credentials, so what is tested is what is
shipped. The rules follow the event ownership of DESIGN.md §3, at the granularity NATS enforces, the subject:

* decisions about a job (``aios.evt.job.<id>``) are written by the control plane only: gateway/CLI, scheduler,
  resource manager, trainer launcher. A node (its device agent, and the workers and replicas it starts, which run
  user code) writes its own inventory (``aios.evt.node.<id>``) and reports on runs (``aios.evt.run.<id>``), so it
  cannot publish ``JobPlaced``; the readers refuse an event stored on a subject of another aggregate kind.
* nobody but the operator may delete, purge or reconfigure the event stream, and only services write snapshots.
* a tenant talks to the gateway's tenant API (``aios.tenant.<tenant>.<op>``) and nothing else: it cannot read the
  event stream, and its replies come on its own inbox prefix (``_INBOX_<tenant>``), so it cannot read others'.

Passwords are never in the file: each user's is the environment variable ``AIOS_NATS_PASS_<USER>`` of the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EVT = "aios.evt"
EVENTS_STREAM = "AIOS_EVENTS"
SNAPSHOTS = "AIOS_SNAPSHOTS"

_GUARD_EVENTS = [f"$JS.API.STREAM.{op}.{EVENTS_STREAM}" for op in ("DELETE", "PURGE", "UPDATE", "MSG.DELETE")]
_GUARD_SNAPSHOTS = [f"$O.{SNAPSHOTS}.>", f"$JS.API.STREAM.*.OBJ_{SNAPSHOTS}", f"$JS.API.STREAM.MSG.DELETE.OBJ_{SNAPSHOTS}"]
READER_INBOX = "_AIOS.rd.>"
"""Where the event store's readers (aios.common.consumer) have JetStream deliver the log."""
_JS_CLIENT = ["$JS.ACK.>", "$JS.FC.>"]
"""Acknowledgements and flow-control answers of the consumers a client reads with."""
_JS_READ = ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
            "$JS.API.CONSUMER.>", "$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>"]


@dataclass(frozen=True)
class Role:
    """One NATS user: the subjects it may publish to and subscribe to; denials win over allows."""

    user: str
    why: str
    publish: list[str]
    subscribe: list[str]
    deny_publish: list[str] = field(default_factory=list)
    responds: bool = True
    """May answer requests on their reply subjects (``allow_responses``)."""
    inbox: str = "_INBOX"
    """The inbox prefix its client must use (``nats.connect(inbox_prefix=...)``)."""

    @property
    def password_env(self) -> str:
        return "AIOS_NATS_PASS_" + re.sub(r"[^A-Z0-9]", "_", self.user.upper())


def _service(user: str, why: str, events: list[str], publish: list[str] = [],  # noqa: B006
             subscribe: list[str] = []) -> Role:  # noqa: B006
    """A trusted control-plane service: the JetStream API (minus destroying the log), KV and object stores, the
    request subjects of the other services, and its own event subjects."""
    return Role(user, why,
                publish=[*(f"{EVT}.{e}.>" for e in events), "$JS.API.>", "$KV.>", "$O.>", *_JS_CLIENT,
                         "aios.sched.>", "aios.rm.>", "aios.registry.>", *publish],
                subscribe=["_INBOX.>", READER_INBOX, *subscribe],
                deny_publish=list(_GUARD_EVENTS))


ROLES: dict[str, Role] = {r.user: r for r in [
    Role("admin", "the operator: the CLI, `aios up`, migrations; everything", publish=[">"], subscribe=[">"]),
    _service("scheduler", "decides admissions, placements, preemptions; books devices on node aggregates",
             ["job", "node"], subscribe=["aios.sched.>"]),
    _service("resource-manager", "inventory, node loss, releasing orphaned leases, requeueing their jobs",
             ["job", "node"], subscribe=["aios.rm.>"]),
    _service("trainer", "starts and stops workers through the agents; records JobStarted and outcomes",
             ["job"], publish=["aios.agent.*.run", "aios.agent.*.stop"]),
    _service("model-registry", "model versions, aliases, evaluations; the serving router",
             ["model"], subscribe=["aios.registry.>"]),
    _service("gateway", "HTTP API, dashboard and the NATS tenant API: submits and cancels for tenants; an "
             "administrator's quotas and node commands (cordon, drain, forget)",
             ["job", "tenant", "node"], subscribe=["aios.telemetry.>", "aios.tenant.>"]),
    Role("node", "a device agent and the workers and model replicas it starts (they run user code): reports only",
         # no registry requests: a job's code deleted and re-aliased another tenant's models with them (replicas
         # read the registry's events; the registry service registers a job's model)
         publish=[f"{EVT}.node.>", f"{EVT}.run.>", "aios.telemetry.>", "aios.logs.>", "aios.coll.>",
                  *_JS_CLIENT, *_JS_READ,
                  *(f"$JS.API.STREAM.CREATE.{s}" for s in ("KV_AIOS_HEARTBEATS", "KV_AIOS_ENDPOINTS",
                                                           "OBJ_AIOS_CHECKPOINTS", "AIOS_LOGS", EVENTS_STREAM)),
                  "$JS.API.STREAM.PURGE.OBJ_AIOS_CHECKPOINTS", "$KV.AIOS_HEARTBEATS.>", "$KV.AIOS_ENDPOINTS.>",
                  "$O.AIOS_CHECKPOINTS.>"],
         subscribe=["_INBOX.>", READER_INBOX, "aios.agent.>", "aios.coll.>"],
         deny_publish=[*_GUARD_EVENTS, *_GUARD_SNAPSHOTS]),
]}
"""The identities every deployment has. Tenants are added per deployment with :func:`tenant_role`."""

SERVICE_ROLE = {"scheduler": "scheduler", "resource-manager": "resource-manager", "trainer": "trainer",
                "model-registry": "model-registry", "gateway": "gateway", "agent": "node"}
"""The identity each ``aios service <name>`` / ``aios agent`` process connects as."""


def tenant_role(tenant: str) -> Role:
    """A tenant's client: the tenant API on its own subjects, replies on its own inbox prefix; nothing else."""
    inbox = "_INBOX_" + re.sub(r"[^A-Za-z0-9_-]", "_", tenant)
    return Role(f"tenant-{tenant}", f"clients of tenant {tenant!r}: submit, list, describe, cancel its own jobs",
                publish=[f"aios.tenant.{tenant}.*"], subscribe=[f"{inbox}.>"], responds=False, inbox=inbox)


def roles_for(tenants: list[str]) -> list[Role]:
    """Every identity: the services', then one per tenant. Two tenants whose names differ only in '.', '_' or '-'
    would share a password variable or a reply inbox (one could read the other's replies): refused, naming them."""
    from aios.common.errors import ConfigError

    roles = [*ROLES.values(), *(tenant_role(t) for t in dict.fromkeys(tenants))]
    for what in ("password_env", "inbox"):
        seen: dict[str, str] = {}
        for role in roles:
            key = getattr(role, what)
            if what == "inbox" and role.inbox == "_INBOX":
                continue  # the services share the plain inbox prefix, as trusted peers
            if key in seen:
                raise ConfigError(f"tenants: {seen[key].removeprefix('tenant-')!r} and "
                                  f"{role.user.removeprefix('tenant-')!r} would share the NATS "
                                  f"{'password variable' if what == 'password_env' else 'reply inbox'} {key}: "
                                  "rename one (names that differ only in '.', '_' or '-' collide)")
            seen[key] = role.user
    return roles


def _list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def render(tenants: list[str], passwords: dict[str, str] | None = None) -> str:
    """The ``authorization`` block for a nats-server config (include it, or paste it). Passwords come from the
    server's environment unless given (``aios up --secure`` writes a private config with them inline)."""
    lines = ["# Generated by `aios nats-config` from aios.common.natsauth: edit the table there, not this file.",
             "# Each password is read from the server's environment (AIOS_NATS_PASS_<USER>); see docs/security.md.",
             "authorization {", "  users = ["]
    for role in roles_for(tenants):
        lines += [f"    # {role.user}: {role.why}",
                  f'    {{ user: "{role.user}", password: {_password(role, passwords)}, permissions: {{',
                  f"        publish: {{ allow: {_list(role.publish)}"
                  + (f", deny: {_list(role.deny_publish)}" if role.deny_publish else "") + " }",
                  f"        subscribe: {{ allow: {_list(role.subscribe)} }}"]
        if role.responds:
            lines.append("        allow_responses: true")
        lines.append("    } }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def _password(role: Role, passwords: dict[str, str] | None) -> str:
    if passwords is None:
        return f"${role.password_env}"
    return '"' + passwords[role.user].replace("\\", "\\\\").replace('"', '\\"') + '"'


def new_passwords(tenants: list[str]) -> dict[str, str]:
    import secrets

    return {role.user: secrets.token_urlsafe(24) for role in roles_for(tenants)}


def redact(url: str) -> str:
    """The URL with its password hidden, for logs."""
    head, at, host = url.rpartition("@")
    if not at:
        return url
    scheme, sep, user = head.rpartition("//")
    return f"{scheme}{sep}{user.split(':', 1)[0]}:***@{host}"


def redacted(servers: list[str]) -> str:
    """Server URLs as messages name them: comma-separated, passwords hidden."""
    return ",".join(redact(s) for s in servers)


def without_credentials(url: str) -> str:
    head, at, host = url.rpartition("@")
    return f"{head.rpartition('//')[0]}//{host}" if at else url


def url_with(url: str, user: str, password: str) -> str:
    """``nats://host:port`` with the user's credentials in it (every AIOS client reads them from the URL)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{host}", parts.path,
                       parts.query, parts.fragment))
