//! kubectl-style tables: upper-case headers, columns padded to their widest cell, three spaces
//! between columns, no trailing blanks.

/// Renders `rows` under `headers`; every row should have one cell per header.
pub fn render<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.as_ref().chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("   ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(AsRef::as_ref));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_columns_to_the_widest_cell() {
        let t = super::render(
            &["NAME", "PROGRAMMED"],
            &[vec!["waypoint-back", "True"], vec!["w", "-"]],
        );
        assert_eq!(
            t,
            "NAME            PROGRAMMED\nwaypoint-back   True\nw               -\n"
        );
    }
}
