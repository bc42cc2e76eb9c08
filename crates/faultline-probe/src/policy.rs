//! Whom probes may call, and how much of an answer they read: the probe policy, so that
//! whoever may define a probe (the configuration file, or anyone reaching the probes API)
//! cannot turn the server against its own host or network.
//!
//! Read from the configuration file's `[probe_policy]`:
//!
//! ```toml
//! [probe_policy]
//! allow = ["10.0.0.0/8", "*.svc.cluster.local"]   # when given, only these targets
//! deny = ["10.20.0.0/16", "vault.internal"]        # refused, besides the built-in rules
//! exempt = ["169.254.10.0/24"]                     # lifted out of the built-in rules
//! max_body_bytes = 1048576                         # most of a response body read (1 KiB
//!                                                  #   to 256 MiB; default 1 MiB)
//! ```
//!
//! Each entry is an address (`10.1.2.3`, `::1`), a CIDR range (`10.0.0.0/8`, `fd00::/8`),
//! a host name (`api.example.com`, matched whole, any case, a final dot ignored) or a
//! wildcard (`*.example.com`: any name ending in `.example.com`).
//!
//! Built-in rules refuse, whatever the lists say, unless `exempt` names the address or
//! name: cloud metadata addresses (169.254.169.254, fd00:ec2::254, Alibaba's
//! 100.100.100.200) and names (`metadata`, `metadata.google.internal`, `metadata.goog`,
//! `instance-data`, `instance-data.ec2.internal`), link-local addresses (169.254.0.0/16,
//! fe80::/10), unspecified ones (0.0.0.0/8, `::`, which reach the host itself), multicast
//! (224.0.0.0/4, ff00::/8) and broadcast (255.255.255.255). Loopback and private ranges
//! are allowed unless the lists say otherwise. An address that carries an IPv4 address
//! (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`)
//! is judged as that IPv4 address, and the numeric forms the system resolver reads as
//! IPv4 (`2852039166`, `0xa9.0376.43518`) as the address they stand for.
//!
//! The order, first match deciding: `deny`; the built-in rules (unless `exempt`); then,
//! when `allow` is given, a target is allowed if its name or its address is on it.
//!
//! A target is judged twice: when its probe is defined ([`Policy::judge_host`]: an address
//! completely, a name by the name rules, and by `allow` when `allow` holds only names), and
//! at every check on every address its name resolved to ([`Policy::judge_resolved`]),
//! before connecting, the check connecting to the very address judged (no second lookup,
//! so a name rebound to another address between lookups cannot slip through).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

/// The most of a response body read unless `max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// The bounds of `max_body_bytes`.
const BODY_BOUNDS: (u64, u64) = (1 << 10, 256 << 20);

/// Names of cloud metadata services.
const METADATA_NAMES: [&str; 5] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

/// `[probe_policy]` as written in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// When not empty, the only targets allowed (addresses, ranges, names).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Targets refused besides the built-in rules.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Addresses and names lifted out of the built-in rules.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// The most of a response body read; `None`: [`DEFAULT_MAX_BODY_BYTES`].
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

/// A `[probe_policy]` value that cannot be used: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probe_policy.{key}: {message}")]
pub struct PolicyError {
    /// The key (`allow`, `deny`, `exempt`, `max_body_bytes`).
    pub key: &'static str,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// What an entry of a list matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// An address range (an address is a range of one).
    Net(IpNet),
    /// One name, lower case, without a final dot.
    Name(String),
    /// Names ending in this (`.example.com` for `*.example.com`).
    Suffix(String),
}

/// An entry of `allow`, `deny` or `exempt`, with its text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    text: String,
    matcher: Matcher,
}

