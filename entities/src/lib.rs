//! orderhub's schema: the SeaORM entities (generated, see the README for the command) and the
//! [`Migrator`] that creates them on SQLite and Postgres alike.
//!
//! Two databases: the *order* database (`orders`, `order_results` with late results,
//! `outbox`) on the primary, read through the replica, and the *auxiliary* database (`aux_records`).

pub mod entity;
mod migrator;

pub use entity::{aux_records, order_results, orders, outbox};
pub use migrator::{MigrationError, Migrator};

/// Names of the unique constraints the behaviour layer maps to domain outcomes.
pub mod constraints {
    /// `orders (user_id, request_id)`: the submit idempotency key.
    pub const ORDERS_USER_REQUEST: &str = "ux_orders_user_request";
}
