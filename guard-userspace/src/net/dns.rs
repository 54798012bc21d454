//! Resolving the `hosts:` of endpoint rules: every A and AAAA answer, refreshed when the
//! answer's TTL runs out (clamped to [`MIN_TTL`, `MAX_TTL`]). A failed resolution keeps the
//! addresses in force and is retried after [`RETRY`].
//!
//! The daemon is never tagged, so its own queries are not subject to the rules. The name
//! server is the system's (`/etc/resolv.conf`, `/etc/hosts`), or the one named by
//! `GUARD_DNS_SERVER=IP:PORT` (tests run their own server in a network namespace).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};

/// Environment variable naming the name server to use instead of the system's.
pub const ENV_DNS_SERVER: &str = "GUARD_DNS_SERVER";
/// Shortest refresh interval, whatever the TTL (a TTL of 0 would mean a query loop).
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest refresh interval, whatever the TTL.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Wait before retrying a failed resolution.
pub const RETRY: Duration = Duration::from_secs(5);
/// Timeout of one query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{ENV_DNS_SERVER}={value:?} is not an IP:PORT address")]
    BadServer { value: String },
    #[error("system resolver configuration: {0}")]
    System(#[source] hickory_resolver::ResolveError),
    #[error("resolving {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: hickory_resolver::ResolveError,
    },
    #[error("resolving {host}: no resolver ({reason})")]
    NoResolver { host: String, reason: String },
    #[error("resolving {host}: no A or AAAA records")]
    Empty { host: String },
}

/// The name server from [`ENV_DNS_SERVER`], if set.
pub fn server_from_env() -> Result<Option<SocketAddr>, DnsError> {
    match std::env::var(ENV_DNS_SERVER) {
        Ok(value) if !value.is_empty() => value
            .parse()
            .map(Some)
            .map_err(|_| DnsError::BadServer { value }),
        _ => Ok(None),
    }
}

/// A resolver asking `server`, or the system's name servers when `None`.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, DnsError> {
    let mut builder = match server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => TokioResolver::builder_tokio().map_err(DnsError::System)?,
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 2;
    opts.positive_max_ttl = Some(MAX_TTL);
    // A name is looked up as written (it is a fully qualified production host name).
    opts.ndots = 0;
    Ok(builder.build())
}

/// Clamp a TTL to [`MIN_TTL`, `MAX_TTL`].
pub fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// Every A and AAAA address of `host`, and how long the answer is valid (clamped).
pub async fn resolve(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(BTreeSet<IpAddr>, Duration), DnsError> {
    // A trailing dot: the name is absolute, no search domains.
    let fqdn = if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    };
    let lookup = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .map_err(|source| DnsError::Lookup {
            host: host.to_owned(),
            source,
        })?;
    let addrs: BTreeSet<IpAddr> = lookup.iter().collect();
    if addrs.is_empty() {
        return Err(DnsError::Empty {
            host: host.to_owned(),
        });
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Ok((addrs, clamp_ttl(ttl)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_clamps() {
        assert_eq!(clamp_ttl(Duration::ZERO), MIN_TTL);
        assert_eq!(clamp_ttl(Duration::from_secs(60)), Duration::from_secs(60));
        assert_eq!(clamp_ttl(Duration::from_secs(86_400)), MAX_TTL);
    }

    #[tokio::test]
    async fn resolves_against_a_configured_server() {
        // A one-shot DNS server on loopback answering A 10.20.0.9 with TTL 42.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
                let reply = answer(&buf[..n], [10, 20, 0, 9], 42);
                sock.send_to(&reply, peer).await.unwrap();
            }
        });
        let r = resolver(Some(addr)).unwrap();
        let (addrs, ttl) = resolve(&r, "db.prod.test").await.unwrap();
        assert_eq!(
            addrs.into_iter().collect::<Vec<_>>(),
            ["10.20.0.9".parse::<IpAddr>().unwrap()]
        );
        assert!(ttl > Duration::from_secs(30) && ttl <= Duration::from_secs(42));
        server.abort();
    }

    /// A reply to `query` with one A record for an A question, none for any other.
    fn answer(query: &[u8], a: [u8; 4], ttl: u32) -> Vec<u8> {
        let mut end = 12;
        while query[end] != 0 {
            end += 1 + query[end] as usize;
        }
        let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
        let question = &query[12..end + 5];
        let mut out = Vec::new();
        out.extend_from_slice(&query[..2]);
        out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(qtype == 1), 0, 0, 0, 0]);
        out.extend_from_slice(question);
        if qtype == 1 {
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&[0, 4]);
            out.extend_from_slice(&a);
        }
        out
    }
}
