//! The live status page on the metrics listener: `/` (and `/status`) is a
//! server-rendered page of every pool (answer, policy, members with their
//! state, admin state, metrics, share or score and the age of their last
//! report), the ring and the last answer changes; `/status/events` streams
//! the same body again (server-sent events) each time the updater
//! publishes a new board, which a few lines of script swap in. Without
//! script the page is the same tables, refreshed by the browser. Everything
//! is served from here: no build step, nothing from elsewhere.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use std::sync::atomic::Ordering;

use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::WatchStream;

use crate::catalog::{Board, Boards};

/// A comment on a quiet stream this often keeps it from looking idle to
/// the listener (`metrics_idle`, 60 s by default) and to proxies between.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How long a page load waits for a board brought up to date.
const FRESH_WITHIN: Duration = Duration::from_millis(600);

/// The board to show now: the last one, or when it is behind what is
/// served (nobody was looking), the next one, waited for briefly.
async fn current(boards: &Boards) -> Arc<Board> {
    let mut rx = boards.tx.subscribe();
    if boards.stale.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(FRESH_WITHIN, rx.changed()).await;
    }
    rx.borrow_and_update().clone()
}

/// `/`, `/status` and `/status/events`, from the boards the updater posts.
pub fn router(boards: Arc<Boards>) -> axum::Router {
    use axum::routing::get;
    let page = {
        let boards = boards.clone();
        move || {
            let boards = boards.clone();
            async move { ([(axum::http::header::CACHE_CONTROL, "no-store")], Html(page(&*current(&boards).await))) }
        }
    };
    let events = move || {
        let boards = boards.clone();
        async move {
            // Subscribed before the first board is read: nothing posted in
            // between is missed. The first is a fresh one: watching makes
            // the updater build it.
            let rx = boards.tx.subscribe();
            let first = current(&boards).await;
            let rest = WatchStream::from_changes(rx);
            let stream = tokio_stream::once(first).chain(rest).map(|b| Ok::<_, Infallible>(Event::default().event("board").data(body(&b))));
            Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
        }
    };
    axum::Router::new().route("/", get(page.clone())).route("/status", get(page)).route("/status/events", get(events))
}

/// Text made safe inside HTML elements and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min", ms / 60_000),
    }
}