impl Entry {
    fn parse(key: &'static str, text: &str) -> Result<Self, PolicyError> {
        let t = text.trim();
        let bad = |why: &str| PolicyError {
            key,
            message: format!(
                "{text:?} {why}; write an address (10.1.2.3), a range (10.0.0.0/8), a name (api.example.com) or a wildcard (*.example.com)"
            ),
        };
        let matcher = if let Ok(net) = t.parse::<IpNet>() {
            Matcher::Net(ipv4_net(net).trunc())
        } else if let Some(ip) = literal(t) {
            Matcher::Net(IpNet::from(canonical(ip)))
        } else {
            let name = normal_name(t);
            let (wild, rest) = match name.strip_prefix("*.") {
                Some(rest) => (true, rest.to_string()),
                None => (false, name),
            };
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if t.is_empty() {
                return Err(bad("is empty"));
            }
            if rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') || t.contains('/') {
                return Err(bad("is not a valid address or range"));
            }
            if rest.len() > 253 || !rest.split('.').all(label_ok) {
                return Err(bad("is not a valid host name"));
            }
            if wild {
                Matcher::Suffix(format!(".{rest}"))
            } else {
                Matcher::Name(rest)
            }
        };
        Ok(Self {
            text: t.to_string(),
            matcher,
        })
    }

    fn matches_name(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Name(n) => n == name,
            Matcher::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            Matcher::Net(_) => false,
        }
    }

    fn matches_addr(&self, addr: IpAddr) -> bool {
        matches!(&self.matcher, Matcher::Net(n) if n.contains(&addr))
    }

    fn matches(&self, name: Option<&str>, addr: Option<IpAddr>) -> bool {
        name.is_some_and(|n| self.matches_name(n)) || addr.is_some_and(|a| self.matches_addr(a))
    }
}

/// A range of IPv4-mapped IPv6 addresses (`::ffff:10.0.0.0/104`) as the IPv4 range it
/// stands for, since addresses are judged in their IPv4 form.
fn ipv4_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && let Ok(v4net) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

/// Why a target is refused: the target, the rule, and what to change to allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The address or name judged, as written (with the IPv4 address it carries, if any).
    pub target: String,
    /// The rule's kind: `metadata`, `link-local`, `unspecified`, `multicast`,
    /// `broadcast`, `deny` or `allow`.
    pub kind: &'static str,
    /// The rule, as the operator finds it (`built-in rule "metadata"`, `[probe_policy]
    /// deny entry "10.0.0.0/8"`).
    pub rule: String,
    /// Why the rule refuses it.
    pub reason: String,
    /// What to change to allow it.
    pub remedy: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is refused ({}): {}; {}",
            self.target, self.rule, self.reason, self.remedy
        )
    }
}

/// The probe policy in force: see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Entry>,
    deny: Vec<Entry>,
    exempt: Vec<Entry>,
    max_body_bytes: usize,
}

impl Default for Policy {
    /// The built-in rules only, and bodies read up to [`DEFAULT_MAX_BODY_BYTES`].
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            exempt: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The built-in rule refusing `addr` (in its canonical form), if one does: its kind and
/// why.
fn builtin(addr: IpAddr) -> Option<(&'static str, &'static str)> {
    const METADATA: &str = "it is a cloud metadata address, through which a probe could read the host's cloud credentials";
    const LINK_LOCAL: &str = "it is link-local (169.254.0.0/16, fe80::/10), where cloud metadata and other services of the host itself answer";
    const UNSPECIFIED: &str = "it is unspecified (0.0.0.0/8, ::), which reaches the host itself";
    const MULTICAST: &str = "it is multicast (224.0.0.0/4, ff00::/8)";
    match addr {
        IpAddr::V4(a) => {
            if a == Ipv4Addr::new(169, 254, 169, 254) || a == Ipv4Addr::new(100, 100, 100, 200) {
                Some(("metadata", METADATA))
            } else if a.is_link_local() {
                Some(("link-local", LINK_LOCAL))
            } else if a.octets()[0] == 0 {
                Some(("unspecified", UNSPECIFIED))
            } else if a.is_multicast() {
                Some(("multicast", MULTICAST))
            } else if a.is_broadcast() {
                Some(("broadcast", "it is the broadcast address (255.255.255.255)"))
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some(("metadata", METADATA))
            } else if a.is_unicast_link_local() {
                Some(("link-local", LINK_LOCAL))
            } else if a.is_unspecified() {
                Some(("unspecified", UNSPECIFIED))
            } else if a.is_multicast() {
                Some(("multicast", MULTICAST))
            } else {
                None
            }
        }
    }
}

/// The address judged for `ip`: the IPv4 address an IPv6 address carries (IPv4-mapped,
/// IPv4-compatible other than `::` and `::1`, NAT64's well-known prefix), else `ip`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let carried = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 {
        IpAddr::V4(carried)
    } else {
        ip
    }
}

