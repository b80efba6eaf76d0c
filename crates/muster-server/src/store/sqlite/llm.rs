//! The LLM ledger on SQLite: a row per call in `llm_calls`, folded by retention into
//! `llm_daily` sums that are kept. Every read sums both tables, so a fold changes no total: a
//! call is in exactly one of them. Days are UTC.

use muster_api::{LatencyRow, LlmOutcome, UsageGroup, UsageRow};
use rusqlite::{Connection, params};

use super::outbox::insert_outbox;
use crate::notice::Notice;
use crate::store::{LlmCall, OutboxItem, Spent, StoreResult};

/// The UTC day of a time in ms, as SQLite writes it.
const DAY_OF_AT: &str = "strftime('%Y-%m-%d', at / 1000, 'unixepoch')";

/// Calls folded per retention transaction.
const PRUNE_BATCH: i64 = 1000;

pub(super) fn record(conn: &Connection, call: &LlmCall, notices: &[Notice]) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO llm_calls (id, at, workflow, provider, model, prompt_hash, input_tokens, \
         output_tokens, cached_tokens, latency_ms, cost_micros, outcome, error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        call.id.to_string(),
        call.at,
        call.workflow,
        call.provider,
        call.model,
        call.prompt_hash,
        call.input_tokens as i64,
        call.output_tokens as i64,
        call.cached_tokens as i64,
        call.latency_ms as i64,
        call.cost_micros,
        call.outcome.as_str(),
        call.error,
    ])?;
    for notice in notices {
        insert_outbox(conn, &OutboxItem::notice(notice), call.at)?;
    }
    Ok(())
}

/// The day `since` (ms) falls on.
fn day_of(conn: &Connection, since: i64) -> StoreResult<String> {
    Ok(conn.query_row(
        "SELECT strftime('%Y-%m-%d', ?1 / 1000, 'unixepoch')",
        [since],
        |r| r.get(0),
    )?)
}

pub(super) fn spent(conn: &Connection, workflow: &str, since: i64) -> StoreResult<Spent> {
    let day = day_of(conn, since)?;
    let (calls, tokens, cost): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(tokens), 0), coalesce(sum(cost), 0) \
             FROM (SELECT count(*) AS calls, sum(input_tokens + output_tokens) AS tokens, \
                          sum(cost_micros) AS cost \
                   FROM llm_calls WHERE workflow = ?1 AND at >= ?2 \
                   UNION ALL \
                   SELECT sum(calls), sum(input_tokens + output_tokens), sum(cost_micros) \
                   FROM llm_daily WHERE workflow = ?1 AND day >= ?3)",
        )?
        .query_row(params![workflow, since, day], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(Spent {
        calls: calls as u64,
        tokens: tokens as u64,
        cost_micros: cost,
    })
}

