//! Tests of the web UI against a real server on 127.0.0.1:0: plain HTTP checks of the pages,
//! sessions, CSRF and assets (`pages`), of the GitOps pages fed by signed pushes
//! (`deployments`), of the self-repair pages fed by alerts on the generic webhook
//! (`incidents`), of the LLM usage page fed by calls recorded in the ledger (`llm`), of the
//! schedules pages fed by the config file, the API and the scheduler's look (`schedules`), and
//! flows in a real headless Chromium (`flows`, skipped loudly unless `MUSTER_TEST_BROWSER` is
//! set).

// Test helpers are `pub` for the modules of this one test binary, not for the world.
#![allow(unreachable_pub)]

// The API tests' `TestApp`, shared rather than copied; this binary uses part of it.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../api/fake_service.rs"]
mod fake_service;

mod browser;
mod deployments;
mod flows;
mod incidents;
mod llm;
mod pages;
mod schedules;
mod web;