/// `host` as an address, if it is one: an IP literal (brackets, an IPv6 zone and a final
/// dot ignored) or a numeric IPv4 form the system resolver accepts (`2852039166`,
/// `0251.0376.0251.0376`, `169.254.43518`).
pub fn literal(host: &str) -> Option<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let h = h.strip_suffix('.').unwrap_or(h);
    let h = if h.contains(':') {
        h.split('%').next().unwrap_or(h)
    } else {
        h
    };
    h.parse::<IpAddr>()
        .ok()
        .or_else(|| numeric_ipv4(h).map(IpAddr::V4))
}

/// inet_aton's forms: one to four parts, each decimal, octal (`0` first) or hex (`0x`
/// first); the last part fills the bytes the others left.
fn numeric_ipv4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        values.push(u64::from_str_radix(digits, radix).ok()?);
    }
    let (last, first) = values.split_last()?;
    if first.iter().any(|v| *v > 255) {
        return None;
    }
    let last_bits = 8 * (4 - first.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let high = first
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, v)| acc | (v << (24 - 8 * i as u32)));
    u32::try_from(high | last).ok().map(Ipv4Addr::from)
}

/// A name as matched: lower case, without a final dot.
fn normal_name(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    n.strip_suffix('.').map(str::to_string).unwrap_or(n)
}

/// How an address is shown: with the IPv4 address it carries, when it carries one.
fn shown(written: &str, addr: IpAddr) -> String {
    if written == addr.to_string() {
        written.to_string()
    } else {
        format!("{written} (the IPv4 address {addr})")
    }
}

