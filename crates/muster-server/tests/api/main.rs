//! Black-box tests of the control plane: each test starts a real server on 127.0.0.1:0 with its
//! own SQLite file and talks HTTP to it. Time-dependent rules move the server's clock forward
//! and run one health sweep instead of sleeping.

// Test helpers are `pub` for the modules of this one test binary, not for the world.
#![allow(unreachable_pub)]
mod fake_service;
mod fake_telegram;
mod helpers;

mod abuse;
mod audit;
mod batches;
mod canaries;
mod chat;
mod edge;
mod forge_api;
mod gitops;
mod gitops_flow;
mod handoff;
mod identity;
mod lifecycle;
mod llm;
mod notifications;
mod notify_wire;
mod operations;
mod repair;
mod restart;
mod schedules;
mod streams;
