//! What an environment file's `egressMode` and `egressAllowlist` mean: one reading, used by
//! `env check`, by core (which installs the packet rules and starts the filter) and by the
//! guest agent's egress filter.

use std::net::IpAddr;

/// What `egressMode` and `egressAllowlist` ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// The default: everything goes out (no proxy, no rules beyond the host's own addresses).
    All,
    /// Only destinations the list names: `example.com`, `*.example.com` (the domain's
    /// subdomains, not the domain itself), an IP address.
    Allowlist(Vec<String>),
}

impl Policy {
    /// From an environment's fields. Modes are case-insensitive; an allowlist without a mode
    /// restricts (a list that lets everything through would be a surprise).
    pub fn from_env(mode: Option<&str>, allow: &[String]) -> Result<Policy, String> {
        let m = mode.map(|m| m.trim().to_ascii_lowercase());
        match m.as_deref() {
            None | Some("") if allow.is_empty() => Ok(Policy::All),
            None | Some("") => Ok(Policy::Allowlist(normalize(allow)?)),
            Some("all" | "allowall" | "allow_all" | "unrestricted" | "open") => Ok(Policy::All),
            Some("allowlist" | "allow_list" | "restricted" | "allowlisted") => {
                Ok(Policy::Allowlist(normalize(allow)?))
            }
            Some("none" | "deny" | "denyall" | "deny_all" | "disabled" | "off") => {
                Ok(Policy::Allowlist(Vec::new()))
            }
            Some(other) => Err(format!(
                "egressMode: {other:?} is not a mode; use \"allowAll\" (the default), \"allowlist\" (only egressAllowlist) or \"none\""
            )),
        }
    }

    pub fn restricted(&self) -> bool {
        matches!(self, Policy::Allowlist(_))
    }

    /// Whether the list names `host` (a name without a trailing dot, or an address).
    pub fn allows(&self, host: &str) -> bool {
        let list = match self {
            Policy::All => return true,
            Policy::Allowlist(l) => l,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        list.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
            None => *p == host,
        })
    }
}

fn normalize(allow: &[String]) -> Result<Vec<String>, String> {
    allow
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
            let name = a.strip_prefix("*.").unwrap_or(&a);
            let ok = a.parse::<IpAddr>().is_ok()
                || (!name.is_empty()
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    }));
            if ok {
                Ok(a)
            } else {
                Err(format!(
                    "egressAllowlist[{i}]: {a:?} is not a host name, \"*.\" + a domain, or an IP address"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let p = Policy::from_env(
            Some("allowlist"),
            &[
                "registry.npmjs.org".into(),
                "*.github.com".into(),
                "10.214.0.2".into(),
            ],
        )
        .unwrap();
        for (host, want) in [
            ("registry.npmjs.org", true),
            ("REGISTRY.npmjs.org.", true),
            ("evil-registry.npmjs.org", false),
            ("api.github.com", true),
            ("github.com", false),
            ("xgithub.com", false),
            ("10.214.0.2", true),
            ("10.214.0.3", false),
        ] {
            assert_eq!(p.allows(host), want, "{host}");
        }
        assert_eq!(Policy::from_env(None, &[]).unwrap(), Policy::All);
        assert_eq!(
            Policy::from_env(Some("allowAll"), &["x.com".into()]).unwrap(),
            Policy::All
        );
        assert!(Policy::from_env(None, &["x.com".into()])
            .unwrap()
            .restricted());
        assert!(!Policy::from_env(Some("none"), &[]).unwrap().allows("x.com"));
        let e = Policy::from_env(Some("sometimes"), &[]).unwrap_err();
        assert!(
            e.starts_with("egressMode:") && e.contains("allowlist"),
            "{e}"
        );
        let e = Policy::from_env(Some("allowlist"), &["ok.com".into(), "bad host/".into()])
            .unwrap_err();
        assert!(e.starts_with("egressAllowlist[1]:"), "{e}");
    }
}
