//! Lists of networks a context treats apart: trusted ones, whose
//! addresses no rule on the address judges (an office NAT), and allowed
//! ones, outside which a context admits nobody (a webhook's sender).

use std::net::IpAddr;

use ipnet::IpNet;

use super::{FieldError, IpAddress};

/// Networks in canonical form: host bits cleared, IPv4-mapped IPv6
/// prefixes as IPv4, so a list matches an address however either is
/// written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    /// Parses CIDRs, or bare addresses as networks of one address (as
    /// fail2ban's `ignoreip` takes both). `field` names the list; an entry
    /// that fails is named by its index.
    pub fn parse(field: &str, raw: &[String]) -> Result<Networks, FieldError> {
        raw.iter()
            .enumerate()
            .map(|(i, entry)| {
                parse_network(entry.trim()).ok_or_else(|| {
                    FieldError::new(
                        format!("{field}[{i}]"),
                        format!("{entry:?} is not a network (10.0.0.0/8, fd00::/8) or an address"),
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first network of the list that holds `ip`.
    pub fn containing(&self, ip: IpAddress) -> Option<&IpNet> {
        let addr = ip.addr();
        self.0.iter().find(|net| net.contains(&addr))
    }
}

fn parse_network(raw: &str) -> Option<IpNet> {
    let net = match raw.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(raw.parse::<IpAddr>().ok()?),
    };
    Some(canonical(net).trunc())
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 network `a.b.c.d/(n-96)`, as
/// `IpAddress` keeps mapped addresses as IPv4.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &[&str]) -> Result<Networks, FieldError> {
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        Networks::parse("access.trusted_networks", &raw)
    }

    fn ip(raw: &str) -> IpAddress {
        IpAddress::parse("ip", raw).unwrap()
    }

    #[test]
    fn an_address_is_found_in_its_network_however_either_is_written() {
        let nets = list(&[
            "10.1.2.3/8",
            "::ffff:192.0.2.0/120",
            "2001:db8::/32",
            "198.51.100.7",
        ])
        .unwrap();
        assert_eq!(
            nets.containing(ip("10.200.0.1")).unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            nets.containing(ip("::ffff:10.9.9.9")).unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            nets.containing(ip("192.0.2.77")).unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert!(nets.containing(ip("2001:db8:ffff::1")).is_some());
        assert!(nets.containing(ip("198.51.100.7")).is_some());
        assert!(nets.containing(ip("198.51.100.8")).is_none());
        assert!(nets.containing(ip("11.0.0.1")).is_none());
    }

    #[test]
    fn a_malformed_entry_is_named_by_its_index() {
        for bad in ["10.0.0.0/33", "10.0.0", "", "fd00::/129", "office"] {
            let err = list(&["10.0.0.0/8", bad]).unwrap_err();
            assert_eq!(err.field, "access.trusted_networks[1]", "{bad:?}");
        }
    }
}
