"""A real Prosody (Debian's prosody package, 0.12) for the federation tests: one VirtualHost and
one MUC component on its own loopback address with the standard ports, the test certificates
from certs/test/, and a hosts file instead of DNS.

Prosody refuses to run as root, so it runs as the `prosody` user, in a directory of its own
under /tmp (pytest's tmp_path is under a root-only directory it could not enter). Its log is
copied next to the test's other files when it stops."""

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CERTS = REPO / "certs" / "test"
START_TIMEOUT = 15

# rookery.test and its MUC service live on 127.0.0.2 (see Server in conftest.py).
DEFAULT_HOSTS = {"127.0.0.2": ["rookery.test", "conference.rookery.test"]}


def lua_str(s) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Prosody:
    def __init__(
        self,
        tmp_path: Path,
        domain="prosody.test",
        address="127.0.0.3",
        cert="prosody.test",
        secure_auth=True,
        hosts=None,
        trust_ca=True,
        modules=(),
        extra="",
    ):
        """cert names a pair of files in certs/test/ (`<cert>.pem`, `<cert>.key`). trust_ca:
        verify peers with the test CA (else Prosody knows no CA that signed a test certificate,
        so it can authenticate peers by dialback only). hosts maps an address to the names it
        resolves to for Prosody (its only name resolution). modules: more modules to enable (such as
        "s2s_bidi"). extra: Lua for the global section."""
        self.tmp_path = Path(tmp_path)
        self.domain = domain
        self.muc = f"conference.{domain}"
        self.address = address
        self.c2s = 5222
        self.s2s = 5269
        if shutil.which("prosody") is None:
            raise RuntimeError("the federation tests need Prosody: apt-get install prosody")
        self.user = pwd.getpwnam("prosody")
        self.dir = Path(tempfile.mkdtemp(prefix="prosody-"))
        self.data = self.dir / "data"
        self.data.mkdir()
        self.log = self.dir / "prosody.log"
        # What is kept of it in tmp_path: its log and what it printed.
        self.kept_log = self.tmp_path / f"prosody-{domain}.log"
        self.out = self.tmp_path / f"prosody-{domain}.out"
        (self.dir / "certs").mkdir()
        self.config = self.dir / "prosody.cfg.lua"
        self.cert_file = CERTS / f"{cert}.pem"
        shutil.copy(self.cert_file, self.dir / "cert.pem")
        shutil.copy(CERTS / f"{cert}.key", self.dir / "cert.key")
        # Without the test CA, its own (self-signed or leaf) certificate is the only "CA".
        shutil.copy(CERTS / ("ca.pem" if trust_ca else f"{cert}.pem"), self.dir / "ca.pem")
        hosts = DEFAULT_HOSTS if hosts is None else hosts
        (self.dir / "hosts").write_text(
            "".join(f"{addr} {' '.join(names)}\n" for addr, names in hosts.items())
        )
        d = self.dir
        self.config.write_text(
            f"""-- written by tests/slixmpp/prosody.py
data_path = {lua_str(self.data)}
pidfile = {lua_str(d / "prosody.pid")}
log = {{ debug = {lua_str(self.log)} }}
interfaces = {{ {lua_str(address)} }}
c2s_ports = {{ {self.c2s} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ {self.s2s} }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
use_ipv6 = false
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence";
    "mam"; "carbons"; "time"; "version";
    {"".join(f'"{m}"; ' for m in modules)}
}}
modules_disabled = {{ "http"; "admin_telnet"; "admin_shell"; "admin_socket" }}
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {"true" if secure_auth else "false"}
s2s_timeout = 10
certificates = {lua_str(d / "certs")}
archive_expires_after = "never"
ssl = {{
    certificate = {lua_str(d / "cert.pem")};
    key = {lua_str(d / "cert.key")};
    cafile = {lua_str(d / "ca.pem")};
}}
-- libunbound asks the nameserver of resolv.conf by default, and ignores /etc/hosts.
unbound = {{
    resolvconf = false;
    hoststxt = {lua_str(d / "hosts")};
    forward = {{ "127.0.0.1" }};
}}
{extra}
VirtualHost {lua_str(domain)}

Component {lua_str(self.muc)} "muc"
    modules_enabled = {{ "muc_mam" }}
    restrict_room_creation = false
"""
        )
        for p in [d, *d.rglob("*")]:
            os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self.proc = None

    def as_prosody(self, *argv):
        """argv run as the prosody user, with its groups."""
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--init-groups",
            "--reset-env",
            *argv,
        ]

    def ctl(self, *args):
        return subprocess.run(
            self.as_prosody("prosodyctl", "--config", str(self.config), *args),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            cwd=self.dir,
        )

    def add_user(self, user, password):
        """user is a local part or a bare JID of this domain."""
        node, _, host = user.partition("@")
        r = self.ctl("register", node, host or self.domain, password)
        assert r.returncode == 0, r.stdout + r.stderr

    def log_text(self) -> str:
        """Its log so far (also after stop())."""
        try:
            log = self.log if self.log.exists() else self.kept_log
            return log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    def start(self):
        """Starts Prosody in the foreground (-F) and waits until its c2s port accepts."""
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                self.as_prosody("prosody", "--config", str(self.config), "-F"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prosody exited with {self.proc.returncode}:\n"
                    + self.out.read_text()
                    + self.log_text()
                )
            try:
                socket.create_connection((self.address, self.c2s), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("prosody did not start:\n" + self.log_text())

    def stop(self):
        """Stops Prosody, keeps its log as <tmp_path>/prosody-<domain>.log and removes its
        directory. Returns its exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir.exists():
            if self.log.exists():
                shutil.copy(self.log, self.kept_log)
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode if self.proc else 0

    def ssl_context(self):
        """For clients: trusts the test CA, and the certificate Prosody presents (for the
        self-signed one)."""
        ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        ctx.load_verify_locations(cafile=str(self.cert_file))
        return ctx
