//! What the unit tests share: an order row to start from, and a way to write it.

use chrono::{DateTime, Utc};
use entities::orders;
use sea_orm::{ActiveModelTrait, DatabaseConnection, IntoActiveModel};

/// An `accepted` order of user `u-1` with partner `acme-air`, created at `at`; tests change the
/// fields they are about.
pub fn order(id: &str, at: DateTime<Utc>) -> orders::Model {
    orders::Model {
        id: id.into(),
        user_id: "u-1".into(),
        request_id: id.into(),
        partner_id: "acme-air".into(),
        product: "flight".into(),
        amount_minor: 12_345,
        currency: "EUR".into(),
        items: serde_json::json!([]),
        payload: serde_json::json!({}),
        status: "accepted".into(),
        version: 1,
        result_deadline: None,
        settled_at: None,
        created_at: at,
        updated_at: at,
        dispatched_at: None,
        result_stored_at: None,
        notified_at: None,
        late_result_stored_at: None,
        late_notified_at: None,
    }
}

/// Writes `order` as it is, in its two tables (`orders` is a view of them).
pub async fn insert(db: &DatabaseConnection, order: &orders::Model) {
    order
        .facts()
        .into_active_model()
        .insert(db)
        .await
        .expect("the order's facts");
    order
        .state()
        .into_active_model()
        .insert(db)
        .await
        .expect("the order's state");
}
