//! Finding a peer server (RFC 6120 §3.2, XEP-0368): a static route from `s2s.routes`, else the
//! DNS SRV records `_xmpps-server._tcp` (TLS from the first byte) and `_xmpp-server._tcp`
//! (STARTTLS) in priority order, else the domain itself on port 5269.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

/// One place to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
}

/// A DNS resolver, or None when the system has no usable configuration (then only static
/// routes and the system's own name lookup work).
pub fn resolver() -> Option<TokioResolver> {
    match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: peers need static routes");
            None
        }
    }
}

/// Where to connect for `domain`, best first.
pub async fn targets(
    resolver: Option<&TokioResolver>,
    routes: &std::collections::BTreeMap<String, String>,
    domain: &str,
) -> Vec<Target> {
    if let Some((host, port, direct_tls)) = routes
        .get(domain)
        .and_then(|r| crate::config::parse_route(r))
    {
        return vec![Target {
            host,
            port,
            direct_tls,
        }];
    }
    let mut records = Vec::new();
    if let Some(resolver) = resolver {
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            let name = format!("{service}.{domain}.");
            let Ok(lookup) = resolver.lookup(name.as_str(), RecordType::SRV).await else {
                continue;
            };
            for record in lookup.answers() {
                if let RData::SRV(srv) = &record.data {
                    records.push(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        direct_tls,
                        host: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                        port: srv.port,
                    });
                }
            }
        }
    }
    order(records, domain)
}

/// One SRV answer; an empty host is the "." target.
#[derive(Debug, Clone)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    direct_tls: bool,
    host: String,
    port: u16,
}

/// The SRV answers in the order to try them (RFC 2782, RFC 6120 §3.2.1, XEP-0368 §3): lower
/// priority first; at equal priority heavier weight first (a fixed order rather than RFC
/// 2782's weighted lottery, so that retries go down the list), and TLS from the first byte
/// before STARTTLS. No records: the domain itself on 5269. Only "." targets: the service is
/// decidedly not available, so nothing.
fn order(mut records: Vec<SrvRecord>, domain: &str) -> Vec<Target> {
    if records.is_empty() {
        return vec![Target {
            host: domain.to_owned(),
            port: 5269,
            direct_tls: false,
        }];
    }
    records.retain(|r| !r.host.is_empty());
    records.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight), !r.direct_tls));
    records
        .into_iter()
        .map(|r| Target {
            host: r.host,
            port: r.port,
            direct_tls: r.direct_tls,
        })
        .collect()
}

/// The addresses of a target host: an IP literal as is, else A/AAAA records, else the
/// system's lookup (which also reads /etc/hosts).
pub async fn addresses(resolver: Option<&TokioResolver>, target: &Target) -> Vec<SocketAddr> {
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, target.port)];
    }
    if let Some(resolver) = resolver
        && let Ok(ips) = resolver.lookup_ip(target.host.as_str()).await
    {
        let found: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::new(ip, target.port))
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map(|a| a.collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, direct_tls: bool, host: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            direct_tls,
            host: host.into(),
            port: if direct_tls { 5270 } else { 5269 },
        }
    }

    #[test]
    fn srv_answers_are_tried_by_priority_weight_then_direct_tls() {
        let ordered = order(
            vec![
                srv(20, 0, false, "backup.peer.test"),
                srv(10, 5, false, "light.peer.test"),
                srv(10, 50, false, "heavy.peer.test"),
                srv(10, 50, true, "heavy.peer.test"),
            ],
            "peer.test",
        );
        let hosts: Vec<_> = ordered
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.direct_tls))
            .collect();
        assert_eq!(
            hosts,
            [
                ("heavy.peer.test", 5270, true),
                ("heavy.peer.test", 5269, false),
                ("light.peer.test", 5269, false),
                ("backup.peer.test", 5269, false),
            ]
        );
        // "." alone: the domain has no XMPP service; no records at all: port 5269.
        assert!(order(vec![srv(0, 0, false, "")], "peer.test").is_empty());
        assert_eq!(order(Vec::new(), "peer.test")[0].port, 5269);
    }

    #[tokio::test]
    async fn a_static_route_wins_and_no_dns_means_port_5269() {
        let mut routes = std::collections::BTreeMap::new();
        routes.insert("peer.test".to_owned(), "127.0.0.3:5270".to_owned());
        let t = targets(None, &routes, "peer.test").await;
        assert_eq!(
            t,
            vec![Target {
                host: "127.0.0.3".into(),
                port: 5270,
                direct_tls: false
            }]
        );
        routes.insert("tls.test".to_owned(), "tls://127.0.0.4:5270".to_owned());
        let t = targets(None, &routes, "tls.test").await;
        assert_eq!(
            (t[0].host.as_str(), t[0].port, t[0].direct_tls),
            ("127.0.0.4", 5270, true)
        );
        let t = targets(None, &routes, "other.test").await;
        assert_eq!(t[0].port, 5269);
        assert_eq!(t[0].host, "other.test");
        let literal = Target {
            host: "127.0.0.9".into(),
            ..t[0].clone()
        };
        assert_eq!(
            addresses(None, &literal).await,
            vec!["127.0.0.9:5269".parse().unwrap()]
        );
    }
}
