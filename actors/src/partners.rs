//! The configured partners and their `result_timeout`.

use std::collections::HashMap;
use std::time::Duration;

/// Used for orders of a partner no longer in the configuration.
const DEFAULT_RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Configured partners, by id. Cheap to share behind an `Arc`.
#[derive(Clone, Debug, Default)]
pub struct Partners {
    timeouts: HashMap<String, Duration>,
}

impl Partners {
    pub fn new(timeouts: HashMap<String, Duration>) -> Self {
        Self { timeouts }
    }

    pub fn contains(&self, partner_id: &str) -> bool {
        self.timeouts.contains_key(partner_id)
    }

    /// How long the partner has to answer once its stored event is out.
    pub fn result_timeout(&self, partner_id: &str) -> Duration {
        self.timeouts
            .get(partner_id)
            .copied()
            .unwrap_or(DEFAULT_RESULT_TIMEOUT)
    }
}
