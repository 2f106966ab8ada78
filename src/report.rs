//! Plain-text output for the command line.

/// Rows (the first one the header) as left-aligned columns two spaces apart, each line
/// trimmed at its end.
pub fn aligned_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_and_lines_end_without_spaces() {
        let rows = vec![
            vec!["id".to_owned(), "status".to_owned()],
            vec!["EXC-1".to_owned(), "approved".to_owned()],
            vec!["E".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            super::aligned_table(&rows),
            "id     status\nEXC-1  approved\nE\n"
        );
    }
}
