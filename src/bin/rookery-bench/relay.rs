//! The reference relay: the least work a server could do for the `chat` scenario. It speaks
//! just enough of the negotiation for the load client (STARTTLS, a SCRAM exchange whose proof
//! it does not check, binding), answers the one ping a load connection sends before a run, then
//! forwards each `<message/>` to the connection named in its `to` by scanning bytes, without
//! parsing XML. What it reaches is what the machine allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::split::find;

type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>>;

pub async fn run(listen: SocketAddr, domain: String) -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("rookery-relay-{}", std::process::id()));
    let tls = // The key exchange the servers compared with can do (OpenSSL 3.0 has no ML-KEM).
    rookery::transport::tls::server_config("", "", &dir, &domain, false)
        .map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let listener = TcpListener::bind(listen).await?;
    eprintln!("relay listening on {listen}");
    let routes: Routes = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, routes, domain) = (acceptor.clone(), routes.clone(), domain.clone());
        tokio::spawn(async move {
            let _ = serve(tcp, acceptor, routes, domain).await;
        });
    }
}

/// Bytes read so far and not yet consumed.
struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    async fn until<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        needle: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, needle) {
                let rest = self.buf.split_off(i + needle.len());
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn between<'a>(hay: &'a [u8], start: &[u8], end: &[u8]) -> Option<&'a [u8]> {
    let s = find(hay, start)? + start.len();
    let e = find(&hay[s..], end)? + s;
    Some(&hay[s..e])
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='relay' from='{domain}' version='1.0'>"
    )
}

async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    r: &mut Reader,
    domain: &str,
    features: &str,
) -> std::io::Result<()> {
    r.until(io, b"<stream:stream").await?;
    r.until(io, b">").await?;
    io.write_all(
        format!(
            "{}<stream:features>{features}</stream:features>",
            header(domain)
        )
        .as_bytes(),
    )
    .await?;
    io.flush().await
}

async fn serve(
    mut tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    routes: Routes,
    domain: String,
) -> std::io::Result<()> {
    let mut r = Reader { buf: Vec::new() };
    open(
        &mut tcp,
        &mut r,
        &domain,
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
    )
    .await?;
    r.until(&mut tcp, b"<starttls").await?;
    r.until(&mut tcp, b">").await?;
    tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    let mut io = acceptor.accept(tcp).await?;
    let mut r = Reader { buf: Vec::new() };
    open(
        &mut io,
        &mut r,
        &domain,
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism></mechanisms>",
    )
    .await?;
    let auth = r.until(&mut io, b"</auth>").await?;
    let first = between(&auth, b">", b"</auth>")
        .and_then(|b| BASE64.decode(b).ok())
        .unwrap_or_default();
    let first = String::from_utf8_lossy(&first).into_owned();
    let user =
        between(first.as_bytes(), b"n=", b",").map(|u| String::from_utf8_lossy(u).into_owned());
    let cnonce = first
        .rsplit_once("r=")
        .map(|(_, n)| n.to_owned())
        .unwrap_or_default();
    // One iteration: the relay spends nothing on key derivation, and neither does the client.
    let challenge = format!("r={cnonce}relay,s={},i=1", BASE64.encode(b"relaysalt"));
    io.write_all(
        format!(
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
            BASE64.encode(challenge)
        )
        .as_bytes(),
    )
    .await?;
    r.until(&mut io, b"</response>").await?;
    io.write_all(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await?;
    r.buf.clear();
    open(
        &mut io,
        &mut r,
        &domain,
        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>",
    )
    .await?;
    let bind = r.until(&mut io, b"</iq>").await?;
    let resource = between(&bind, b"<resource>", b"</resource>")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| "r".into());
    let jid = format!("{}@{domain}/{resource}", user.unwrap_or_default());
    io.write_all(format!("<iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{jid}</jid></bind></iq>").as_bytes())
        .await?;
    r.until(&mut io, b"</iq>").await?;
    io.write_all(b"<iq type='result' id='sess'/>").await?;
    io.flush().await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    if let Ok(mut m) = routes.lock() {
        m.insert(jid.clone(), tx);
    }
    let result = forward(&mut io, &mut r, &mut rx, &routes).await;
    if let Ok(mut m) = routes.lock() {
        m.remove(&jid);
    }
    result
}

enum Wake {
    Read(std::io::Result<usize>),
    Deliver(Option<Vec<u8>>),
}

async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    r: &mut Reader,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    routes: &Routes,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let wake = tokio::select! {
            n = io.read(&mut chunk) => Wake::Read(n),
            m = rx.recv() => Wake::Deliver(m),
        };
        match wake {
            Wake::Read(n) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                r.buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = find(&r.buf, b"</message>") {
                    let rest = r.buf.split_off(end + b"</message>".len());
                    let msg = std::mem::replace(&mut r.buf, rest);
                    let to = between(&msg, b"to='", b"'")
                        .map(|t| String::from_utf8_lossy(t).into_owned());
                    let route =
                        to.and_then(|t| routes.lock().ok().and_then(|m| m.get(&t).cloned()));
                    if let Some(tx) = route {
                        let _ = tx.try_send(msg);
                    }
                }
                if find(&r.buf, b"</stream:stream>").is_some() {
                    return Ok(());
                }
                // The load's round trip before a run is answered, as a server would.
                if let Some(at) = find(&r.buf, b"id='bench-rt'")
                    && let Some(end) = find(&r.buf[at..], b"</iq>")
                {
                    r.buf.drain(..at + end + b"</iq>".len());
                    io.write_all(b"<iq type='result' id='bench-rt'/>").await?;
                    io.flush().await?;
                }
                // Presence and other stanzas the load sends are dropped once complete.
                if find(&r.buf, b"<message").is_none() {
                    r.buf.clear();
                }
            }
            Wake::Deliver(Some(msg)) => {
                io.write_all(&msg).await?;
                io.flush().await?;
            }
            Wake::Deliver(None) => return Ok(()),
        }
    }
}
