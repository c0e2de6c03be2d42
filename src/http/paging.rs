//! The list query parameters of RabbitMQ's management API: `name` (substring, or a regular
//! expression with `use_regex=true`), `sort` (a field, dotted for nested ones) and
//! `sort_reverse`, `page`/`page_size` (then the answer is RabbitMQ's paged object), and
//! `columns` (only these fields of each item).
//!
//! Items are filtered and, when sorted by name, paged before they are turned into JSON, so a
//! page of 100 out of 10,000 queues serialises 100 queues.

use super::error::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;

pub const MAX_PAGE_SIZE: usize = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListParams {
    pub name: Option<String>,
    pub use_regex: Option<String>,
    pub sort: Option<String>,
    pub sort_reverse: Option<String>,
    pub page: Option<String>,
    pub page_size: Option<String>,
    pub columns: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true") | Some("1"))
}

enum Filter {
    All,
    Substring(String),
    Regex(regex::Regex),
}

impl Filter {
    fn matches(&self, name: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Substring(s) => name.to_lowercase().contains(s),
            Filter::Regex(r) => r.is_match(name),
        }
    }
}

/// A list item before JSON: its name and vhost (for filtering and the default sort).
pub trait Row {
    fn name(&self) -> &str;
    fn vhost(&self) -> &str {
        ""
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

fn project(v: Value, columns: &[&str]) -> Value {
    if columns.is_empty() {
        return v;
    }
    let mut out = Map::new();
    for c in columns {
        if let Some(x) = lookup(&v, c) {
            // Nested columns keep their nesting, as RabbitMQ does.
            let mut parts: Vec<&str> = c.split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut m = &mut out;
            for p in parts {
                m = m
                    .entry(p.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("an object we inserted");
            }
            m.insert(last.to_owned(), x.clone());
        }
    }
    Value::Object(out)
}

impl ListParams {
    fn filter(&self) -> ApiResult<Filter> {
        let Some(n) = self.name.as_deref().filter(|n| !n.is_empty()) else {
            return Ok(Filter::All);
        };
        if truthy(&self.use_regex) {
            regex::RegexBuilder::new(n)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map(Filter::Regex)
                .map_err(|e| ApiError::bad(format!("invalid regular expression: {e}")))
        } else {
            Ok(Filter::Substring(n.to_lowercase()))
        }
    }

    fn paging(&self) -> ApiResult<Option<(usize, usize)>> {
        let Some(p) = self.page.as_deref() else {
            return Ok(None);
        };
        let invalid = || {
            ApiError::Other(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_pagination_parameters",
                format!(
                    "Invalid pagination parameters: page number {p}, page size {}",
                    self.page_size.as_deref().unwrap_or("100")
                ),
            )
        };
        let page: usize = p.parse().ok().filter(|&p| p >= 1).ok_or_else(invalid)?;
        let size: usize = match self.page_size.as_deref() {
            None => 100,
            Some(s) => s
                .parse()
                .ok()
                .filter(|&s| (1..=MAX_PAGE_SIZE).contains(&s))
                .ok_or_else(invalid)?,
        };
        Ok(Some((page, size)))
    }

    /// Filter, sort, page and render `items`.
    pub fn apply<T: Row>(
        &self,
        mut items: Vec<T>,
        to_json: impl Fn(&T) -> Value,
    ) -> ApiResult<Value> {
        let filter = self.filter()?;
        let paging = self.paging()?;
        let total = items.len();
        items.retain(|i| filter.matches(i.name()));
        let filtered = items.len();
        let reverse = truthy(&self.sort_reverse);
        let columns: Vec<&str> = self
            .columns
            .as_deref()
            .map(|c| {
                c.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let sort = self.sort.as_deref().filter(|s| !s.is_empty());
        let by_name = matches!(sort, None | Some("name") | Some("vhost"));
        let mut values: Vec<Value> = if by_name {
            // Sort cheap rows, render only the page.
            if sort == Some("vhost") {
                items.sort_by(|a, b| a.vhost().cmp(b.vhost()).then(a.name().cmp(b.name())));
            } else if sort == Some("name") {
                items.sort_by(|a, b| a.name().cmp(b.name()).then(a.vhost().cmp(b.vhost())));
            } else {
                items.sort_by(|a, b| a.vhost().cmp(b.vhost()).then(a.name().cmp(b.name())));
            }
            if reverse {
                items.reverse();
            }
            let range = match paging {
                Some((page, size)) => {
                    let start = (page - 1).saturating_mul(size).min(filtered);
                    start..(start + size).min(filtered)
                }
                None => 0..filtered,
            };
            items[range].iter().map(&to_json).collect()
        } else {
            let key = sort.unwrap_or_default();
            let mut all: Vec<Value> = items.iter().map(&to_json).collect();
            all.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
            if reverse {
                all.reverse();
            }
            if let Some((page, size)) = paging {
                let start = (page - 1).saturating_mul(size).min(filtered);
                all.drain(..start);
                all.truncate(size);
            }
            all
        };
        if !columns.is_empty() {
            values = values.into_iter().map(|v| project(v, &columns)).collect();
        }
        let Some((page, size)) = paging else {
            return Ok(Value::Array(values));
        };
        let page_count = filtered.div_ceil(size).max(1);
        if page > page_count {
            return Err(ApiError::Other(
                axum::http::StatusCode::BAD_REQUEST,
                "page_out_of_range",
                format!("Page out of range, page: {page} page size: {size}, len: {filtered}"),
            ));
        }
        Ok(json!({
            "filtered_count": filtered,
            "item_count": values.len(),
            "items": values,
            "page": page,
            "page_count": page_count,
            "page_size": size,
            "total_count": total,
        }))
    }
}

/// Rows for lists that are already JSON (small lists: users, vhosts, permissions…).
pub struct JsonRow(pub Value);

impl Row for JsonRow {
    fn name(&self) -> &str {
        self.0.get("name").and_then(Value::as_str).unwrap_or("")
    }
    fn vhost(&self) -> &str {
        self.0.get("vhost").and_then(Value::as_str).unwrap_or("")
    }
}

pub fn json_list(p: &ListParams, items: Vec<Value>) -> ApiResult<Value> {
    p.apply(items.into_iter().map(JsonRow).collect(), |r| r.0.clone())
}
