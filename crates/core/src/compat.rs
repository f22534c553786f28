//! Agent/app version compatibility: the app checks each agent's version from `/v1/health`.

use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct Compat {
    pub ok: bool,
    pub agent_version: String,
    pub app_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn major_minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split(['.', '-', '+']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Compatible when major versions match, and (before 1.0) minor versions too.
pub fn check(agent: &str, app: &str) -> Compat {
    let ok = match (major_minor(agent), major_minor(app)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    };
    Compat {
        ok,
        agent_version: agent.into(),
        app_version: app.into(),
        message: (!ok).then(|| format!("this machine's agent is {agent} but the app is {app}: upgrade the agent (packaging/agent/install.sh) to {app}")),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn versions() {
        assert!(check("0.1.0", "0.1.3").ok);
        assert!(!check("0.1.0", "0.2.0").ok);
        assert!(check("1.2.0", "1.9.1").ok);
        assert!(!check("1.2.0", "2.0.0").ok);
        let c = check("garbage", "0.1.0");
        assert!(!c.ok && c.message.unwrap().contains("upgrade the agent"));
    }
}
