//! Advertised addresses: where others dial an endpoint, which need not be where it is bound (a
//! wildcard address, a NAT, a proxy or a load balancer in between).

use std::net::{IpAddr, SocketAddr};

use crate::error::{Error, Result};

/// The address others should dial to reach an endpoint bound at `bound`: `advertise` when given
/// (checked: `HOST:PORT` with a DNS name, an IPv4 address or a bracketed IPv6 address, and a
/// port other than 0), else `bound` itself, unless it is a wildcard (`0.0.0.0`, `[::]`) that
/// nobody can dial.
///
/// A coordinator records the result in its epoch record (standbys, nodes and the CLI dial it);
/// a node registers it as its peer address (other nodes dial it). Nothing is resolved here: a
/// name is dialled as given.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the address and what to pass instead.
pub fn advertised_address(bound: SocketAddr, advertise: Option<&str>) -> Result<String> {
    match advertise {
        Some(address) => {
            check(address).map_err(|why| {
                invalid(format!(
                    "the advertised address {address:?} {why}; give HOST:PORT, the address others dial \
                     to reach this endpoint (such as 10.0.0.5:{} or coordinator-1.example.com:{})",
                    bound.port(),
                    bound.port()
                ))
            })?;
            Ok(address.to_owned())
        }
        None if bound.ip().is_unspecified() => Err(invalid(format!(
            "{bound} listens on every interface, which is not an address others can dial; \
             advertise the one they should use (such as HOST:{})",
            bound.port()
        ))),
        None => Ok(bound.to_string()),
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

/// Why `address` is not a dialable `HOST:PORT`.
fn check(address: &str) -> std::result::Result<(), &'static str> {
    let (host, port) = address.rsplit_once(':').ok_or("has no port")?;
    match port.parse::<u16>() {
        Ok(0) => return Err("has port 0, which nobody can dial"),
        Ok(_) => {}
        Err(_) => return Err("has no valid port (1-65535)"),
    }
    let ip = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(
            v6.parse::<std::net::Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| "has a bracketed host that is not an IPv6 address")?,
        )
    } else if host.contains(':') {
        return Err("has an IPv6 address without brackets");
    } else {
        host.parse::<IpAddr>().ok()
    };
    match ip {
        Some(ip) if ip.is_unspecified() => Err("is a wildcard address, which nobody can dial"),
        Some(_) => Ok(()),
        None => {
            let valid_name = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if valid_name {
                Ok(())
            } else {
                Err("has a host that is neither an IP address nor a DNS name")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_routable_bound_address_is_its_own_advertisement() {
        assert_eq!(
            advertised_address(bound("10.0.0.5:7411"), None).unwrap(),
            "10.0.0.5:7411"
        );
        assert_eq!(
            advertised_address(bound("127.0.0.1:7411"), None).unwrap(),
            "127.0.0.1:7411"
        );
        assert_eq!(
            advertised_address(bound("[fd00::5]:7411"), None).unwrap(),
            "[fd00::5]:7411"
        );
    }

    #[test]
    fn a_wildcard_needs_an_advertised_address() {
        for wildcard in ["0.0.0.0:7411", "[::]:7411"] {
            let err = advertised_address(bound(wildcard), None).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("every interface") && text.contains("HOST:7411"),
                "{text}"
            );
            assert_eq!(
                advertised_address(bound(wildcard), Some("10.1.2.3:7411")).unwrap(),
                "10.1.2.3:7411"
            );
        }
    }

    #[test]
    fn names_and_addresses_are_accepted_as_given() {
        for ok in [
            "coordinator-1.example.com:7411",
            "localhost:1",
            "192.168.0.1:65535",
            "[fd00::1]:7411",
        ] {
            assert_eq!(
                advertised_address(bound("0.0.0.0:7411"), Some(ok)).unwrap(),
                ok
            );
        }
    }

    #[test]
    fn bad_advertised_addresses_say_what_is_wrong() {
        for (bad, why) in [
            ("10.0.0.5", "no port"),
            ("10.0.0.5:0", "port 0"),
            ("10.0.0.5:http", "no valid port"),
            ("0.0.0.0:7411", "wildcard"),
            ("[::]:7411", "wildcard"),
            ("fd00::1:7411", "without brackets"),
            ("[not-v6]:7411", "not an IPv6"),
            ("bad_host:7411", "neither an IP address nor a DNS name"),
            (":7411", "neither"),
            ("-a.example:7411", "neither"),
        ] {
            let err = advertised_address(bound("0.0.0.0:7411"), Some(bad)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(why) && text.contains(bad), "{bad}: {text}");
        }
    }
}
