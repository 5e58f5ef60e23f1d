//! An order as the `orders` view shows it, split into the rows of its two tables.

use crate::entity::{order_facts, order_state, orders};

impl orders::Model {
    /// The submitted fields: the `order_facts` row, written once.
    pub fn facts(&self) -> order_facts::Model {
        order_facts::Model {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            request_id: self.request_id.clone(),
            partner_id: self.partner_id.clone(),
            product: self.product.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            items: self.items.clone(),
            payload: self.payload.clone(),
            created_at: self.created_at,
        }
    }

    /// What changes with the order's story: the `order_state` row.
    pub fn state(&self) -> order_state::Model {
        order_state::Model {
            id: self.id.clone(),
            partner_id: self.partner_id.clone(),
            status: self.status.clone(),
            version: self.version,
            result_deadline: self.result_deadline,
            settled_at: self.settled_at,
            updated_at: self.updated_at,
            dispatched_at: self.dispatched_at,
            result_stored_at: self.result_stored_at,
            notified_at: self.notified_at,
            late_result_stored_at: self.late_result_stored_at,
            late_notified_at: self.late_notified_at,
        }
    }
}