impl Policy {
    /// The policy `[probe_policy]` describes; an unusable entry is named.
    pub fn new(c: &PolicyConfig) -> Result<Self, PolicyError> {
        let list = |key, v: &[String]| {
            v.iter()
                .map(|t| Entry::parse(key, t))
                .collect::<Result<Vec<_>, _>>()
        };
        let max_body_bytes = match c.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if (BODY_BOUNDS.0..=BODY_BOUNDS.1).contains(&n) => {
                usize::try_from(n).map_err(|_| PolicyError {
                    key: "max_body_bytes",
                    message: format!("{n} does not fit this machine's memory"),
                })?
            }
            Some(n) => {
                return Err(PolicyError {
                    key: "max_body_bytes",
                    message: format!(
                        "{n} is out of range; write {} (1 KiB) to {} (256 MiB) bytes",
                        BODY_BOUNDS.0, BODY_BOUNDS.1
                    ),
                });
            }
        };
        Ok(Self {
            allow: list("allow", &c.allow)?,
            deny: list("deny", &c.deny)?,
            exempt: list("exempt", &c.exempt)?,
            max_body_bytes,
        })
    }

    /// The most of a response body a check reads.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Judges a host as a definition or a redirect writes it, before anything is
    /// resolved: an address completely; a name by the name rules (and by `allow` when it
    /// holds no address ranges). `Ok` for a name means only its addresses can tell: each
    /// check judges them with [`Policy::judge_resolved`].
    pub fn judge_host(&self, host: &str) -> Result<(), Refusal> {
        match literal(host) {
            Some(ip) => {
                let addr = canonical(ip);
                let written = host.trim_start_matches('[').trim_end_matches(']');
                self.judge(&shown(written, addr), None, Some(addr))
            }
            None => self.judge(host, Some(&normal_name(host)), None),
        }
    }

    /// Judges an address `host` resolved to, before connecting to it.
    pub fn judge_resolved(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let addr = canonical(ip);
        let name = literal(host).is_none().then(|| normal_name(host));
        self.judge(&shown(&ip.to_string(), addr), name.as_deref(), Some(addr))
    }

    /// The rules in order (see the module doc); `addr` in its canonical form.
    fn judge(&self, target: &str, name: Option<&str>, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let refuse = |kind, rule: String, reason: String, remedy: String| Refusal {
            target: target.to_string(),
            kind,
            rule,
            reason,
            remedy,
        };
        if let Some(e) = self.deny.iter().find(|e| e.matches(name, addr)) {
            return Err(refuse(
                "deny",
                format!("[probe_policy] deny entry {:?}", e.text),
                "it is on the deny list".into(),
                format!("to allow it, remove {:?} from [probe_policy] deny", e.text),
            ));
        }
        if let Some(n) = name
            && METADATA_NAMES.contains(&n)
            && !self.exempt.iter().any(|e| e.matches_name(n))
        {
            return Err(refuse(
                "metadata",
                "built-in rule \"metadata\"".into(),
                "it names a cloud metadata service, through which a probe could read the host's cloud credentials".into(),
                format!("to probe it anyway, add {n:?} to [probe_policy] exempt"),
            ));
        }
        if let Some(a) = addr
            && let Some((kind, why)) = builtin(a)
            && !self.exempt.iter().any(|e| e.matches_addr(a))
        {
            return Err(refuse(
                kind,
                format!("built-in rule {kind:?}"),
                why.into(),
                format!("to probe it anyway, add \"{a}\" to [probe_policy] exempt"),
            ));
        }
        if self.allow.is_empty() {
            return Ok(());
        }
        let by_name = name.is_some_and(|n| self.allow.iter().any(|e| e.matches_name(n)));
        let by_addr = addr.is_some_and(|a| self.allow.iter().any(|e| e.matches_addr(a)));
        // A name not allowed by name may still resolve into an allowed range.
        let undecided = addr.is_none()
            && self
                .allow
                .iter()
                .any(|e| matches!(e.matcher, Matcher::Net(_)));
        if by_name || by_addr || undecided {
            return Ok(());
        }
        let listed: Vec<&str> = self.allow.iter().map(|e| e.text.as_str()).collect();
        let what = addr.map_or_else(|| name.unwrap_or(target).to_string(), |a| a.to_string());
        Err(refuse(
            "allow",
            "[probe_policy] allow".into(),
            format!("it is not on the allow list ({})", listed.join(", ")),
            format!(
                "to allow it, add {what:?} (or a range or name covering it) to [probe_policy] allow"
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str], exempt: &[&str]) -> Policy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Policy::new(&PolicyConfig {
            allow: v(allow),
            deny: v(deny),
            exempt: v(exempt),
            max_body_bytes: None,
        })
        .unwrap()
    }

    /// The kind of the rule refusing `host` as a definition writes it; "" when allowed.
    fn host_kind(p: &Policy, host: &str) -> &'static str {
        p.judge_host(host).err().map_or("", |r| r.kind)
    }

    #[test]
    fn built_in_rules_refuse_metadata_link_local_unspecified_multicast_broadcast() {
        let p = Policy::default();
        for (host, kind) in [
            ("169.254.169.254", "metadata"),
            ("100.100.100.200", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("[fd00:ec2::254]", "metadata"),
            ("::ffff:169.254.169.254", "metadata"),
            ("[::ffff:a9fe:a9fe]", "metadata"),
            ("::169.254.169.254", "metadata"),
            ("64:ff9b::169.254.169.254", "metadata"),
            ("2852039166", "metadata"),
            ("0xa9fea9fe", "metadata"),
            ("0251.0376.0251.0376", "metadata"),
            ("169.254.43518", "metadata"),
            ("169.254.169.254.", "metadata"),
            ("metadata", "metadata"),
            ("metadata.google.internal", "metadata"),
            ("Metadata.Google.Internal.", "metadata"),
            ("metadata.goog", "metadata"),
            ("instance-data.ec2.internal", "metadata"),
            ("169.254.1.1", "link-local"),
            ("169.254.170.2", "link-local"),
            ("fe80::1", "link-local"),
            ("fe80::1%2", "link-local"),
            ("febf::1", "link-local"),
            ("::ffff:169.254.0.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            // Allowed by default: loopback, private, public, names.
            ("127.0.0.1", ""),
            ("127.1", ""),
            ("::1", ""),
            ("::ffff:127.0.0.1", ""),
            ("10.0.0.1", ""),
            ("192.168.1.1", ""),
            ("172.16.0.1", ""),
            ("100.100.100.201", ""),
            ("169.253.255.255", ""),
            ("169.255.0.0", ""),
            ("fec0::1", ""),
            ("fd00:ec2::253", ""),
            ("2001:db8::1", ""),
            ("203.0.113.7", ""),
            ("localhost", ""),
            ("metadata.example.com", ""),
            ("my-metadata", ""),
            ("cafe.example.com", ""),
        ] {
            assert_eq!(host_kind(&p, host), kind, "{host}");
        }
    }

    #[test]
    fn resolved_addresses_are_judged_in_their_ipv4_form() {
        let p = Policy::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (name, addr, kind) in [
            ("api.example.com", "169.254.169.254", "metadata"),
            ("api.example.com", "::ffff:169.254.169.254", "metadata"),
            ("api.example.com", "::ffff:169.254.3.4", "link-local"),
            ("api.example.com", "fe80::5", "link-local"),
            ("api.example.com", "0.0.0.0", "unspecified"),
            ("metadata.google.internal", "10.0.0.9", "metadata"),
            ("api.example.com", "10.0.0.9", ""),
            ("localhost", "::1", ""),
        ] {
            let got = p
                .judge_resolved(name, ip(addr))
                .err()
                .map_or("", |r| r.kind);
            assert_eq!(got, kind, "{name} -> {addr}");
        }
        let r = p
            .judge_resolved("x.example.com", ip("::ffff:169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            r.target,
            "::ffff:169.254.169.254 (the IPv4 address 169.254.169.254)"
        );
    }

    #[test]
    fn numeric_forms_stand_for_the_address_the_resolver_reads() {
        for (s, want) in [
            ("2852039166", Some("169.254.169.254")),
            ("0xA9FEA9FE", Some("169.254.169.254")),
            ("0251.0376.0251.0376", Some("169.254.169.254")),
            ("169.254.43518", Some("169.254.169.254")),
            ("169.16689662", Some("169.254.169.254")),
            ("127.1", Some("127.0.0.1")),
            ("0", Some("0.0.0.0")),
            ("256.1.1.1", None),
            ("1.2.3.4.5", None),
            ("08.1.1.1", None),
            ("0x", None),
            ("+1", None),
            ("4294967296", None),
            ("cafe", None),
            ("", None),
        ] {
            assert_eq!(
                numeric_ipv4(s).map(|a| a.to_string()),
                want.map(str::to_string),
                "{s:?}"
            );
        }
    }

    #[test]
    fn deny_adds_to_the_built_in_rules_and_exempt_lifts_them() {
        let p = policy(
            &[],
            &[
                "10.20.0.0/16",
                "vault.internal",
                "*.secrets.example",
                "fd12::/16",
            ],
            &["169.254.10.0/24", "metadata", "::ffff:169.254.169.254"],
        );
        for (host, kind) in [
            ("10.20.3.4", "deny"),
            ("::ffff:10.20.3.4", "deny"),
            ("10.21.0.1", ""),
            ("VAULT.internal.", "deny"),
            ("a.secrets.example", "deny"),
            ("a.b.secrets.example", "deny"),
            ("secrets.example", ""),
            ("fd12::1", "deny"),
            ("169.254.10.7", ""),
            ("169.254.11.7", "link-local"),
            ("metadata", ""),
            ("metadata.google.internal", "metadata"),
            ("169.254.169.254", ""),
            ("fd00:ec2::254", "metadata"),
        ] {
            assert_eq!(host_kind(&p, host), kind, "{host}");
        }
        // Deny comes first: an exempt address can still be denied.
        let p = policy(&[], &["169.254.0.0/16"], &["169.254.10.0/24"]);
        assert_eq!(host_kind(&p, "169.254.10.7"), "deny");
    }

    #[test]
    fn allow_admits_only_its_ranges_and_names_and_never_lifts_built_in_rules() {
        let p = policy(
            &["10.0.0.0/8", "*.svc.cluster.local", "api.example.com"],
            &[],
            &[],
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (host, kind) in [
            ("10.1.2.3", ""),
            ("::ffff:10.1.2.3", ""),
            ("127.0.0.1", "allow"),
            ("::1", "allow"),
            ("192.168.0.1", "allow"),
            // Names: undecided until resolved, since allow holds a range.
            ("other.example.com", ""),
            ("localhost", ""),
            ("169.254.169.254", "metadata"),
        ] {
            assert_eq!(host_kind(&p, host), kind, "{host}");
        }
        for (name, addr, kind) in [
            ("localhost", "127.0.0.1", "allow"),
            ("other.example.com", "10.9.9.9", ""),
            ("api.example.com", "192.168.7.7", ""),
            ("db.svc.cluster.local", "172.20.0.4", ""),
            ("db.svc.cluster.local", "169.254.169.254", "metadata"),
            ("db.svc.cluster.local", "fe80::1", "link-local"),
        ] {
            let got = p
                .judge_resolved(name, ip(addr))
                .err()
                .map_or("", |r| r.kind);
            assert_eq!(got, kind, "{name} -> {addr}");
        }
        // With names only, a name not on the list is refused at once.
        let names = policy(&["*.example.com"], &[], &[]);
        assert_eq!(host_kind(&names, "a.example.com"), "");
        assert_eq!(host_kind(&names, "localhost"), "allow");
        assert_eq!(host_kind(&names, "127.0.0.1"), "allow");
    }

    #[test]
    fn refusals_name_the_target_the_rule_and_the_way_to_allow_it() {
        let msg = |p: &Policy, h: &str| p.judge_host(h).unwrap_err().to_string();
        assert_eq!(
            msg(&Policy::default(), "169.254.169.254"),
            "169.254.169.254 is refused (built-in rule \"metadata\"): it is a cloud metadata address, through which a probe could read the host's cloud credentials; to probe it anyway, add \"169.254.169.254\" to [probe_policy] exempt"
        );
        assert_eq!(
            msg(&Policy::default(), "::ffff:169.254.1.2"),
            "::ffff:169.254.1.2 (the IPv4 address 169.254.1.2) is refused (built-in rule \"link-local\"): it is link-local (169.254.0.0/16, fe80::/10), where cloud metadata and other services of the host itself answer; to probe it anyway, add \"169.254.1.2\" to [probe_policy] exempt"
        );
        let p = policy(&["10.0.0.0/8"], &["10.9.0.0/16"], &[]);
        assert_eq!(
            msg(&p, "10.9.1.1"),
            "10.9.1.1 is refused ([probe_policy] deny entry \"10.9.0.0/16\"): it is on the deny list; to allow it, remove \"10.9.0.0/16\" from [probe_policy] deny"
        );
        assert_eq!(
            msg(&p, "127.0.0.1"),
            "127.0.0.1 is refused ([probe_policy] allow): it is not on the allow list (10.0.0.0/8); to allow it, add \"127.0.0.1\" (or a range or name covering it) to [probe_policy] allow"
        );
    }

    #[test]
    fn bad_entries_and_sizes_are_named() {
        let err = |c: PolicyConfig| Policy::new(&c).unwrap_err();
        for (bad, key) in [
            (
                PolicyConfig {
                    allow: vec!["10.0.0.0/33".into()],
                    ..PolicyConfig::default()
                },
                "allow",
            ),
            (
                PolicyConfig {
                    deny: vec!["10.0.0.256".into()],
                    ..PolicyConfig::default()
                },
                "deny",
            ),
            (
                PolicyConfig {
                    exempt: vec!["bad name!".into()],
                    ..PolicyConfig::default()
                },
                "exempt",
            ),
            (
                PolicyConfig {
                    allow: vec!["".into()],
                    ..PolicyConfig::default()
                },
                "allow",
            ),
            (
                PolicyConfig {
                    max_body_bytes: Some(10),
                    ..PolicyConfig::default()
                },
                "max_body_bytes",
            ),
            (
                PolicyConfig {
                    max_body_bytes: Some(1 << 40),
                    ..PolicyConfig::default()
                },
                "max_body_bytes",
            ),
        ] {
            let e = err(bad);
            assert_eq!(e.key, key, "{e}");
            assert!(
                e.to_string().starts_with(&format!("probe_policy.{key}: ")),
                "{e}"
            );
        }
        assert!(
            err(PolicyConfig {
                allow: vec!["10.0.0.0/33".into()],
                ..PolicyConfig::default()
            })
            .message
            .contains("\"10.0.0.0/33\" is not a valid address or range")
        );
        let p = Policy::new(&PolicyConfig {
            deny: vec!["::ffff:10.0.0.0/104".into(), "10.1.2.3/8".into()],
            max_body_bytes: Some(4096),
            ..PolicyConfig::default()
        })
        .unwrap();
        assert_eq!(p.max_body_bytes(), 4096);
        assert_eq!(
            host_kind(&p, "10.200.0.1"),
            "deny",
            "mapped range in IPv4 form"
        );
        assert_eq!(Policy::default().max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn the_section_reads_from_toml_and_refuses_unknown_keys() {
        let c: PolicyConfig = toml::from_str(
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"x.example\"]\nmax_body_bytes = 2048\n",
        )
        .unwrap();
        assert_eq!(c.allow, vec!["10.0.0.0/8"]);
        assert_eq!(c.max_body_bytes, Some(2048));
        let e = toml::from_str::<PolicyConfig>("alow = []\n").unwrap_err();
        assert!(e.to_string().contains("alow"), "{e}");
    }
}
