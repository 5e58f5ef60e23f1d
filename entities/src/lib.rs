//! orderhub's schema: the SeaORM entities (generated, see the README for the command) and the
//! [`Migrator`] that creates them on SQLite and Postgres alike.
//!
//! Two databases: the *order* database (`orders`, `order_results` with late results,
//! `outbox`) on the primary, read through the replica, and the *auxiliary* database (`aux_records`).
//!
//! `orders` is what every read of an order sees. It is a view of two tables: `order_facts`, the
//! submitted fields, written once, and `order_state`, the columns that change with the order's
//! story (status, version, each transition's time, the result deadline, the settlement). Writes go
//! to the tables: [`orders::Model::facts`] and [`orders::Model::state`] split a new order.

pub mod entity;
mod migrator;
mod split;

pub use entity::{aux_records, order_facts, order_results, order_state, orders, outbox};
pub use migrator::{MigrationError, Migrator};

/// Names of the unique constraints the behaviour layer maps to domain outcomes.
pub mod constraints {
    /// `order_facts (user_id, request_id)`: the submit idempotency key.
    pub const ORDERS_USER_REQUEST: &str = "ux_orders_user_request";
}
