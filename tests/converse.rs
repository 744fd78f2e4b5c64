//! A real web client against rookery: Converse.js (the full UI build from npm) runs in headless
//! Chromium, driven by tests/web/converse.mjs with playwright-core, logs in as alice over XMPP
//! over WebSocket, and exchanges a chat message both ways with bob on a tokio-xmpp client.
//!
//! Needs `node`, Debian's `chromium` and `npm ci --prefix tests/web`, which scripts/test
//! installs; without them the test fails and says what is missing. On a failure the panic holds
//! the browser's console, where Converse logs every stanza; `CONVERSE_CONSOLE=1` prints it for a
//! passing run too (with `--nocapture`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How long the browser may take to start, load Converse and log in, and so on for each step.
const BROWSER_WAIT: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

const FROM_ALICE: &str = "Hello bob, this is Converse.js in Chromium";
const FROM_BOB: &str = "Hello alice, tokio-xmpp here";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Fails with what to install when something the browser needs is missing.
fn check_prerequisites() {
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node` cannot run ({node:?}): install Debian's nodejs and npm (scripts/test does)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium and chromium-driver (scripts/test does)"
    );
    for module in [
        "converse.js/dist/converse.min.js",
        "playwright-core/package.json",
    ] {
        let path = web_dir().join("node_modules").join(module);
        assert!(
            path.exists(),
            "{} is missing: run `npm ci --prefix tests/web` (scripts/test does)",
            path.display()
        );
    }
}

/// tests/web/converse.mjs running: its progress lines, and its stderr kept for a failure.
struct Browser {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
    seen: Vec<String>,
}

impl Browser {
    fn start(server: &TestServer, jid: &str, password: &str, peer: &str) -> Browser {
        let mut child = Command::new("node")
            .arg(web_dir().join("converse.mjs"))
            .arg(format!("ws://{}/xmpp-websocket", server.http))
            .args([jid, password, peer, FROM_ALICE, FROM_BOB])
            .env("CHROMIUM_PATH", CHROMIUM)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Browser {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr: Some(stderr),
            seen: Vec::new(),
        }
    }

    /// Stops the script and panics with `why`, what it printed and its stderr (the browser's
    /// console with every stanza).
    async fn fail(&mut self, why: String) -> ! {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
        panic!(
            "{why}\n--- converse.mjs stdout ---\n{}\n--- converse.mjs stderr ---\n{stderr}",
            self.seen.join("\n")
        );
    }

    /// Waits for the progress line `line` (exactly), skipping others.
    async fn expect_line(&mut self, line: &str) {
        loop {
            match tokio::time::timeout(BROWSER_WAIT, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => {
                    let found = l == line;
                    self.seen.push(l);
                    if found {
                        return;
                    }
                }
                Ok(Ok(None)) => {
                    self.fail(format!("converse.mjs ended before {line:?}"))
                        .await
                }
                Ok(Err(e)) => self.fail(format!("reading converse.mjs: {e}")).await,
                Err(_) => self.fail(format!("timed out waiting for {line:?}")).await,
            }
        }
    }

    /// Waits for a progress line starting with `prefix` and returns the rest of it.
    async fn expect_prefix(&mut self, prefix: &str) -> String {
        loop {
            match tokio::time::timeout(BROWSER_WAIT, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => {
                    self.seen.push(l.clone());
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Ok(Ok(None)) => {
                    self.fail(format!("converse.mjs ended before {prefix:?}"))
                        .await
                }
                Ok(Err(e)) => self.fail(format!("reading converse.mjs: {e}")).await,
                Err(_) => self.fail(format!("timed out waiting for {prefix:?}")).await,
            }
        }
    }

    async fn exit_status(&mut self) -> ExitStatus {
        match tokio::time::timeout(BROWSER_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => self.fail(format!("waiting for converse.mjs: {e}")).await,
            Err(_) => self.fail("converse.mjs did not exit".to_owned()).await,
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn converse_in_chromium_chats_with_a_tokio_xmpp_client_over_websocket() {
    check_prerequisites();
    let server = TestServer::start().await;
    server.add_user("alice", "alice-pw").await;
    server.add_user("bob", "bob-pw").await;
    let mut bob = XmppClient::connect(&server, "bob@localhost/tokio", "bob-pw").await;
    bob.send("<presence/>").await;

    let mut browser = Browser::start(&server, "alice@localhost", "alice-pw", "bob@localhost");
    browser.expect_line("page loaded").await;
    let alice = browser.expect_prefix("connected ").await;
    assert!(
        alice.starts_with("alice@localhost/"),
        "Converse bound {alice:?}, not a resource of alice@localhost"
    );
    browser.expect_line(&format!("sent {FROM_ALICE}")).await;

    // Typed into Converse's chat window, the message reaches bob from alice's bound resource.
    let message = bob
        .expect(
            "alice's message from Converse",
            is_message_with_body(FROM_ALICE),
        )
        .await;
    assert_eq!(message.attr("from"), Some(alice.as_str()));
    assert_eq!(message.attr("type"), Some("chat"));

    // bob's reply to that resource shows up in Converse's chat with him.
    bob.send(&format!(
        "<message type='chat' to='{alice}' id='reply1'><body>{FROM_BOB}</body></message>"
    ))
    .await;
    browser.expect_line(&format!("received {FROM_BOB}")).await;
    let status = browser.exit_status().await;
    if !status.success() {
        browser
            .fail(format!("converse.mjs exited with {status}"))
            .await;
    }
    if std::env::var_os("CONVERSE_CONSOLE").is_some()
        && let Some(stderr) = browser.stderr.take()
    {
        // The browser's console with every stanza, for a look at a passing run (--nocapture).
        println!("{}", stderr.await.unwrap_or_default());
    }
    bob.close().await;
    server.shutdown().await;
}
