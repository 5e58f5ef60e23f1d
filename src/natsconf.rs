//! `orderhub nats-conf`: the development `nats.conf`, generated from the configured partners and
//! auxiliary systems, with one NATS account per role.
//!
//! ```text
//! HUB (JetStream: ORDER_EVENTS and every durable)     user hub
//!   exports ──► PARTNER_<ID> (one per partner)       user partner-<id>
//!           ──► GATEWAY                               user gateway
//!           ──► AUX_<SYSTEM> (one per external aux)   user aux-<system>, or [[aux]] user
//!           ──► OPERATOR                              user operator
//! ```
//!
//! Every export names exactly the accounts that import it. A role reaches the hub's JetStream API
//! as `JS.hub.API.<rest>`, which its import maps to the hub account's `$JS.API.<rest>`; acks keep
//! their `$JS.ACK.…` subjects. A request that crosses accounts reaches the hub with a `_R_.…`
//! reply subject made by the server, and whatever a role names as its reply subject is answered in
//! the role's own account, where no stream exists: nothing but the hub writes into `ORDER_EVENTS`.
//!
//! The output is deterministic (the order of the configuration), so a test can compare it with the
//! committed `nats.conf`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use actors::protocol::{Subjects, consumer};
use thiserror::Error;

use crate::settings::Settings;

/// The hub account's name, as the JetStream API prefix of every role spells it.
pub const HUB_ACCOUNT: &str = "HUB";
/// The subject prefix under which every role reaches the hub account's JetStream API.
pub const JS_API_PREFIX: &str = "JS.hub.API";

/// Why no configuration could be generated.
#[derive(Debug, Error)]
pub enum NatsConfError {
    /// Two roles would share a NATS account or user name (e.g. partners `acme-air` and
    /// `acme_air` both map to account `PARTNER_ACME_AIR`).
    #[error("{what} `{name}` would be used twice ({first} and {second}); rename one of them")]
    Clash {
        what: &'static str,
        name: String,
        first: String,
        second: String,
    },
}

/// One request/reply subject a role imports from the hub account.
#[derive(Debug, Clone)]
struct Service {
    /// The subject as the hub account exports it.
    export: String,
    /// The subject as the role publishes it (differs for the JetStream API: the prefix).
    local: String,
    /// Several answers per request (`$SRV` from every instance, pull deliveries, direct gets).
    streamed: bool,
}

/// One NATS account with one user: a role.
#[derive(Debug)]
struct RoleAccount {
    account: String,
    user: String,
    about: String,
    services: Vec<Service>,
    /// Subjects the role may subscribe to live (stream imports of the hub account's traffic).
    streams: Vec<String>,
}

/// How each role's imports map the hub account's JetStream API.
struct JetStreamApi<'a> {
    stream: &'a str,
}

impl JetStreamApi<'_> {
    /// `$JS.API.<rest>` in the hub account, `JS.hub.API.<rest>` in the role's.
    fn api(&self, rest: &str, streamed: bool) -> Service {
        Service {
            export: format!("$JS.API.{rest}"),
            local: format!("{JS_API_PREFIX}.{rest}"),
            streamed,
        }
    }

    /// Info, next and acks of one durable consumer: all a role needs to consume it.
    fn consumer(&self, name: &str) -> Vec<Service> {
        let stream = self.stream;
        let ack = format!("$JS.ACK.{stream}.{name}.>");
        vec![
            self.api(&format!("CONSUMER.INFO.{stream}.{name}"), false),
            self.api(&format!("CONSUMER.MSG.NEXT.{stream}.{name}"), true),
            plain(&ack, false),
        ]
    }
}

fn plain(subject: &str, streamed: bool) -> Service {
    Service {
        export: subject.to_owned(),
        local: subject.to_owned(),
        streamed,
    }
}

