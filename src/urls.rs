//! URLs, once, on the `url` crate: NATS server lists with their login, and database URLs
//! (redaction, another database or server on the same URL). IPv6 hosts (`[::1]`) and
//! percent-encoded user names and passwords work everywhere.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use url::Url;

/// Why a URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{url}` is not a URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("nats.url is empty")]
    Empty,
    /// Two servers of one list name different logins.
    #[error("the servers of nats.url log in differently (`{0}` and `{1}`); give one user for all")]
    MixedLogins(String, String),
}

/// `nats.url`: one server or a comma-separated list (a cluster), each
/// `nats://[user[:password]@]host[:port]`. The login may ride in every URL or in some; where
/// given, it must be the same.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrls {
    servers: Vec<Url>,
    user: Option<String>,
    password: Option<String>,
}

/// Never shows the password.
impl std::fmt::Debug for NatsUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsUrls")
            .field("servers", &self.servers())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn parse(url: &str) -> Result<Url, UrlError> {
    Url::parse(url.trim()).map_err(|e| UrlError::Invalid {
        url: redact(url),
        reason: e.to_string(),
    })
}

fn decoded(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// What a user name or password keeps unencoded in a URL: RFC 3986's unreserved characters.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encoded(s: &str) -> String {
    utf8_percent_encode(s, USERINFO).to_string()
}

impl NatsUrls {
    pub fn parse(list: &str) -> Result<Self, UrlError> {
        let mut servers = Vec::new();
        let mut login: Option<(String, Option<String>)> = None;
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let with_scheme = if part.contains("://") {
                part.to_owned()
            } else {
                format!("nats://{part}")
            };
            let mut url = parse(&with_scheme)?;
            if url.host_str().is_none() {
                return Err(UrlError::Invalid {
                    url: redact(part),
                    reason: "no host".into(),
                });
            }
            if !url.username().is_empty() {
                let this = (decoded(url.username()), url.password().map(decoded));
                match &login {
                    Some(seen) if *seen != this => {
                        return Err(UrlError::MixedLogins(seen.0.clone(), this.0));
                    }
                    _ => login = Some(this),
                }
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            servers.push(url);
        }
        if servers.is_empty() {
            return Err(UrlError::Empty);
        }
        let (user, password) = match login {
            Some((u, p)) => (Some(u), p),
            None => (None, None),
        };
        Ok(Self {
            servers,
            user,
            password,
        })
    }

