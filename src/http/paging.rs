//! The list query parameters of RabbitMQ's management API: `name` (substring, or a regular
//! expression with `use_regex=true`), `sort` (a field, dotted for nested ones) and
//! `sort_reverse`, `page`/`page_size` (then the answer is RabbitMQ's paged object), and
//! `columns` (only these fields of each item).
//!
//! Items are filtered and, when sorted by name, paged before they are turned into JSON, so a
//! page of 100 out of 10,000 queues serialises 100 queues.

use super::error::{ApiError, ApiResult};
use axum::http::header;
use axum::response::{IntoResponse, Response};
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
    /// The vhost whose access decides whether a user sees this row.
    fn scope_vhost(&self) -> &str {
        self.vhost()
    }
    /// The user owning the connection this row belongs to (connections, channels).
    fn owner(&self) -> Option<&str> {
        None
    }
    /// The value of a numeric sort field without rendering the row (None: not known here, so
    /// the whole list is rendered and sorted by its JSON).
    fn sort_value(&self, _field: &str) -> Option<f64> {
        None
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

    /// Filter, then sort and page what can be sorted without rendering: the page's row
    /// indices in order, or None when the sort needs every row's JSON.
    fn prepare<T: Row>(&self, items: &mut Vec<T>) -> ApiResult<Prepared> {
        let filter = self.filter()?;
        let paging = self.paging()?;
        items.retain(|i| super::scope::visible(i.scope_vhost(), i.owner()));
        let total = items.len();
        items.retain(|i| filter.matches(i.name()));
        let filtered = items.len();
        let reverse = truthy(&self.sort_reverse);
        let sort = self.sort.as_deref().filter(|s| !s.is_empty());
        let range = match paging {
            Some((page, size)) => {
                let start = (page - 1).saturating_mul(size).min(filtered);
                start..(start + size).min(filtered)
            }
            None => 0..filtered,
        };
        let mut idx: Vec<usize> = (0..filtered).collect();
        let sorted = match sort {
            None => {
                idx.sort_by(|&a, &b| {
                    let (a, b) = (&items[a], &items[b]);
                    a.vhost().cmp(b.vhost()).then(a.name().cmp(b.name()))
                });
                true
            }
            Some("name") => {
                idx.sort_by(|&a, &b| {
                    let (a, b) = (&items[a], &items[b]);
                    a.name().cmp(b.name()).then(a.vhost().cmp(b.vhost()))
                });
                true
            }
            Some("vhost") => {
                idx.sort_by(|&a, &b| {
                    let (a, b) = (&items[a], &items[b]);
                    a.vhost().cmp(b.vhost()).then(a.name().cmp(b.name()))
                });
                true
            }
            Some(k) => match items
                .iter()
                .map(|i| i.sort_value(k))
                .collect::<Option<Vec<f64>>>()
            {
                Some(keys) => {
                    idx.sort_by(|&a, &b| {
                        keys[a]
                            .partial_cmp(&keys[b])
                            .unwrap_or(Ordering::Equal)
                            .then_with(|| items[a].name().cmp(items[b].name()))
                    });
                    true
                }
                None => false,
            },
        };
        if sorted && reverse {
            idx.reverse();
        }
        Ok(Prepared {
            order: sorted.then(|| idx[range].to_vec()),
            paging,
            filtered,
            total,
            reverse,
        })
    }

    fn columns(&self) -> Vec<&str> {
        self.columns
            .as_deref()
            .map(|c| {
                c.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Filter, sort, page and render `items` as JSON values.
    pub fn apply<T: Row>(
        &self,
        mut items: Vec<T>,
        to_json: impl Fn(&T) -> Value,
    ) -> ApiResult<Value> {
        let p = self.prepare(&mut items)?;
        let values = self.values(&p, &items, to_json);
        p.wrap(values)
    }

    /// The page's values: rendered for the page only when the rows were sortable, otherwise
    /// rendered all, sorted by the JSON field, then cut.
    fn values<T: Row>(
        &self,
        p: &Prepared,
        items: &[T],
        to_json: impl Fn(&T) -> Value,
    ) -> Vec<Value> {
        let mut values: Vec<Value> = match &p.order {
            Some(order) => order.iter().map(|&k| to_json(&items[k])).collect(),
            None => {
                let key = self.sort.as_deref().unwrap_or_default();
                let mut all: Vec<Value> = items.iter().map(&to_json).collect();
                all.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
                if p.reverse {
                    all.reverse();
                }
                if let Some((page, size)) = p.paging {
                    let start = (page - 1).saturating_mul(size).min(p.filtered);
                    all.drain(..start);
                    all.truncate(size);
                }
                all
            }
        };
        let columns = self.columns();
        if !columns.is_empty() {
            values = values.into_iter().map(|v| project(v, &columns)).collect();
        }
        values
    }

    /// Like `apply`, but rows render to a typed view that is serialised straight into the
    /// answer (no intermediate JSON tree) whenever no column selection or JSON sort needs one:
    /// the unpaged list of 10,000 queues is several times faster so.
    pub fn apply_typed<T: Row, S: serde::Serialize>(
        &self,
        mut items: Vec<T>,
        to_view: impl Fn(&T) -> S,
    ) -> ApiResult<Response> {
        let p = self.prepare(&mut items)?;
        if let (Some(order), true) = (&p.order, self.columns().is_empty()) {
            let views: Vec<S> = order.iter().map(|&k| to_view(&items[k])).collect();
            let body = match p.paging {
                None => serde_json::to_vec(&views),
                Some((page, size)) => {
                    p.check(page, size)?;
                    serde_json::to_vec(&Paged {
                        filtered_count: p.filtered,
                        item_count: views.len(),
                        items: views,
                        page,
                        page_count: p.page_count(size),
                        page_size: size,
                        total_count: p.total,
                    })
                }
            }
            .map_err(|e| ApiError::bad(e.to_string()))?;
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        let values = self.values(&p, &items, |r| {
            serde_json::to_value(to_view(r)).unwrap_or(Value::Null)
        });
        Ok(axum::Json(p.wrap(values)?).into_response())
    }
}

#[derive(serde::Serialize)]
struct Paged<S> {
    filtered_count: usize,
    item_count: usize,
    items: Vec<S>,
    page: usize,
    page_count: usize,
    page_size: usize,
    total_count: usize,
}

struct Prepared {
    order: Option<Vec<usize>>,
    paging: Option<(usize, usize)>,
    filtered: usize,
    total: usize,
    reverse: bool,
}

impl Prepared {
    fn page_count(&self, size: usize) -> usize {
        self.filtered.div_ceil(size).max(1)
    }

    fn check(&self, page: usize, size: usize) -> ApiResult<()> {
        if page > self.page_count(size) {
            return Err(ApiError::Other(
                axum::http::StatusCode::BAD_REQUEST,
                "page_out_of_range",
                format!(
                    "Page out of range, page: {page} page size: {size}, len: {}",
                    self.filtered
                ),
            ));
        }
        Ok(())
    }

    /// RabbitMQ's answer: the array, or the paged object when a page was asked for.
    fn wrap(&self, values: Vec<Value>) -> ApiResult<Value> {
        let Some((page, size)) = self.paging else {
            return Ok(Value::Array(values));
        };
        self.check(page, size)?;
        Ok(json!({
            "filtered_count": self.filtered,
            "item_count": values.len(),
            "items": values,
            "page": page,
            "page_count": self.page_count(size),
            "page_size": size,
            "total_count": self.total,
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
    /// Rows of the vhost list have no `vhost` field: their name is the vhost.
    fn scope_vhost(&self) -> &str {
        match self.0.get("vhost").and_then(Value::as_str) {
            Some(v) => v,
            None => self.name(),
        }
    }
}

pub fn json_list(p: &ListParams, items: Vec<Value>) -> ApiResult<Value> {
    p.apply(items.into_iter().map(JsonRow).collect(), |r| r.0.clone())
}

/// A plain array when no paging, sorting or column selection is asked for (as RabbitMQ
/// answers), otherwise `json_list`'s answer.
pub fn plain_or_paged(p: &ListParams, items: Vec<Value>) -> ApiResult<Value> {
    if p.page.is_none() && p.sort.is_none() && p.columns.is_none() {
        return Ok(Value::Array(items));
    }
    json_list(p, items)
}
