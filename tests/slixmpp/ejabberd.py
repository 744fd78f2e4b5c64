"""A real ejabberd (Debian's ejabberd package, 23.01) for the federation tests: one virtual host
and one MUC service on its own loopback address with the standard ports, the test certificates
from certs/test/, and a resolver that knows the peers without DNS.

ejabberd runs as the `ejabberd` user (ejabberdctl runs only as root or as that user, and as root
it switches with `su`, which resets the environment), from a directory of its own under /tmp
(pytest's tmp_path is under a root-only directory it could not enter). Its log is copied next to
the test's other files when it stops.

Name resolution: ejabberd's outgoing s2s streams (p1_xmpp's xmpp_stream_out) look up SRV records
with Erlang's own resolver (inet_res), then resolve the SRV target with the C library's
getaddrinfo, which only knows /etc/hosts and DNS. So the `{host, ...}` lines of an inetrc file
do not help. Instead the VM starts with the SRV records of each peer in inet_res's cache
(inet_db:add_rr, through -eval in ERL_OPTIONS), each pointing at the peer's IP address written
as the target, which getaddrinfo parses without a lookup; and the inetrc file ejabberdctl hands
to the VM (ERL_INETRC = <config dir>/inetrc) reads no resolv.conf, so every other query fails at
once instead of asking a nameserver.

Erlang distribution listens on a port of its own (ERL_DIST_PORT), so no epmd is involved and
nothing stays registered after the node stops."""

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import CERTS, free_port

START_TIMEOUT = 30  # the VM, mnesia and every module: a few seconds on an idle machine
STOP_TIMEOUT = 15

# rookery.test and its MUC service on 127.0.0.2 (see Server in conftest.py).
DEFAULT_ROUTES = {
    "rookery.test": ("127.0.0.2", 5269),
    "conference.rookery.test": ("127.0.0.2", 5269),
}


def yaml_str(s) -> str:
    return json.dumps(str(s))  # a JSON string is a YAML double-quoted scalar


