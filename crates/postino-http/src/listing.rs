//! Listings as RabbitMQ pages them: without `page` the whole list as a JSON array; with
//! `?page=N&page_size=S` (S at most 500, default 100) one page in an object with
//! `items`, `page`, `page_size`, `page_count`, `item_count`, `filtered_count` and
//! `total_count`. `name` keeps the items whose name contains it (a regular expression with
//! `use_regex=true`); `sort_reverse=true` reverses the name order.

use axum::Json;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};

const PAGE_SIZE_MAX: usize = 500;
const PAGE_SIZE_DEFAULT: usize = 100;

/// The query of a listing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub page: Option<usize>,
    pub page_size: Option<usize>,
    pub name: Option<String>,
    pub use_regex: bool,
    pub sort_reverse: bool,
}

/// One page of a listing, before its items are described.
#[derive(Debug)]
pub struct Selected<T> {
    pub items: Vec<T>,
    page: Option<(usize, usize, usize, usize)>,
}

impl ListQuery {
    /// Filters, orders and pages `items` (given in name order) by `name_of`.
    ///
    /// # Errors
    /// 400 for a bad page, page size or regular expression.
    pub fn select<T>(
        &self,
        mut items: Vec<T>,
        name_of: impl Fn(&T) -> &str,
    ) -> ApiResult<Selected<T>> {
        let total = items.len();
        if let Some(filter) = &self.name {
            if self.use_regex {
                let pattern = regex::Regex::new(filter)
                    .map_err(|error| ApiError::bad_request(format!("name: {error}")))?;
                items.retain(|item| pattern.is_match(name_of(item)));
            } else {
                items.retain(|item| name_of(item).contains(filter.as_str()));
            }
        }
        if self.sort_reverse {
            items.reverse();
        }
        let Some(page) = self.page else {
            return Ok(Selected { items, page: None });
        };
        let size = self.page_size.unwrap_or(PAGE_SIZE_DEFAULT);
        if size == 0 || size > PAGE_SIZE_MAX {
            return Err(ApiError::bad_request(format!(
                "page_size {size} is not in 1..={PAGE_SIZE_MAX}"
            )));
        }
        let filtered = items.len();
        let pages = filtered.div_ceil(size).max(1);
        if page == 0 || page > pages {
            return Err(ApiError::bad_request(format!(
                "page {page} is not in 1..={pages}"
            )));
        }
        let items: Vec<T> = items
            .into_iter()
            .skip((page - 1) * size)
            .take(size)
            .collect();
        Ok(Selected {
            items,
            page: Some((page, size, filtered, total)),
        })
    }
}

impl<T> Selected<T> {
    /// The response: the described items, paged as asked.
    pub fn respond(self, described: Vec<Value>) -> Json<Value> {
        match self.page {
            None => Json(Value::Array(described)),
            Some((page, size, filtered, total)) => Json(json!({
                "item_count": described.len(),
                "items": described,
                "page": page,
                "page_size": size,
                "page_count": filtered.div_ceil(size).max(1),
                "filtered_count": filtered,
                "total_count": total,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("q{index:03}")).collect()
    }

    #[test]
    fn pages_filter_and_bounds() {
        let query = ListQuery {
            page: Some(2),
            page_size: Some(10),
            ..ListQuery::default()
        };
        let selected = query.select(names(25), |name| name).expect("a page");
        assert_eq!(selected.items.first().map(String::as_str), Some("q010"));
        assert_eq!(selected.items.len(), 10);
        let body = selected.respond(vec![json!(1)]).0;
        assert_eq!(body["page_count"], 3);
        assert_eq!(body["total_count"], 25);

        let past = ListQuery {
            page: Some(4),
            page_size: Some(10),
            ..ListQuery::default()
        };
        assert_eq!(
            past.select(names(25), |name| name)
                .map(|_| ())
                .unwrap_err()
                .status,
            400
        );
        let filtered = ListQuery {
            name: Some("^q00[12]$".into()),
            use_regex: true,
            ..ListQuery::default()
        };
        let selected = filtered.select(names(25), |name| name).expect("filtered");
        assert_eq!(selected.items, vec!["q001".to_owned(), "q002".to_owned()]);
        let bad = ListQuery {
            name: Some("(".into()),
            use_regex: true,
            ..ListQuery::default()
        };
        assert!(bad.select(names(3), |name| name).is_err());
    }
}
