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
    if let Some((host, port)) = routes
        .get(domain)
        .and_then(|r| crate::config::parse_host_port(r))
    {
        return vec![Target {
            host,
            port,
            direct_tls: false,
        }];
    }
    let mut found = Vec::new();
    if let Some(resolver) = resolver {
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            let name = format!("{service}.{domain}.");
            let Ok(lookup) = resolver.lookup(name.as_str(), RecordType::SRV).await else {
                continue;
            };
            for record in lookup.answers() {
                if let RData::SRV(srv) = &record.data {
                    let host = srv.target.to_utf8();
                    let host = host.trim_end_matches('.');
                    // RFC 2782: a target of "." means the service is decidedly not available.
                    if host.is_empty() {
                        continue;
                    }
                    found.push((
                        srv.priority,
                        std::cmp::Reverse(srv.weight),
                        direct_tls,
                        host.to_owned(),
                        srv.port,
                    ));
                }
            }
        }
    }
    if found.is_empty() {
        return vec![Target {
            host: domain.to_owned(),
            port: 5269,
            direct_tls: false,
        }];
    }
    // Lower priority first; at equal priority heavier weight first, and direct TLS before
    // STARTTLS (XEP-0368 §3).
    found.sort_by_key(|a| (a.0, a.1, !a.2));
    found
        .into_iter()
        .map(|(_, _, direct_tls, host, port)| Target {
            host,
            port,
            direct_tls,
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
