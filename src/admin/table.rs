//! A result set the admin console sends: RowDescription, DataRows (text
//! format) and CommandComplete, the way PgBouncer answers its SHOW commands.

use bytes::{BufMut, BytesMut};

use crate::protocol::frame::put_frame;

/// PostgreSQL type OIDs the console's columns use.
const TEXT: u32 = 25;
const INT8: u32 = 20;

/// A column's type, as announced in RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// `text`.
    Text,
    /// `int8` (counts, bytes, microseconds).
    Int,
}

/// A result set being built.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Col)>,
    rows: Vec<Vec<Option<String>>>,
}

/// A cell value.
pub enum Cell {
    /// SQL NULL.
    Null,
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
}

impl From<&str> for Cell {
    fn from(v: &str) -> Cell {
        Cell::Text(v.to_string())
    }
}

impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(v)
    }
}

impl From<u64> for Cell {
    fn from(v: u64) -> Cell {
        Cell::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Cell {
    fn from(v: usize) -> Cell {
        Cell::from(v as u64)
    }
}

impl From<i64> for Cell {
    fn from(v: i64) -> Cell {
        Cell::Int(v)
    }
}

impl From<i32> for Cell {
    fn from(v: i32) -> Cell {
        Cell::Int(i64::from(v))
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map_or(Cell::Null, Into::into)
    }
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[(&'static str, Col)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: vec![],
        }
    }

    /// The column names, in order.
    pub fn column_names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.0).collect()
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        let row = cells
            .into_iter()
            .map(|c| match c {
                Cell::Null => None,
                Cell::Text(s) => Some(s),
                Cell::Int(i) => Some(i.to_string()),
            })
            .collect();
        self.rows.push(row);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Appends RowDescription, the DataRows and CommandComplete `tag`.
    pub fn encode(&self, out: &mut BytesMut, tag: &str) {
        let mut body = BytesMut::new();
        body.put_i16(self.columns.len() as i16);
        for (name, col) in &self.columns {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_u32(0); // table OID
            body.put_i16(0); // column number
            let (oid, size) = match col {
                Col::Text => (TEXT, -1),
                Col::Int => (INT8, 8),
            };
            body.put_u32(oid);
            body.put_i16(size);
            body.put_i32(-1); // type modifier
            body.put_i16(0); // text format
        }
        put_frame(out, b'T', &body);
        for row in &self.rows {
            body.clear();
            body.put_i16(row.len() as i16);
            for cell in row {
                match cell {
                    None => body.put_i32(-1),
                    Some(v) => {
                        body.put_i32(v.len() as i32);
                        body.put_slice(v.as_bytes());
                    }
                }
            }
            put_frame(out, b'D', &body);
        }
        command_complete(out, tag);
    }
}

/// Appends CommandComplete with `tag`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    put_frame(out, b'C', &body);
}

/// Appends a NoticeResponse (severity NOTICE) with `message`.
pub fn notice(out: &mut BytesMut, message: &str) {
    crate::protocol::messages::error_response::encode_notice(out, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_description_rows_and_completion() {
        let mut t = Table::new(&[("name", Col::Text), ("n", Col::Int)]);
        t.row(vec!["a".into(), 1u64.into()]);
        t.row(vec![Cell::Null, 2i64.into()]);
        let mut out = BytesMut::new();
        t.encode(&mut out, "SHOW");
        let tags: Vec<u8> = {
            let mut tags = vec![];
            let mut rest = &out[..];
            while let Ok(Some(len)) = crate::protocol::frame_len(rest, 1 << 20) {
                tags.push(rest[0]);
                rest = &rest[len..];
            }
            assert!(rest.is_empty());
            tags
        };
        assert_eq!(tags, b"TDDC");
        assert!(out.windows(5).any(|w| w == b"SHOW\0"));
        assert_eq!(t.column_names(), ["name", "n"]);
    }
}
