//! Stream negotiation with real clients: STARTTLS and direct TLS, SCRAM, PLAIN, failures.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "current_thread")]
async fn scram_login_over_starttls_and_direct_tls() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let c = XmppClient::connect(&server, "alice@localhost/desk", "secret").await;
    assert_eq!(c.jid.to_string(), "alice@localhost/desk");
    c.close().await;
    let c = XmppClient::connect_via(&server, "alice@localhost/phone", "secret", true).await;
    assert_eq!(c.jid.to_string(), "alice@localhost/phone");
    c.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn server_picks_a_resource_when_none_is_asked_for() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    raw.read_until("</stream:features>").await;
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("alice", "secret")
    ))
    .await;
    raw.read_until("<success").await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    assert!(
        features.contains("urn:xmpp:features:rosterver"),
        "{features}"
    );
    raw.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    let bound = raw.read_until("</iq>").await;
    assert!(bound.contains("<jid>alice@localhost/"), "{bound}");
    // The legacy session request older clients send still gets a result.
    raw.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    let session = raw.read_until("type='result'").await;
    assert!(session.contains("id='s'"), "{session}");
    raw.send("</stream:stream>").await;
    // The closing tag, then TLS's own close (both in one write).
    let rest = raw.read_to_tls_close().await;
    assert!(rest.ends_with("</stream:stream>"), "{rest}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_is_not_authorized() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let mut raw = Raw::tls(&server).await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    for mech in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(
            features.contains(&format!(">{mech}<")),
            "{mech} missing in {features}"
        );
    }
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("alice", "wrong")
    ))
    .await;
    let failure = raw.read_until("</failure>").await;
    assert!(failure.contains("<not-authorized"), "{failure}");
    // An unknown user fails the same way.
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("nobody", "secret")
    ))
    .await;
    let failure = raw.read_until("</failure>").await;
    assert!(failure.contains("<not-authorized"), "{failure}");
    // The right password still works on the same stream.
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("alice", "secret")
    ))
    .await;
    raw.read_until("<success").await;
    server.shutdown().await;
}

/// `rookery user passwd` and `user delete` write the store beside a running server, which
/// keeps the credentials of recent logins in memory: their changes take effect within a
/// second or so, through the store's credentials version.
#[tokio::test]
async fn credentials_changed_beside_the_running_server_take_effect() {
    let server = TestServer::start().await;
    server.add_user("alice", "first").await;
    server.add_user("bob", "secret").await;
    assert!(Raw::password_works(&server, "alice", "first").await);
    assert!(Raw::password_works(&server, "bob", "secret").await);
    // What the CLI does: its own connection to the store.
    let cli = rookery::store::open(&server.config.storage_url())
        .await
        .expect("store");
    let creds = rookery::auth::scram::derive_credentials("second", 4096).expect("creds");
    cli.set_credentials("alice", &creds).await.expect("passwd");
    assert!(cli.delete_account("bob").await.expect("delete"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Raw::password_works(&server, "alice", "first").await
        || Raw::password_works(&server, "bob", "secret").await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "old credentials still work"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Raw::password_works(&server, "alice", "second").await);
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn scram_with_wrong_password_fails_in_tokio_xmpp() {
    use tokio_xmpp::connect::ServerConnector;
    use tokio_xmpp::xmlstream::Timeouts;
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let connector = Connector {
        addr: server.c2s,
        tls: server.tls(),
        direct_tls: false,
    };
    let jid = tokio_xmpp::jid::Jid::new("alice@localhost").unwrap();
    let (pending, binding) = connector
        .connect(&jid, "jabber:client", Timeouts::tight())
        .await
        .unwrap();
    let (features, stream) = pending.recv_features().await.unwrap();
    let creds = sasl::common::Credentials::default()
        .with_username("alice")
        .with_password("wrong")
        .with_channel_binding(binding);
    let err = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
        .await
        .err()
        .expect("login must fail");
    assert!(format!("{err:?}").contains("NotAuthorized"), "{err:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn plain_is_refused_before_tls() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let mut raw = Raw::tcp(server.c2s).await;
    raw.send(&stream_header(DOMAIN)).await;
    let features = raw.read_until("</stream:features>").await;
    assert!(features.contains("<starttls"), "{features}");
    assert!(features.contains("<required"), "{features}");
    assert!(
        !features.contains("mechanism"),
        "no SASL before TLS: {features}"
    );
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain("alice", "secret")
    ))
    .await;
    let failure = raw.read_until("</failure>").await;
    assert!(failure.contains("<encryption-required"), "{failure}");
    // Anything else before TLS ends the stream.
    raw.send("<message to='bob@localhost'><body>x</body></message>")
        .await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("<policy-violation"), "{closed}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_host_and_bad_version_get_stream_errors() {
    let server = TestServer::start().await;
    let mut raw = Raw::tcp(server.c2s).await;
    raw.send(&stream_header("example.org")).await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("<stream:stream"), "header first: {closed}");
    assert!(closed.contains("<host-unknown"), "{closed}");

    let mut raw = Raw::tcp(server.c2s).await;
    raw.send(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         to='localhost' version='2.0'>",
    )
    .await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("<unsupported-version"), "{closed}");

    let mut raw = Raw::tcp(server.c2s).await;
    raw.send("<stream xmlns='jabber:client' to='localhost' version='1.0'>")
        .await;
    let closed = raw.read_to_close().await;
    assert!(closed.contains("<stream:stream"), "header first: {closed}");
    assert!(closed.contains("<invalid-namespace"), "{closed}");
    server.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_closes_every_stream_with_system_shutdown() {
    let server = TestServer::start().await;
    server.add_user("alice", "secret").await;
    let mut raw = Raw::login(&server, "alice", "secret", "r").await;
    let running = server.running.as_ref().expect("running");
    assert_eq!(running.server.sessions.count(), 1);
    let reader = tokio::spawn(async move { raw.read_to_close().await });
    server.shutdown().await;
    let closed = reader.await.expect("reader");
    assert!(closed.contains("<system-shutdown"), "{closed}");
    assert!(closed.ends_with("</stream:stream>"), "{closed}");
}

#[tokio::test(flavor = "current_thread")]
async fn silent_clients_are_pinged_and_dead_ones_closed() {
    let server = TestServer::start_with(|c| c.limits.idle_seconds = 1).await;
    server.add_user("alice", "secret").await;
    // One that answers the ping stays.
    let mut alive = Raw::login(&server, "alice", "secret", "alive").await;
    let ping = alive.read_until("</iq>").await;
    assert!(ping.contains("urn:xmpp:ping"), "{ping}");
    let id = ping
        .split("id='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("ping id")
        .to_owned();
    alive
        .send(&format!("<iq type='result' id='{id}' to='localhost'/>"))
        .await;
    // One that does not is closed with connection-timeout.
    let mut dead = Raw::login(&server, "alice", "secret", "dead").await;
    let closed = dead.read_to_close().await;
    assert!(closed.contains("urn:xmpp:ping"), "{closed}");
    assert!(closed.contains("<connection-timeout"), "{closed}");
    // The one that answered got a second ping instead of being closed.
    let again = alive.read_until("</iq>").await;
    assert!(again.contains("urn:xmpp:ping"), "{again}");
    server.shutdown().await;
}
