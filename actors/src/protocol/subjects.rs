/// Every subject orderhub speaks, under one configurable prefix (`orders` by default).
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn submit(&self) -> String {
        format!("{}.submit", self.prefix)
    }
    pub fn query(&self) -> String {
        format!("{}.query", self.prefix)
    }
    pub fn status(&self) -> String {
        format!("{}.admin.status", self.prefix)
    }
    pub fn trace(&self) -> String {
        format!("{}.admin.trace", self.prefix)
    }
    pub fn partner_get(&self, partner_id: &str) -> String {
        format!("{}.partner.{partner_id}.get", self.prefix)
    }
    pub fn partner_result(&self, partner_id: &str) -> String {
        format!("{}.partner.{partner_id}.result", self.prefix)
    }
    pub fn aux_record(&self, system: &str) -> String {
        format!("{}.aux.{system}.record", self.prefix)
    }
    /// `<prefix>.events.>`: the subjects of stream `ORDER_EVENTS`.
    pub fn events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }
    pub fn stored_event(&self, partner_id: &str, order_id: &str) -> String {
        format!("{}.events.stored.{partner_id}.{order_id}", self.prefix)
    }
    pub fn result_event(&self, user_id: &str, order_id: &str) -> String {
        format!("{}.events.result.{user_id}.{order_id}", self.prefix)
    }
    pub fn settled_event(&self, user_id: &str, order_id: &str) -> String {
        format!("{}.events.settled.{user_id}.{order_id}", self.prefix)
    }
    pub fn late_event(&self, user_id: &str, order_id: &str) -> String {
        format!("{}.events.late.{user_id}.{order_id}", self.prefix)
    }
    /// Filter of a partner's durable consumer.
    pub fn stored_events_of(&self, partner_id: &str) -> String {
        format!("{}.events.stored.{partner_id}.>", self.prefix)
    }
    /// A filter of the gateway's and every auxiliary system's durable consumer.
    pub fn result_events(&self) -> String {
        format!("{}.events.result.>", self.prefix)
    }
    /// A filter of the gateway's durable consumer.
    pub fn settled_events(&self) -> String {
        format!("{}.events.settled.>", self.prefix)
    }
    /// A filter of the gateway's and every auxiliary system's durable consumer.
    pub fn late_events(&self) -> String {
        format!("{}.events.late.>", self.prefix)
    }
    /// The filters of the gateway's durable consumer.
    pub fn gateway_filters(&self) -> Vec<String> {
        vec![
            self.result_events(),
            self.settled_events(),
            self.late_events(),
        ]
    }
    /// The filters of an auxiliary system's durable consumer.
    pub fn aux_filters(&self) -> Vec<String> {
        vec![self.result_events(), self.late_events()]
    }

    /// The token a wildcard endpoint subject carries at `*` (partner id or aux system), if the
    /// subject has the endpoint's shape `<prefix>.<kind>.<token>.<verb>`.
    pub fn token_of<'a>(&self, subject: &'a str, kind: &str, verb: &str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let rest = rest.strip_prefix(kind)?.strip_prefix('.')?;
        let token = rest.strip_suffix(verb)?.strip_suffix('.')?;
        (!token.is_empty() && !token.contains('.')).then_some(token)
    }
}

/// Durable consumer names the hub creates on `ORDER_EVENTS`.
pub mod consumer {
    pub const GATEWAY: &str = "gateway";
    pub fn partner(partner_id: &str) -> String {
        format!("partner-{partner_id}")
    }
    pub fn aux(system: &str) -> String {
        format!("aux-{system}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_tokens() {
        let s = Subjects::new("orders");
        assert_eq!(
            s.token_of("orders.partner.acme-air.get", "partner", "get"),
            Some("acme-air")
        );
        assert_eq!(
            s.token_of("orders.aux.audit.record", "aux", "record"),
            Some("audit")
        );
        assert_eq!(
            s.token_of("orders.partner.acme-air.result", "partner", "get"),
            None
        );
        assert_eq!(s.token_of("other.partner.x.get", "partner", "get"), None);
        assert_eq!(s.stored_event("p", "o"), "orders.events.stored.p.o");
    }
}
