"""The command line: account management and start-up errors."""

import subprocess

from conftest import Server, binary


def test_user_commands(tmp_path):
    s = Server(tmp_path)
    assert s.cli("user", "add", "alice@localhost", "--password", "pw").returncode == 0
    r = s.cli("user", "add", "bob", stdin="from-stdin\n")
    assert r.returncode == 0, r.stderr
    dup = s.cli("user", "add", "alice@localhost", "--password", "x")
    assert dup.returncode != 0
    assert "already exists" in dup.stderr
    assert len(dup.stderr.strip().splitlines()) == 1
    wrong = s.cli("user", "add", "eve@elsewhere", "--password", "x")
    assert wrong.returncode != 0 and "domain" in wrong.stderr
    listed = s.cli("user", "list")
    assert listed.stdout.split() == ["alice@localhost", "bob@localhost"]
    assert s.cli("user", "passwd", "alice", "--password", "new").returncode == 0
    assert s.cli("user", "passwd", "nobody", "--password", "new").returncode != 0
    assert s.cli("user", "delete", "bob@localhost").returncode == 0
    assert s.cli("user", "delete", "bob@localhost").returncode != 0
    assert s.cli("user", "list").stdout.split() == ["alice@localhost"]


def test_password_change_takes_effect(tmp_path):
    import asyncio

    from conftest import Client, connected, run

    s = Server(tmp_path)
    s.add_user("alice@localhost", "old")
    assert s.cli("user", "passwd", "alice@localhost", "--password", "new").returncode == 0
    s.start()
    try:
        async def go():
            c = Client(s, "alice@localhost/x", "old")
            assert not await c.login()
            await c.close()
            c = await connected(s, "alice@localhost/y", "new")
            await c.close()

        run(go())
    finally:
        assert s.stop() == 0


def test_bad_config_stops_startup_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[listen]\nc2z = "127.0.0.1:1"\n')
    r = subprocess.run([binary(), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "c2z" in r.stderr
    cfg.write_text('[limits]\nmax_stanza_bytes = "big"\n')
    r = subprocess.run([binary(), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "max_stanza_bytes" in r.stderr
    r = subprocess.run([binary(), "serve", "--config", str(tmp_path / "missing.toml")], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0
    assert "missing.toml" in r.stderr


def test_port_in_use_is_a_one_line_error(tmp_path):
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    s = Server(tmp_path)
    s.config.write_text(s.config.read_text().replace(f"c2s = \"127.0.0.1:{s.c2s}\"", f"c2s = \"127.0.0.1:{port}\""))
    r = subprocess.run([binary(), "serve", "--config", str(s.config)], capture_output=True, text=True, timeout=10)
    blocker.close()
    assert r.returncode != 0
    assert "listen.c2s" in r.stderr
