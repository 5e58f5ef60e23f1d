//! orderhub's integration tests: real nats-server, real databases, the hub driven only over NATS
//! as each role of `nats.conf` would.

mod accounts;
mod backlog;
mod bench;
mod demo;
mod examples;
mod flood;
mod flow;
mod helpers;
mod hostile;
mod login;
mod migrations;
mod pools;
mod readset;
mod replica;
mod restart;
mod roles;
mod schemas;
mod security;
mod story;
mod supervision;