class Ejabberd:
    def __init__(
        self,
        tmp_path: Path,
        domain="ejabberd.test",
        address="127.0.0.4",
        cert="ejabberd.test",
        trust_ca=True,
        dialback=False,
        routes=None,
        extra="",
    ):
        """cert names a pair of files in certs/test/ (`<cert>.pem`, `<cert>.key`). trust_ca:
        verify peers with the test CA (else ejabberd's only "CA" is its own certificate, so no
        test certificate of a peer verifies). dialback: load mod_s2s_dialback, which also makes
        ejabberd accept its outgoing streams without verifying the peer's certificate (its
        s2s_out_tls_verify hook); without it, certificates (SASL EXTERNAL) are the only way in
        either direction. routes maps a peer's domain to the (address, port) ejabberd connects
        to for it. extra: YAML appended to ejabberd.yml (top-level options)."""
        self.tmp_path = Path(tmp_path)
        self.domain = domain
        self.muc = f"conference.{domain}"
        self.address = address
        self.c2s = 5222
        self.s2s = 5269
        self.http = 5280
        # Not on the PATH of the ejabberd user (setpriv --reset-env), so by its full name.
        self.ejabberdctl = shutil.which("ejabberdctl", path="/usr/sbin:/usr/bin")
        if self.ejabberdctl is None:
            raise RuntimeError("the federation tests need ejabberd: apt-get install ejabberd")
        self.user = pwd.getpwnam("ejabberd")
        self.dir = Path(tempfile.mkdtemp(prefix="ejabberd-"))
        d = self.dir
        self.logs = d / "logs"
        self.spool = d / "spool"
        self.logs.mkdir()
        self.spool.mkdir()
        self.log = self.logs / "ejabberd.log"
        self.pid_file = d / "ejabberd.pid"
        # What is kept of it in tmp_path: its log and what the VM printed.
        self.kept_log = self.tmp_path / f"ejabberd-{domain}.log"
        self.out = self.tmp_path / f"ejabberd-{domain}.out"
        # A unique node name: a leftover node of another run can never answer for this one.
        self.node = f"rookerytest-{secrets.token_hex(4)}@localhost"
        self.dist_port = free_port()

        self.cert_file = CERTS / f"{cert}.pem"
        self.config = d / "ejabberd.yml"
        self.proc = None
        try:
            self._write_files(cert, trust_ca, dialback, routes, extra)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise

    def _write_files(self, cert, trust_ca, dialback, routes, extra):
        d = self.dir
        # ejabberd wants the certificate and its key in one file.
        key = (CERTS / f"{cert}.key").read_text()
        (d / "cert.pem").write_text(self.cert_file.read_text() + key)
        shutil.copy(CERTS / ("ca.pem" if trust_ca else f"{cert}.pem"), d / "ca.pem")

        routes = DEFAULT_ROUTES if routes is None else routes
        # ejabberdctl splits ERL_OPTIONS on blanks and does not quote it: each expression must be
        # one word, and hold nothing the shell would glob.
        records = [
            f'inet_db:add_rr("_xmpp-server._tcp.{name}",in,srv,86400,{{0,0,{port},"{ip}"}})'
            for name, (ip, port) in routes.items()
        ]
        assert not any(c in r for r in records for c in " '*?["), records
        evals = " ".join(f"-eval {r}" for r in records)
        (d / "ejabberdctl.cfg").write_text(
            "# written by tests/slixmpp/ejabberd.py\n"
            f"ERLANG_NODE={self.node}\n"
            f"ERL_DIST_PORT={self.dist_port}\n"
            f"ERL_OPTIONS='-kernel inet_dist_use_interface {{127,0,0,1}} {evals}'\n"
            f"EJABBERD_PID_PATH={self.pid_file}\n"
        )
        (d / "inetrc").write_text('{resolv_conf, ""}.\n')

        dialback_module = "  mod_s2s_dialback: {}\n" if dialback else ""
        address = self.address
        self.config.write_text(
            f"""# written by tests/slixmpp/ejabberd.py
hosts: [{yaml_str(self.domain)}]
loglevel: debug
log_rotate_count: 0
# Debug logging is bursty: by default the logger drops what exceeds 500 lines a second.
log_burst_limit_count: 100000
certfiles: [{yaml_str(d / "cert.pem")}]
ca_file: {yaml_str(d / "ca.pem")}
auth_method: internal
s2s_use_starttls: required
s2s_dns_timeout: 2
s2s_dns_retries: 1
outgoing_s2s_timeout: 10
outgoing_s2s_families: [ipv4]
outgoing_s2s_ipv4_address: {yaml_str(address)}
# After a failed outgoing stream ejabberd bounces everything for that peer for this long.
s2s_max_retry_delay: 2
listen:
  - port: {self.c2s}
    ip: {yaml_str(address)}
    module: ejabberd_c2s
    starttls_required: true
  - port: {self.s2s}
    ip: {yaml_str(address)}
    module: ejabberd_s2s_in
  - port: {self.http}
    ip: {yaml_str(address)}
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
api_permissions:
  "account provisioning":
    from: mod_http_api
    who:
      ip: 127.0.0.0/8
    what: "register"
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
modules:
  mod_disco: {{}}
  mod_http_api: {{}}
  mod_mam: {{}}
  mod_muc:
    host: {yaml_str(self.muc)}
    access: all
    access_create: all
  mod_offline: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
{dialback_module}{extra}"""
        )
        for p in [d, *d.rglob("*")]:
            os.chown(p, self.user.pw_uid, self.user.pw_gid)

    def as_ejabberd(self, *argv):
        """argv run as the ejabberd user, with its groups and HOME in the throwaway directory
        (where the VM keeps its .erlang.cookie)."""
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--init-groups",
            "--reset-env",
            "env",
            f"HOME={self.dir}",
            *argv,
        ]

    def ctl_argv(self, *args):
        d = self.dir
        return self.as_ejabberd(
            self.ejabberdctl,
            "--config-dir", str(d),
            "--config", str(self.config),
            "--ctl-config", str(d / "ejabberdctl.cfg"),
            "--logs", str(self.logs),
            "--spool", str(self.spool),
            *args,
        )  # fmt: skip

    def add_user(self, user, password):
        """user is a local part or a bare JID of this domain. Through the HTTP API: one request
        instead of one more VM per account."""
        node, _, host = user.partition("@")
        body = json.dumps({"user": node, "host": host or self.domain, "password": password})
        req = urllib.request.Request(
            f"http://{self.address}:{self.http}/api/register",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=STOP_TIMEOUT) as r:
            assert r.status == 200, r.read()

    def log_text(self) -> str:
        """Its log so far (also after stop())."""
        try:
            log = self.log if self.log.exists() else self.kept_log
            return log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    def wait_for_log(self, text, timeout=5.0) -> bool:
        """Whether text appears in the log within timeout seconds: the logger writes the file
        with a delay, so a line about what just happened may not be there yet."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def start(self):
        """Starts ejabberd in the foreground, so that the process is ours to wait for (quiet:
        only critical messages on the console, the rest goes to the log), and waits until it
        says it has started and its ports accept."""
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                self.ctl_argv("foreground-quiet"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # its own process group, for the last resort in stop()
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ejabberd exited with {self.proc.returncode}:\n"
                    + self.out.read_text(errors="replace")
                    + self.log_text()
                )
            if " is started in the node " in self.log_text():
                try:
                    for port in (self.c2s, self.s2s, self.http):
                        socket.create_connection((self.address, port), timeout=0.2).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(
            "ejabberd did not start:\n" + self.out.read_text(errors="replace") + self.log_text()
        )

    def _kill_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self):
        """Stops ejabberd, keeps its log as <tmp_path>/ejabberd-<domain>.log and removes its
        directory. SIGTERM makes the VM run init:stop(), the same orderly shutdown `ejabberdctl
        stop` asks for, without starting a second VM to ask. Returns the exit code of
        ejabberdctl."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(int(self.pid_file.read_text()), signal.SIGTERM)
            except (OSError, ValueError):  # not started far enough to write its pid
                self._kill_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            # ejabberdctl returns when the VM has exited; its helper processes in the same
            # process group (erl_child_setup) follow at once, or are made to.
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                self._kill_group(signal.SIGKILL)
        if self.dir.exists():
            if self.log.exists():
                shutil.copy(self.log, self.kept_log)
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode if self.proc else 0

    def ssl_context(self):
        """For clients: trusts the test CA, and the certificate ejabberd presents (for the
        self-signed one)."""
        ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        ctx.load_verify_locations(cafile=str(self.cert_file))
        return ctx
