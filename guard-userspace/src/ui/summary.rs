//! Summaries over the held decisions: each rule's hits by hour over the last day, and the
//! inventory of secrets found in files agents read.

use askama::Template;
use axum::{Extension, extract::State, response::Response};

use super::{
    App,
    auth::Session,
    render,
    store::{HOURS, Hits, Secret},
    timeline::Nav,
};

/// One rule's row: its hits as a bar per hour (▁ to █, relative to its busiest hour).
struct RuleRow {
    rule: String,
    total: u64,
    last_day: u64,
    bars: String,
    last: String,
    link: String,
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn bars(by_hour: &[u64; HOURS]) -> String {
    let top = by_hour.iter().copied().max().unwrap_or(0);
    by_hour
        .iter()
        .map(|&n| match n {
            0 => '·',
            n => BARS[(n * 7 / top.max(1)) as usize],
        })
        .collect()
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesPage {
    nav: Nav,
    rows: Vec<RuleRow>,
}

pub(super) async fn rules(
    State(app): State<App>,
    Extension(session): Extension<Session>,
) -> Response {
    let mut rows: Vec<RuleRow> = app
        .store
        .hits()
        .into_iter()
        .map(|(rule, h): (String, Hits)| RuleRow {
            link: form_urlencoded::Serializer::new(String::new())
                .append_pair("rule", &rule)
                .finish(),
            rule,
            total: h.total,
            last_day: h.by_hour.iter().sum(),
            bars: bars(&h.by_hour),
            last: h.last.get(..19).unwrap_or(&h.last).replace('T', " "),
        })
        .collect();
    rows.sort_by(|a, b| b.last_day.cmp(&a.last_day).then(b.total.cmp(&a.total)));
    render(&RulesPage {
        nav: Nav::new(&app, &session, "rules"),
        rows,
    })
}

#[derive(Template)]
#[template(path = "secrets.html")]
struct SecretsPage {
    nav: Nav,
    secrets: Vec<Secret>,
}

pub(super) async fn secrets(
    State(app): State<App>,
    Extension(session): Extension<Session>,
) -> Response {
    let mut secrets = app.store.secrets();
    secrets.sort_by(|a, b| b.last.cmp(&a.last));
    render(&SecretsPage {
        nav: Nav::new(&app, &session, "secrets"),
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_hour() {
        let mut h = [0u64; HOURS];
        h[HOURS - 1] = 10;
        h[HOURS - 2] = 1;
        let b: Vec<char> = bars(&h).chars().collect();
        assert_eq!(b[0], '·');
        assert_eq!(b[HOURS - 1], '█');
        assert_eq!(b[HOURS - 2], '▁');
    }
}