pub(super) fn daily_spend(
    conn: &Connection,
    workflow: &str,
    since: i64,
) -> StoreResult<Vec<(String, Spent)>> {
    let day = day_of(conn, since)?;
    let rows = conn
        .prepare_cached(&format!(
            "SELECT day, sum(calls), sum(tokens), sum(cost) FROM ( \
                 SELECT {DAY_OF_AT} AS day, count(*) AS calls, \
                        sum(input_tokens + output_tokens) AS tokens, sum(cost_micros) AS cost \
                 FROM llm_calls WHERE workflow = ?1 AND at >= ?2 GROUP BY 1 \
                 UNION ALL \
                 SELECT day, calls, input_tokens + output_tokens, cost_micros \
                 FROM llm_daily WHERE workflow = ?1 AND day >= ?3) \
             GROUP BY day ORDER BY day"
        ))?
        .query_map(params![workflow, since, day], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Spent {
                    calls: r.get::<_, i64>(1)? as u64,
                    tokens: r.get::<_, i64>(2)? as u64,
                    cost_micros: r.get(3)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn usage(
    conn: &Connection,
    group: UsageGroup,
    since: i64,
) -> StoreResult<Vec<UsageRow>> {
    let day = day_of(conn, since)?;
    // The columns a group keeps; the others are NULL.
    let (keys, order) = match group {
        UsageGroup::Workflow => ("NULL AS d, workflow AS w, NULL AS p, NULL AS m", "w"),
        UsageGroup::Model => ("NULL AS d, NULL AS w, provider AS p, model AS m", "p, m"),
        UsageGroup::Day => ("day AS d, workflow AS w, NULL AS p, NULL AS m", "d, w"),
    };
    let sql = format!(
        "SELECT d, w, p, m, sum(calls), sum(errors), sum(input_tokens), sum(output_tokens), \
                sum(cost_micros) \
         FROM (SELECT {keys}, calls, errors, input_tokens, output_tokens, cost_micros FROM ( \
                   SELECT {DAY_OF_AT} AS day, workflow, provider, model, 1 AS calls, \
                          outcome != 'ok' AS errors, input_tokens, output_tokens, cost_micros \
                   FROM llm_calls WHERE at >= ?1 \
                   UNION ALL \
                   SELECT day, workflow, provider, model, calls, errors, input_tokens, \
                          output_tokens, cost_micros \
                   FROM llm_daily WHERE day >= ?2)) \
         GROUP BY d, w, p, m ORDER BY {order}"
    );
    let rows = conn
        .prepare(&sql)?
        .query_map(params![since, day], |r| {
            Ok(UsageRow {
                day: r.get(0)?,
                workflow: r.get(1)?,
                provider: r.get(2)?,
                model: r.get(3)?,
                calls: r.get::<_, i64>(4)? as u64,
                errors: r.get::<_, i64>(5)? as u64,
                input_tokens: r.get::<_, i64>(6)? as u64,
                output_tokens: r.get::<_, i64>(7)? as u64,
                cost: r.get::<_, i64>(8)? as f64 / 1e6,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The 95th percentile by nearest rank, computed here: SQLite has no percentile function.
pub(super) fn latency(conn: &Connection, since: i64) -> StoreResult<Vec<LatencyRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT provider, model, latency_ms FROM llm_calls \
         WHERE at >= ?1 AND outcome = ?2 ORDER BY provider, model, latency_ms",
    )?;
    let mut rows: Vec<(String, String, Vec<u64>)> = Vec::new();
    let mut read = stmt.query(params![since, LlmOutcome::Ok.as_str()])?;
    while let Some(r) = read.next()? {
        let (provider, model): (String, String) = (r.get(0)?, r.get(1)?);
        let ms = r.get::<_, i64>(2)? as u64;
        match rows.last_mut() {
            Some((p, m, all)) if *p == provider && *m == model => all.push(ms),
            _ => rows.push((provider, model, vec![ms])),
        }
    }
    Ok(rows
        .into_iter()
        .map(|(provider, model, all)| {
            let rank = (all.len() * 95).div_ceil(100).max(1);
            LatencyRow {
                provider,
                model,
                calls: all.len() as u64,
                p95_ms: all[rank - 1],
            }
        })
        .collect())
}

/// Folds the oldest calls made before `before` into their day's sums, and deletes them.
pub(super) fn prune(conn: &Connection, before: i64) -> StoreResult<u64> {
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT max(seq) FROM (SELECT seq FROM llm_calls WHERE at < ?1 \
             ORDER BY seq LIMIT ?2)",
        )?
        .query_row(params![before, PRUNE_BATCH], |r| r.get(0))?;
    let Some(last) = last else {
        return Ok(0);
    };
    conn.prepare_cached(&format!(
        "INSERT INTO llm_daily (day, workflow, provider, model, calls, errors, input_tokens, \
                                output_tokens, cost_micros) \
         SELECT {DAY_OF_AT}, workflow, provider, model, count(*), \
                sum(outcome != 'ok'), sum(input_tokens), sum(output_tokens), sum(cost_micros) \
         FROM llm_calls WHERE seq <= ?1 AND at < ?2 GROUP BY 1, 2, 3, 4 \
         ON CONFLICT (day, workflow, provider, model) DO UPDATE SET \
             calls = calls + excluded.calls, errors = errors + excluded.errors, \
             input_tokens = input_tokens + excluded.input_tokens, \
             output_tokens = output_tokens + excluded.output_tokens, \
             cost_micros = cost_micros + excluded.cost_micros"
    ))?
    .execute(params![last, before])?;
    let deleted = conn
        .prepare_cached("DELETE FROM llm_calls WHERE seq <= ?1 AND at < ?2")?
        .execute(params![last, before])?;
    Ok(deleted as u64)
}
