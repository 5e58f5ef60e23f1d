//! `orderhub trace <order_id>`: `orders.admin.trace` printed as a timeline for a person.

use actors::protocol::TraceReply;
use anyhow::Context as _;

use crate::settings::Settings;

pub async fn run(settings: &Settings, order_id: &str) -> anyhow::Result<()> {
    let client = crate::startup::connect_hub(&settings.nats, "orderhub-trace").await?;
    let subjects = actors::protocol::Subjects::new(settings.nats.subject_prefix.clone());
    let body = serde_json::to_vec(&serde_json::json!({ "order_id": order_id }))?;
    let reply = client
        .request(subjects.trace(), body.into())
        .await
        .context("no hub answered orders.admin.trace (is `orderhub serve` running?)")?;
    let value: serde_json::Value =
        serde_json::from_slice(&reply.payload).context("decoding the trace reply")?;
    if let Some(e) = value.get("error") {
        anyhow::bail!(
            "{}: {}",
            e["code"],
            e["message"].as_str().unwrap_or_default()
        );
    }
    let trace: TraceReply = serde_json::from_value(value).context("decoding the trace reply")?;
    print!("{}", render(&trace));
    Ok(())
}

/// The trace as lines of text: the order, then one line per transition and per event in time
/// order, then the auxiliary records.
pub fn render(t: &TraceReply) -> String {
    let o = &t.order;
    let mut out = format!(
        "order {} — user {}, partner {}, {} {} {}\n  now {} (version {}){}\n",
        o.order_id,
        o.user_id,
        o.partner_id,
        o.product,
        o.amount_minor,
        o.currency,
        o.status,
        o.version,
        t.settled_at
            .as_deref()
            .map(|s| format!(", settled at {s}"))
            .unwrap_or_default(),
    );
    let mut lines: Vec<(String, String)> = Vec::new();
    for tr in &t.transitions {
        lines.push((tr.at.clone(), format!("v{} {}", tr.version, tr.status)));
    }
    for e in &t.events {
        let seen: Vec<String> = e
            .consumers
            .iter()
            .map(|c| {
                let state = match (c.delivered, c.acked) {
                    (_, true) => "acked",
                    (true, false) => "delivered",
                    _ => "pending",
                };
                format!("{} {state}", c.name)
            })
            .collect();
        lines.push((
            e.committed_at.clone(),
            format!("event {} committed ({})", e.kind, e.subject),
        ));
        if let Some(at) = &e.published_at {
            lines.push((
                at.clone(),
                format!(
                    "event {} published: stream seq {}{}; {}",
                    e.kind,
                    e.stream_seq.map_or("?".into(), |s| s.to_string()),
                    e.commit_lsn
                        .as_deref()
                        .map(|l| format!(", commit LSN {l}"))
                        .unwrap_or_default(),
                    if seen.is_empty() {
                        "no consumer".to_owned()
                    } else {
                        seen.join(", ")
                    }
                ),
            ));
        }
    }
    if let Some(r) = &t.result {
        lines.push((
            r.received_at.clone(),
            format!("result {} ({})", r.outcome, r.result_id),
        ));
    }
    if let Some(r) = &t.late_result {
        lines.push((
            r.received_at.clone(),
            format!("late result {} ({})", r.outcome, r.result_id),
        ));
    }
    for a in &t.aux {
        lines.push((
            a.updated_at.clone(),
            format!("aux {}: {}", a.system, a.status),
        ));
    }
    // RFC 3339 UTC strings of one format sort as times.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    for (at, what) in lines {
        out.push_str(&format!("  {at}  {what}\n"));
    }
    if !t.aux_missing.is_empty() {
        out.push_str(&format!(
            "  no record yet from: {}\n",
            t.aux_missing.join(", ")
        ));
    }
    out
}