/// The part of the page that changes: pools, ring, recent changes.
pub fn body(b: &Board) -> String {
    let mut h = String::new();
    // Ages as of now, not as of when the board was built.
    let since = b.built.elapsed();
    for p in &b.pools {
        let answer: Vec<String> = p.answer.iter().map(|a| a.to_string()).collect();
        let answer = if p.servfail {
            "SERVFAIL".to_owned()
        } else if answer.is_empty() {
            "(none)".to_owned()
        } else {
            answer.join(", ")
        };
        let _ = write!(
            h,
            r#"<section class="pool" data-pool="{name}"><h2>{name}</h2><p class="facts"><span>answer <b class="answer">{answer}</b></span> <span>policy {policy}</span> <span>select {select}</span> <span>TTL {ttl} s</span> <span>serial {serial}</span></p>"#,
            name = esc(&p.name),
            answer = esc(&answer),
            policy = esc(&p.policy),
            select = esc(&p.select.to_string()),
            ttl = p.ttl,
            serial = p.serial,
        );
        h.push_str(
            r#"<div class="scroll"><table><thead><tr><th>member</th><th>address</th><th>state</th><th>admin</th><th>in answer</th><th>share / score</th><th>weight</th><th>metrics</th><th>last report</th></tr></thead><tbody>"#,
        );
        for m in &p.members {
            let share = match (m.share, m.score) {
                (Some(s), _) => format!("{:.1}%", s * 100.0),
                (None, Some(s)) => format!("{s:.3}"),
                _ => "-".into(),
            };
            let metrics: Vec<String> = m.metrics.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
            let (report, age_ms) = match m.report_age.map(|a| (a + since).as_millis() as i64) {
                Some(a) => (age(a), a),
                None => ("never".into(), -1),
            };
            let state_class = if m.state.starts_with("up") { "up" } else { "out" };
            let _ = write!(
                h,
                r#"<tr class="member {state_class}" data-member="{id}"><td class="id">{id}</td><td>{addr}</td><td class="state">{state}</td><td>{admin}</td><td>{inans}</td><td>{share}</td><td>{weight}</td><td class="metrics">{metrics}</td><td class="age" data-age-ms="{age_ms}">{report}</td></tr>"#,
                id = esc(&m.id),
                addr = m.address,
                state = esc(&m.state),
                admin = esc(&format!("{:?}", m.admin).to_lowercase()),
                inans = if m.in_answer { "yes" } else { "no" },
                weight = m.weight,
                metrics = esc(&metrics.join(" ")),
            );
        }
        h.push_str("</tbody></table></div></section>");
    }
    h.push_str(r#"<section class="ring"><h2>Ring</h2>"#);
    if b.ring.table.entries().next().is_none() && b.ring.dead.is_empty() {
        h.push_str("<p>No ring members have announced themselves.</p>");
    } else {
        h.push_str(r#"<div class="scroll"><table><thead><tr><th>member</th><th>buddies</th><th>state</th></tr></thead><tbody>"#);
        for (m, [a, z]) in b.ring.table.entries() {
            let role = if b.ring.dispatcher == Some(*m) { "alive, dispatcher" } else { "alive" };
            let _ = write!(h, r#"<tr data-ring-member="{m}"><td>{m}</td><td>{a} {z}</td><td class="state">{role}</td></tr>"#);
        }
        for d in &b.ring.dead {
            let _ = write!(h, r#"<tr class="out"><td>{d}</td><td></td><td class="state">dead</td></tr>"#);
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str(r#"</section><section class="changes"><h2>Recent answer changes</h2>"#);
    if b.changes.is_empty() {
        h.push_str("<p>None since the authority started.</p>");
    } else {
        h.push_str("<ol reversed>");
        for (at, pool, answer) in b.changes.iter().rev() {
            let ago = at.elapsed().as_millis() as i64;
            let answer: Vec<String> = answer.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                h,
                r#"<li><span class="age" data-age-ms="{ago}">{}</span> ago: {} → {}</li>"#,
                age(ago),
                esc(pool),
                esc(&if answer.is_empty() { "(none)".to_owned() } else { answer.join(", ") })
            );
        }
        h.push_str("</ol>");
    }
    h.push_str("</section>");
    h
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;padding:.5em 1em;max-width:70em;color:#111;background:#fff}\
h1{font-size:1.3em;margin:.3em 0}h2{font-size:1.1em;margin:1em 0 .3em;word-break:break-all}\
.facts span{display:inline-block;margin-right:1em}.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #ddd;white-space:nowrap}\
tr.out td{color:#a00}tr.up td.state{color:#070}td.metrics{white-space:normal;font-size:.9em}\
#live{font-size:.9em;color:#555}@media (prefers-color-scheme:dark){body{background:#111;color:#eee}th,td{border-color:#333}tr.out td{color:#f77}tr.up td.state{color:#7d7}}";

/// Keeps the ages moving between boards and swaps in each new body.
const SCRIPT: &str = r#"(function(){
var got=Date.now();
function tick(){var d=Date.now()-got;document.querySelectorAll('[data-age-ms]').forEach(function(e){var a=+e.getAttribute('data-age-ms');if(a<0)return;a+=d;e.textContent=a<1000?a+' ms':a<120000?(a/1000).toFixed(1)+' s':Math.floor(a/60000)+' min';});}
var live=document.getElementById('live');
var es=new EventSource('/status/events');
es.addEventListener('board',function(e){document.getElementById('board').innerHTML=e.data;got=Date.now();live.textContent='live';});
es.onerror=function(){live.textContent='reconnecting…';};
setInterval(tick,1000);
})();"#;

/// The whole page, with the current board.
pub fn page(b: &Board) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>vnamed status</title><noscript><meta http-equiv="refresh" content="5"></noscript><style>{STYLE}</style></head><body><h1>vnamed status</h1><p id="live">as of page load</p><main id="board">{}</main><script>{SCRIPT}</script></body></html>"#,
        body(b)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{MemberStatus, PoolStatus};

    fn board() -> Board {
        let member = |id: &str, state: &str| MemberStatus {
            id: id.into(),
            address: "192.0.2.1".parse().unwrap(),
            state: state.into(),
            admin: crate::pool::AdminState::Auto,
            weight: 1,
            load: None,
            in_answer: state == "up",
            metrics: vec![("load".into(), 0.25)],
            score: None,
            rank: 1,
            share: Some(0.5),
            report_age: Some(Duration::from_millis(1500)),
            views: Vec::new(),
        };
        Board {
            pools: vec![PoolStatus {
                name: "www.example.com.".into(),
                policy: "LeastLoaded".into(),
                zone: "example.com.".into(),
                serial: 7,
                answer: vec!["192.0.2.1".parse().unwrap()],
                servfail: false,
                members: vec![member("web1", "up"), member("<script>", "down")],
                overrides: vec![],
                select: crate::config::Select::Shares,
                ttl: 30,
                quorum: None,
            }],
            ring: Default::default(),
            changes: vec![(
                std::time::Instant::now() - Duration::from_millis(2500),
                "www.example.com.".into(),
                vec!["192.0.2.1".parse().unwrap()],
            )],
            built: std::time::Instant::now(),
        }
    }

    #[test]
    fn the_body_shows_pools_members_and_changes_and_escapes_what_it_is_given() {
        let html = body(&board());
        assert!(html.contains(r#"data-pool="www.example.com.""#));
        assert!(html.contains(r#"data-member="web1""#) && html.contains("50.0%") && html.contains("load=0.250"));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
        assert!(html.contains("No ring members") && html.contains("2.5 s</span> ago"));
        let page = page(&board());
        assert!(page.contains("<noscript><meta http-equiv=\"refresh\"") && page.contains("EventSource('/status/events')"));
        assert!(!page.contains("http://") && !page.contains("https://"), "everything is served by vnamed itself");
    }
}
