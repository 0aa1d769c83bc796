//! Addresses as rules count them (one address, or the prefix an attacker
//! holds: an IPv6 /64 is one subscriber's), and the lists of networks a
//! context treats apart: trusted ones, whose addresses no rule on the
//! address judges (an office NAT), and allowed ones, outside which a
//! context admits nobody (a webhook's sender).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{FieldError, IpAddress};

/// How many leading bits of an address a rule counts by: every address of
/// one prefix is one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefixes {
    pub v4: u8,
    pub v6: u8,
}

impl Prefixes {
    /// Every address on its own.
    pub const SINGLE: Prefixes = Prefixes { v4: 32, v6: 128 };
    /// What rules on the address count by unless told otherwise: IPv4
    /// addresses one by one, IPv6 by /64, the least one subscriber holds.
    pub const DEFAULT: Prefixes = Prefixes { v4: 32, v6: 64 };
}

/// An address key: one address, or the network of the prefix a rule
/// counts it by. Shown as the address alone when it is one address
/// (`192.0.2.7`), as the network otherwise (`2001:db8:1:2::/64`), as the
/// store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix(IpNet);

impl IpPrefix {
    /// An address, or a network in CIDR form; host bits are cleared and
    /// IPv4-mapped forms read as IPv4.
    pub fn parse(field: &str, raw: &str) -> Result<IpPrefix, FieldError> {
        parse_network(raw)
            .map(IpPrefix)
            .ok_or_else(|| FieldError::new(field, "is not an IPv4 or IPv6 address or network"))
    }

    /// The prefix of `ip` that `prefixes` count it by.
    pub fn of(ip: IpAddress, prefixes: Prefixes) -> IpPrefix {
        let net = match ip.addr() {
            IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, prefixes.v4.min(32)).map(IpNet::V4),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, prefixes.v6.min(128)).map(IpNet::V6),
        };
        IpPrefix(net.map_or(IpNet::from(ip.addr()), |n| n.trunc()))
    }

    /// The same addresses counted by `prefixes` instead: a network never
    /// narrows back to one address.
    pub fn under(self, prefixes: Prefixes) -> IpPrefix {
        let widened = IpPrefix::of(IpAddress::from(self.0.network()), prefixes);
        if widened.0.prefix_len() < self.0.prefix_len() {
            widened
        } else {
            self
        }
    }

    /// The first address of the prefix (the address itself for one).
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// How many leading bits it fixes: 32 or 128 for one address.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether it is one address rather than a network of several.
    pub fn is_single(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    pub fn is_v6(&self) -> bool {
        matches!(self.0, IpNet::V6(_))
    }
}

impl From<IpAddress> for IpPrefix {
    fn from(ip: IpAddress) -> IpPrefix {
        IpPrefix(IpNet::from(ip.addr()))
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            self.0.addr().fmt(f)
        } else {
            self.0.fmt(f)
        }
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = FieldError;

    fn from_str(raw: &str) -> Result<Self, FieldError> {
        Self::parse("ip", raw)
    }
}

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

    /// The first network of the list that holds `addr`.
    pub fn containing(&self, addr: IpAddr) -> Option<&IpNet> {
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

impl From<IpAddr> for IpAddress {
    fn from(addr: IpAddr) -> IpAddress {
        IpAddress::canonical(addr)
    }
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

    fn ip(raw: &str) -> IpAddr {
        IpAddress::parse("ip", raw).unwrap().addr()
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
    fn an_address_counts_under_its_rules_prefix() {
        let addr = |raw| IpAddress::parse("ip", raw).unwrap();
        let v6 = IpPrefix::of(addr("2001:db8:1:2:aaaa::5"), Prefixes::DEFAULT);
        assert_eq!(v6.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            IpPrefix::of(addr("2001:db8:1:2:ffff::1"), Prefixes::DEFAULT),
            v6
        );
        assert_ne!(IpPrefix::of(addr("2001:db8:1:3::1"), Prefixes::DEFAULT), v6);
        let v4 = IpPrefix::of(addr("::ffff:192.0.2.7"), Prefixes::DEFAULT);
        assert_eq!(v4.to_string(), "192.0.2.7", "IPv4-mapped counts as IPv4");
        let subnet = IpPrefix::of(addr("192.0.2.7"), Prefixes { v4: 24, v6: 64 });
        assert_eq!(subnet.to_string(), "192.0.2.0/24");
        assert_eq!(IpPrefix::parse("ip", "2001:db8:1:2::/64").unwrap(), v6);
        assert_eq!(IpPrefix::parse("ip", "2001:db8:1:2::9/64").unwrap(), v6);
        let one = IpPrefix::from(addr("2001:db8:1:2::9"));
        assert_eq!(one.under(Prefixes::DEFAULT), v6);
        assert_eq!(v6.under(Prefixes::SINGLE), v6, "a network never narrows");
        assert!(IpPrefix::parse("ip", "2001:db8::/129").is_err());
    }

    #[test]
    fn a_malformed_entry_is_named_by_its_index() {
        for bad in ["10.0.0.0/33", "10.0.0", "", "fd00::/129", "office"] {
            let err = list(&["10.0.0.0/8", bad]).unwrap_err();
            assert_eq!(err.field, "access.trusted_networks[1]", "{bad:?}");
        }
    }
}