    /// Every server without its login, as async-nats takes them.
    pub fn servers(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect()
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Host (without IPv6 brackets) and port (default 4222) of the first server.
    pub fn first_host_port(&self) -> (String, u16) {
        let u = &self.servers[0];
        let host = u
            .host_str()
            .unwrap_or("127.0.0.1")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        (host, u.port().unwrap_or(4222))
    }

    /// The same servers with another login (every server of the list), as a `nats.url` string.
    pub fn with_login(&self, user: &str, password: &str) -> String {
        self.servers
            .iter()
            .map(|u| {
                let mut u = u.clone();
                let _ = u.set_username(&encoded(user));
                let _ = u.set_password(Some(&encoded(password)));
                u.as_str().trim_end_matches('/').to_owned()
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A URL, or a comma-separated list of them, with every password replaced by `***`; text that
/// does not parse is returned without anything after an `@`'s credentials.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|one| match Url::parse(one.trim()) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.as_str().trim_end_matches('/').to_owned()
            }
            Ok(_) => one.trim().to_owned(),
            Err(_) => match one.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => one.trim().to_owned(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A database URL pointing at database `db` instead, keeping its server, login and parameters.
pub fn with_database(url: &str, db: &str) -> Result<String, UrlError> {
    let mut u = parse(url)?;
    u.set_path(&format!("/{db}"));
    Ok(u.to_string())
}

/// `host:port` of a Postgres URL (`None` for SQLite and other schemes).
pub fn server_of(url: &str) -> Option<String> {
    let u = Url::parse(url).ok()?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        return None;
    }
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// A Postgres URL pointed at the server of `other` (its host and port), keeping its own login,
/// database and parameters.
pub fn on_server_of(url: &str, other: &str) -> Option<String> {
    let mut u = Url::parse(url).ok()?;
    let o = Url::parse(other).ok()?;
    u.set_host(o.host_str()).ok()?;
    u.set_port(o.port()).ok()?;
    Some(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_with_its_login() {
        let n = NatsUrls::parse("nats://hub:hub-dev@127.0.0.1:4333").unwrap();
        assert_eq!(n.servers(), ["nats://127.0.0.1:4333"]);
        assert_eq!((n.user(), n.password()), (Some("hub"), Some("hub-dev")));
        assert_eq!(n.first_host_port(), ("127.0.0.1".into(), 4333));
        let bare = NatsUrls::parse("nats://localhost").unwrap();
        assert_eq!(bare.first_host_port(), ("localhost".into(), 4222));
        assert_eq!(bare.user(), None);
    }

    #[test]
    fn a_cluster_list_shares_one_login() {
        let n = NatsUrls::parse(
            "nats://hub:hub-dev@127.0.0.1:1, nats://hub:hub-dev@127.0.0.1:2,nats://127.0.0.1:3",
        )
        .unwrap();
        assert_eq!(
            n.servers(),
            [
                "nats://127.0.0.1:1",
                "nats://127.0.0.1:2",
                "nats://127.0.0.1:3"
            ]
        );
        assert_eq!(n.user(), Some("hub"));
        assert_eq!(
            NatsUrls::parse("nats://a:x@h:1,nats://b:y@h:2"),
            Err(UrlError::MixedLogins("a".into(), "b".into()))
        );
        assert_eq!(NatsUrls::parse(" , "), Err(UrlError::Empty));
    }

    #[test]
    fn ipv6_hosts_and_percent_encoded_passwords() {
        let n = NatsUrls::parse("nats://hub:p%40ss%3Aw%2Frd@[::1]:4222").unwrap();
        assert_eq!(n.password(), Some("p@ss:w/rd"));
        assert_eq!(n.servers(), ["nats://[::1]:4222"]);
        assert_eq!(n.first_host_port(), ("::1".into(), 4222));
        let role = n.with_login("partner-acme-air", "a@b");
        assert_eq!(role, "nats://partner-acme-air:a%40b@[::1]:4222");
        let back = NatsUrls::parse(&role).unwrap();
        assert_eq!(
            (back.user(), back.password()),
            (Some("partner-acme-air"), Some("a@b"))
        );
    }

    #[test]
    fn redaction_hides_every_password() {
        assert_eq!(
            redact("nats://hub:hub-dev@127.0.0.1:4222"),
            "nats://hub:***@127.0.0.1:4222"
        );
        assert_eq!(
            redact("nats://u:p%40x@h:1,nats://u:p%40x@[::1]:2"),
            "nats://u:***@h:1,nats://u:***@[::1]:2"
        );
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders?sslmode=disable"),
            "postgres://app:***@db:5432/orders?sslmode=disable"
        );
        assert_eq!(
            redact("sqlite://data/x.db?mode=rwc"),
            "sqlite://data/x.db?mode=rwc"
        );
        assert!(!redact("not a url:secret@host").contains("secret"));
    }

    #[test]
    fn database_urls_change_database_or_server_and_keep_the_rest() {
        let aux = "postgres://app:pw@10.0.0.1:5432/orderhub_aux?sslmode=disable";
        assert_eq!(server_of(aux).as_deref(), Some("10.0.0.1:5432"));
        assert_eq!(server_of("postgres://db/x").as_deref(), Some("db"));
        assert_eq!(server_of("sqlite://data/aux.db"), None);
        assert_eq!(
            on_server_of(aux, "postgres://other@10.0.0.2:5433/orderhub").as_deref(),
            Some("postgres://app:pw@10.0.0.2:5433/orderhub_aux?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5/orderhub?x=1", "postgres").unwrap(),
            "postgres://u@127.0.0.1:5/postgres?x=1"
        );
        assert_eq!(
            with_database("postgres://u@[::1]:5", "d").unwrap(),
            "postgres://u@[::1]:5/d"
        );
    }
}
