//! `packaging/grafana-dashboard.json` against the agent's metrics: every series a panel
//! queries is one the agent exports (renamed metrics would leave panels empty).

#[cfg(test)]
mod tests {
    use crate::agent::metrics::Metrics;

    const DASHBOARD: &str = include_str!("../../../../packaging/grafana-dashboard.json");

    /// The `ballast_*` names in a PromQL expression.
    fn series(expr: &str) -> Vec<String> {
        expr.match_indices("ballast_")
            .map(|(i, _)| {
                expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_panel_queries_exported_metrics() {
        let m = Metrics::new();
        m.session("send");
        m.handoff("source", "committed");
        m.handoff_seconds.observe(0.2);
        let text = m.render();
        let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
        let panels = dash["panels"].as_array().expect("panels");
        assert!(panels.len() >= 6, "{} panels", panels.len());
        let mut checked = 0;
        for p in panels {
            for t in p["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr");
                for name in series(expr) {
                    assert!(
                        text.lines().any(|l| l.starts_with(&format!("{name} "))
                            || l.starts_with(&format!("{name}{{"))),
                        "panel {:?} queries {name}, which the agent does not export:\n{text}",
                        p["title"]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{checked} series checked");
        for want in ["outcome", "le"] {
            assert!(DASHBOARD.contains(want), "{want}");
        }
    }
}
