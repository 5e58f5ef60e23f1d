//! orderhub's integration tests: real nats-server, real databases, the hub driven only over NATS
//! as each role of `nats.conf` would.

mod flow;
mod helpers;
mod replica;
mod restart;
mod roles;
mod security;
mod hostile;
mod flood;
mod login;
