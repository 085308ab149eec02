//! Tables for people (comfy-table, one style everywhere) and the small number formats
//! the tables share.

use comfy_table::{presets::UTF8_FULL_CONDENSED, CellAlignment, ContentArrangement, Table};

/// A table with `header`, the CLI's style, and the given columns right-aligned.
pub fn new_table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    for i in right_aligned {
        if let Some(c) = t.column_mut(*i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Bytes for people, binary units: `512M`, `1.5G`.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 || unit == 0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

pub use ballast_node::report::age;

/// A horizontal bar of `width` cells for `value` out of `max`.
pub fn bar(value: f64, max: f64, width: usize) -> String {
    let filled = if max > 0.0 {
        ((value / max) * width as f64)
            .round()
            .clamp(0.0, width as f64) as usize
    } else {
        0
    };
    format!("{}{}", "█".repeat(filled), "·".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512.0 * 1024.0 * 1024.0), "512M");
        assert_eq!(bytes(1.5 * 1024.0 * 1024.0 * 1024.0), "1.5G");
        assert_eq!(bytes(10.0), "10B");
        assert_eq!(bar(5.0, 10.0, 4), "██··");
        assert_eq!(bar(50.0, 10.0, 4), "████");
        assert_eq!(bar(1.0, 0.0, 2), "··");
        assert_eq!(age(0), "0.0s ago");
        assert_eq!(age(430), "0.4s ago");
        assert_eq!(age(9_999), "9.9s ago");
        assert_eq!(age(12_345), "12s ago");
        assert_eq!(age(599_999), "599s ago");
        assert_eq!(age(1_500_000), "25m ago");
        assert_eq!(age(3 * 3_600_000 + 5), "3h ago");
        assert_eq!(age(u64::MAX), format!("{}h ago", u64::MAX / 3_600_000));
        let t = new_table(&["A", "B"], &[1]);
        assert!(t.to_string().contains('A'));
    }
}