/// `acme-air` → `ACME_AIR`.
fn account_token(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// The development password of a user.
pub fn dev_password(user: &str) -> String {
    format!("{user}-dev")
}

/// The NATS user of an external auxiliary system: its `user` setting, else `aux-<system>`.
pub fn aux_user(system: &str, user: &str) -> String {
    if user.is_empty() {
        format!("aux-{system}")
    } else {
        user.to_owned()
    }
}

fn roles(settings: &Settings) -> Vec<RoleAccount> {
    let s = Subjects::new(settings.nats.subject_prefix.clone());
    let js = JetStreamApi {
        stream: &settings.nats.stream,
    };
    let prefix = s.prefix();
    let mut roles = Vec::new();
    for p in &settings.partners {
        let mut services = vec![plain(&format!("{prefix}.partner.{}.>", p.id), false)];
        services.extend(js.consumer(&consumer::partner(&p.id)));
        roles.push(RoleAccount {
            account: format!("PARTNER_{}", account_token(&p.id)),
            user: consumer::partner(&p.id),
            about: format!(
                "partner `{}`: its get and result endpoints, its stored events, its consumer",
                p.id
            ),
            services,
            streams: vec![s.stored_events_of(&p.id)],
        });
    }
    let mut gateway = vec![plain(&s.submit(), false), plain(&s.query(), false)];
    gateway.extend(js.consumer(consumer::GATEWAY));
    roles.push(RoleAccount {
        account: "GATEWAY".into(),
        user: "gateway".into(),
        about: "user gateways: submit and query; result, settled and late events; consumer gateway"
            .into(),
        services: gateway,
        streams: s.gateway_filters(),
    });
    for a in settings.aux.iter().filter(|a| a.external) {
        let mut services = vec![plain(&s.aux_record(&a.system), false)];
        services.extend(js.consumer(&consumer::aux(&a.system)));
        roles.push(RoleAccount {
            account: format!("AUX_{}", account_token(&a.system)),
            user: aux_user(&a.system, &a.user),
            about: format!(
                "external auxiliary system `{}`: its record endpoint, result and late events, \
                 consumer aux-{}",
                a.system, a.system
            ),
            services,
            streams: s.aux_filters(),
        });
    }
    let stream = js.stream;
    let mut operator = vec![
        plain(&s.query(), false),
        plain(&s.status(), false),
        plain(&s.trace(), false),
        plain("$SRV.>", true),
    ];
    operator.extend([
        js.api("INFO", false),
        js.api("STREAM.LIST", false),
        js.api("STREAM.NAMES", false),
        js.api(&format!("STREAM.INFO.{stream}"), false),
        js.api(&format!("CONSUMER.LIST.{stream}"), false),
        js.api(&format!("CONSUMER.NAMES.{stream}"), false),
        js.api(&format!("CONSUMER.INFO.{stream}.*"), false),
        js.api(&format!("DIRECT.GET.{stream}"), true),
        js.api(&format!("DIRECT.GET.{stream}.>"), true),
    ]);
    roles.push(RoleAccount {
        account: "OPERATOR".into(),
        user: "operator".into(),
        about: "operators, read only: query, status, trace, $SRV discovery, JetStream reads and \
                direct gets; every event and the hub's own traffic live"
            .into(),
        services: operator,
        streams: vec![format!("{prefix}.>")],
    });
    roles
}

/// Refuses two roles with one account or user name.
fn check_unique(roles: &[RoleAccount]) -> Result<(), NatsConfError> {
    let mut accounts: BTreeMap<&str, &str> = BTreeMap::from([(HUB_ACCOUNT, "the hub")]);
    let mut users: BTreeMap<&str, &str> = BTreeMap::from([("hub", "the hub")]);
    for r in roles {
        if let Some(first) = accounts.insert(&r.account, &r.about) {
            return Err(NatsConfError::Clash {
                what: "account",
                name: r.account.clone(),
                first: first.to_owned(),
                second: r.about.clone(),
            });
        }
        if let Some(first) = users.insert(&r.user, &r.about) {
            return Err(NatsConfError::Clash {
                what: "user",
                name: r.user.clone(),
                first: first.to_owned(),
                second: r.about.clone(),
            });
        }
    }
    Ok(())
}

/// One export of the hub account and the accounts that import it, in first-seen order.
struct Export {
    service: bool,
    subject: String,
    streamed: bool,
    accounts: Vec<String>,
}

fn exports(roles: &[RoleAccount]) -> Vec<Export> {
    let mut out: Vec<Export> = Vec::new();
    let mut add = |service: bool, subject: &str, streamed: bool, account: &str| match out
        .iter_mut()
        .find(|e| e.service == service && e.subject == subject)
    {
        Some(e) => e.accounts.push(account.to_owned()),
        None => out.push(Export {
            service,
            subject: subject.to_owned(),
            streamed,
            accounts: vec![account.to_owned()],
        }),
    };
    for r in roles {
        for s in &r.services {
            add(true, &s.export, s.streamed, &r.account);
        }
        for s in &r.streams {
            add(false, s, false, &r.account);
        }
    }
    out
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole `nats.conf` for these settings.
pub fn render(settings: &Settings) -> Result<String, NatsConfError> {
    let roles = roles(settings);
    check_unique(&roles)?;
    let prefix = &settings.nats.subject_prefix;
    let mut out = String::from(HEADER);
    out.push_str("accounts {\n");

    // The hub's account: its user, JetStream, and the exports.
    let _ = writeln!(out, "  {HUB_ACCOUNT} {{");
    out.push_str("    jetstream: enabled\n");
    out.push_str("    users: [\n");
    let _ = writeln!(
        out,
        "      {{\n        user: hub\n        password: {}\n        permissions: {{\n          \
         publish: {{ allow: [{}] }}\n          subscribe: {{ allow: [{}] }}\n          \
         allow_responses: true\n        }}\n      }}",
        dev_password("hub"),
        list(&[
            format!("{prefix}.>"),
            "$JS.API.>".into(),
            "$JS.ACK.>".into(),
            "$SRV.>".into()
        ]),
        list(&[
            format!("{prefix}.>"),
            "$SRV.>".into(),
            "_INBOX_hub.>".into()
        ]),
    );
    out.push_str("    ]\n    exports: [\n");
    for e in exports(&roles) {
        let kind = if e.service { "service" } else { "stream" };
        let streamed = if e.streamed {
            ", response_type: stream"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "      {{ {kind}: \"{}\", accounts: [{}]{streamed} }}",
            e.subject,
            e.accounts.join(", ")
        );
    }
    out.push_str("    ]\n  }\n");

    for r in &roles {
        let publish: Vec<String> = r.services.iter().map(|s| s.local.clone()).collect();
        let mut subscribe = r.streams.clone();
        subscribe.push(format!("_INBOX_{}.>", r.user));
        let _ = writeln!(out, "\n  # {}", r.about);
        let _ = writeln!(out, "  {} {{", r.account);
        let _ = writeln!(
            out,
            "    users: [\n      {{\n        user: {}\n        password: {}\n        \
             permissions: {{\n          publish: {{ allow: [{}] }}\n          \
             subscribe: {{ allow: [{}] }}\n        }}\n      }}\n    ]",
            r.user,
            dev_password(&r.user),
            list(&publish),
            list(&subscribe),
        );
        out.push_str("    imports: [\n");
        for s in &r.services {
            let to = if s.local == s.export {
                String::new()
            } else {
                format!(", to: \"{}\"", s.local)
            };
            let _ = writeln!(
                out,
                "      {{ service: {{ account: {HUB_ACCOUNT}, subject: \"{}\" }}{to} }}",
                s.export
            );
        }
        for s in &r.streams {
            let _ = writeln!(
                out,
                "      {{ stream: {{ account: {HUB_ACCOUNT}, subject: \"{s}\" }} }}"
            );
        }
        out.push_str("    ]\n  }\n");
    }
    out.push_str("}\n");
    Ok(out)
}

const HEADER: &str = r#"# orderhub — development nats-server configuration: one NATS account per role.
#
# GENERATED by `orderhub nats-conf` from config/default.toml (partners, auxiliary systems, subject
# prefix, stream); do not edit by hand. After changing the partners or auxiliary systems:
#
#     cargo run -- nats-conf > nats.conf
#
# and reload the servers (`nats-server --signal reload`), then restart the hubs one at a time.
# A test fails when this file differs from the command's output. See docs/protocol.md, "Roles and
# accounts", for what each role may do and how it connects.
#
# Start it as the tests and the demo do (port and JetStream store directory come from the command
# line):
#
#     nats-server -c nats.conf -p <port> -sd <store dir>
#
# * Only account HUB has JetStream: stream ORDER_EVENTS and every durable consumer live there, and
#   only user `hub` (every instance of the hub) publishes into it. Every export below names exactly
#   the accounts that import it.
# * Every other role reaches the hub account's JetStream API as `JS.hub.API.<rest>` (its import maps
#   it to `$JS.API.<rest>`): async-nats `jetstream::with_prefix(client, "JS.hub.API")`, nats-py
#   `nc.jetstream(prefix="JS.hub.API")`, the nats CLI `--js-api-prefix JS.hub.API`. Acks keep their
#   `$JS.ACK.ORDER_EVENTS.<consumer>.>` subjects. Clients bind their durable consumer by name.
# * A request that crosses accounts reaches the hub with a reply subject `_R_.…` made by the
#   server; the answer goes back to the requester's own account. Whatever reply subject a role
#   names is answered there, where no stream exists: no request of another role lands in
#   ORDER_EVENTS.
# * `response_type: stream` lets several answers through one request: `$SRV` discovery (one per hub
#   instance), pull deliveries with their status messages, direct-get batches. A pull's answers
#   travel for the export's response threshold (2 minutes): pulls expire well before it.
# * Each user keeps subject permissions (a denied publish is reported as a permissions violation)
#   and may subscribe only to its own inbox prefix `_INBOX_<user>`.
# * Passwords are the development ones, `<user>-dev`, in plain text (the server warns about that).
#   Production keeps the same accounts with nkeys or JWT accounts (README.md, "Security").

# Loopback only: these passwords are public. `-a 0.0.0.0` exposes the server deliberately.
host: 127.0.0.1

# Largest message: a query's list form returns up to 100 orders of up to 64 KiB payload each.
max_payload: 8MB

# Per-connection buffer for a slow reader before the server cuts it off.
max_pending: 64MB

jetstream {
  max_memory_store: 256MB
  max_file_store: 10GB
}

"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{AuxSettings, PartnerSettings};

    fn settings() -> Settings {
        Settings::load(None).expect("config/default.toml loads")
    }

    #[test]
    fn one_account_per_role_and_every_export_names_its_importers() {
        let text = render(&settings()).expect("renders");
        for account in [
            "HUB",
            "PARTNER_ACME_AIR",
            "PARTNER_GLOBEX_HOTELS",
            "GATEWAY",
            "AUX_AUDIT",
            "OPERATOR",
        ] {
            assert!(text.contains(&format!("\n  {account} {{\n")), "{account}");
        }
        assert_eq!(text.matches("jetstream: enabled").count(), 1);
        assert!(text.contains(
            "{ service: \"$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.partner-acme-air\", \
             accounts: [PARTNER_ACME_AIR], response_type: stream }"
        ));
        assert!(
            text.contains("{ stream: \"orders.events.result.>\", accounts: [GATEWAY, AUX_AUDIT] }")
        );
        assert!(text.contains("{ service: \"orders.query\", accounts: [GATEWAY, OPERATOR] }"));
        assert!(
            text.contains("{ service: \"$SRV.>\", accounts: [OPERATOR], response_type: stream }")
        );
        // Built-in systems are consumed by the hub itself: no account of their own.
        assert!(!text.contains("AUX_INVOICE"));
        assert!(!text.contains("exports: [\n    ]"));
    }

    #[test]
    fn a_new_partner_gets_its_account_and_exports() {
        let mut s = settings();
        s.partners.push(PartnerSettings {
            id: "wayne_rail".into(),
            result_timeout: std::time::Duration::from_secs(5),
            max_pending: 10,
        });
        s.aux.push(AuxSettings {
            system: "crm".into(),
            external: true,
            user: String::new(),
        });
        let text = render(&s).expect("renders");
        assert!(text.contains("\n  PARTNER_WAYNE_RAIL {\n"));
        assert!(text.contains("user: partner-wayne_rail"));
        assert!(text.contains("\"JS.hub.API.CONSUMER.INFO.ORDER_EVENTS.partner-wayne_rail\""));
        assert!(text.contains("\n  AUX_CRM {\n"));
        assert!(text.contains("user: aux-crm"));
        assert!(text.contains("accounts: [GATEWAY, AUX_AUDIT, AUX_CRM]"));
    }

    #[test]
    fn clashing_accounts_are_refused() {
        let mut s = settings();
        s.partners.push(PartnerSettings {
            id: "acme_air".into(),
            result_timeout: std::time::Duration::from_secs(5),
            max_pending: 10,
        });
        let err = render(&s).expect_err("acme-air and acme_air share an account");
        assert!(err.to_string().contains("PARTNER_ACME_AIR"), "{err}");
    }
}
