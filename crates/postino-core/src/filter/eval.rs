//! Evaluation of a filter's tree against a message, with SQL's three-valued logic: `None` is
//! unknown.

use std::borrow::Cow;
use std::cmp::Ordering;

use postino_types::{DeliveryMode, HeaderValue};

use super::{Arithmetic, Comparison, Expr, Fields, Literal, Property};

/// A value met while evaluating.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    /// A header of a type the language has no literal for (bytes, arrays, tables): present,
    /// but never equal, less or greater than anything.
    Opaque,
}

impl<'a> From<&'a Literal> for Value<'a> {
    fn from(literal: &'a Literal) -> Self {
        match literal {
            Literal::Null => Value::Null,
            Literal::Bool(value) => Value::Bool(*value),
            Literal::Int(value) => Value::Int(*value),
            Literal::Float(value) => Value::Float(*value),
            Literal::Text(text) => Value::Text(Cow::Borrowed(text)),
        }
    }
}

fn header(value: &HeaderValue) -> Value<'_> {
    match value {
        HeaderValue::Void => Value::Null,
        HeaderValue::Bool(value) => Value::Bool(*value),
        HeaderValue::Int(value) | HeaderValue::Timestamp(value) => Value::Int(*value),
        HeaderValue::Float(value) => Value::Float(*value),
        HeaderValue::Text(text) => Value::Text(Cow::Borrowed(text)),
        HeaderValue::Bytes(_) | HeaderValue::Array(_) | HeaderValue::Table(_) => Value::Opaque,
    }
}

fn text(value: Option<&String>) -> Value<'_> {
    value.map_or(Value::Null, |text| Value::Text(Cow::Borrowed(text)))
}

fn property<'a>(property: Property, fields: &Fields<'a>) -> Value<'a> {
    let properties = &fields.message.properties;
    match property {
        Property::ContentType => text(properties.content_type.as_ref()),
        Property::ContentEncoding => text(properties.content_encoding.as_ref()),
        Property::DeliveryMode => Value::Int(match properties.delivery_mode {
            DeliveryMode::Transient => 1,
            DeliveryMode::Persistent => 2,
        }),
        Property::Priority => properties
            .priority
            .map_or(Value::Null, |priority| Value::Int(i64::from(priority))),
        Property::CorrelationId => text(properties.correlation_id.as_ref()),
        Property::ReplyTo => text(properties.reply_to.as_ref()),
        Property::Expiration => properties.expiration_ms.map_or(Value::Null, |ms| {
            Value::Int(i64::try_from(ms).unwrap_or(i64::MAX))
        }),
        Property::MessageId => text(properties.message_id.as_ref()),
        Property::Timestamp => properties.timestamp_ms.map_or(Value::Null, Value::Int),
        Property::Type => text(properties.kind.as_ref()),
        Property::UserId => text(properties.user_id.as_ref()),
        Property::AppId => text(properties.app_id.as_ref()),
        Property::RoutingKey => Value::Text(Cow::Borrowed(fields.routing_key)),
        Property::Exchange => Value::Text(Cow::Borrowed(fields.exchange)),
    }
}

/// SQL's three-valued `AND`.
fn and(left: Option<bool>, right: Option<bool>) -> Option<bool> {
    match (left, right) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// Whether `expr` holds for `fields`: `None` when it is unknown.
pub(super) fn truth(expr: &Expr, fields: &Fields<'_>) -> Option<bool> {
    match expr {
        Expr::Not(inner) => truth(inner, fields).map(|value| !value),
        Expr::And(left, right) => and(truth(left, fields), truth(right, fields)),
        Expr::Or(left, right) => match (truth(left, fields), truth(right, fields)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Expr::Compare(op, left, right) => compare(*op, &value(left, fields), &value(right, fields)),
        Expr::Between {
            value: tested,
            low,
            high,
            negated,
        } => {
            let tested = value(tested, fields);
            let above = compare(Comparison::Ge, &tested, &value(low, fields));
            let below = compare(Comparison::Le, &tested, &value(high, fields));
            and(above, below).map(|inside| inside != *negated)
        }
        Expr::In {
            value: tested,
            list,
            negated,
        } => {
            let tested = value(tested, fields);
            let mut unknown = false;
            for literal in list {
                match compare(Comparison::Eq, &tested, &Value::from(literal)) {
                    Some(true) => return Some(!*negated),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            (!unknown).then_some(*negated)
        }
        Expr::Like {
            value: tested,
            pattern,
            escape,
            negated,
        } => match value(tested, fields) {
            Value::Text(text) => Some(like(&text, pattern, *escape) != *negated),
            _ => None,
        },
        Expr::IsNull {
            value: tested,
            negated,
        } => Some((value(tested, fields) == Value::Null) != *negated),
        Expr::Literal(_)
        | Expr::Property(_)
        | Expr::Header(_)
        | Expr::Neg(_)
        | Expr::Arithmetic(..) => match value(expr, fields) {
            Value::Bool(value) => Some(value),
            _ => None,
        },
    }
}

fn value<'a>(expr: &'a Expr, fields: &Fields<'a>) -> Value<'a> {
    match expr {
        Expr::Literal(literal) => Value::from(literal),
        Expr::Property(name) => property(*name, fields),
        Expr::Header(name) => fields
            .message
            .properties
            .headers
            .get(name)
            .map_or(Value::Null, header),
        Expr::Neg(inner) => match value(inner, fields) {
            Value::Int(value) => value
                .checked_neg()
                .map_or(Value::Float(-(value as f64)), Value::Int),
            Value::Float(value) => Value::Float(-value),
            _ => Value::Null,
        },
        Expr::Arithmetic(op, left, right) => {
            arithmetic(*op, value(left, fields), value(right, fields))
        }
        Expr::Not(_)
        | Expr::And(..)
        | Expr::Or(..)
        | Expr::Compare(..)
        | Expr::Between { .. }
        | Expr::In { .. }
        | Expr::Like { .. }
        | Expr::IsNull { .. } => truth(expr, fields).map_or(Value::Null, Value::Bool),
    }
}

fn float(value: &Value<'_>) -> Option<f64> {
    match value {
        Value::Int(value) => Some(*value as f64),
        Value::Float(value) => Some(*value),
        _ => None,
    }
}

/// Integers stay integers (a division truncates, by zero is unknown); an integer overflow or a
/// decimal operand gives a decimal; a result that is not a finite number is unknown.
fn arithmetic<'a>(op: Arithmetic, left: Value<'a>, right: Value<'a>) -> Value<'a> {
    if let (Value::Int(left), Value::Int(right)) = (&left, &right) {
        let exact = match op {
            Arithmetic::Add => left.checked_add(*right),
            Arithmetic::Sub => left.checked_sub(*right),
            Arithmetic::Mul => left.checked_mul(*right),
            Arithmetic::Div if *right == 0 => return Value::Null,
            Arithmetic::Div => left.checked_div(*right),
            Arithmetic::Rem if *right == 0 => return Value::Null,
            // The one overflow, MIN % -1, is 0.
            Arithmetic::Rem => Some(left.wrapping_rem(*right)),
        };
        if let Some(exact) = exact {
            return Value::Int(exact);
        }
    }
    let (Some(left), Some(right)) = (float(&left), float(&right)) else {
        return Value::Null;
    };
    let result = match op {
        Arithmetic::Add => left + right,
        Arithmetic::Sub => left - right,
        Arithmetic::Mul => left * right,
        Arithmetic::Div => left / right,
        Arithmetic::Rem => left % right,
    };
    if result.is_finite() {
        Value::Float(result)
    } else {
        Value::Null
    }
}

/// Numbers compare with numbers (an integer and a decimal as decimals), text with text (by
/// code points), booleans with booleans for `=` and `<>` only; anything else is unknown.
fn compare(op: Comparison, left: &Value<'_>, right: &Value<'_>) -> Option<bool> {
    let ordering = match (left, right) {
        (Value::Int(left), Value::Int(right)) => left.cmp(right),
        (Value::Text(left), Value::Text(right)) => left.cmp(right),
        (Value::Bool(left), Value::Bool(right)) => {
            return match op {
                Comparison::Eq => Some(left == right),
                Comparison::Ne => Some(left != right),
                _ => None,
            };
        }
        _ => float(left)?.partial_cmp(&float(right)?)?,
    };
    Some(match op {
        Comparison::Eq => ordering == Ordering::Equal,
        Comparison::Ne => ordering != Ordering::Equal,
        Comparison::Lt => ordering == Ordering::Less,
        Comparison::Le => ordering != Ordering::Greater,
        Comparison::Gt => ordering == Ordering::Greater,
        Comparison::Ge => ordering != Ordering::Less,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// `%`
    Run,
    /// `_`
    One,
    Char(char),
}

/// The pieces of a `LIKE` pattern: after the escape character the next one is literal (an
/// escape at the very end stands for itself).
fn pieces(pattern: &str, escape: Option<char>) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        pieces.push(match c {
            c if Some(c) == escape => Piece::Char(chars.next().unwrap_or(c)),
            '%' => Piece::Run,
            '_' => Piece::One,
            c => Piece::Char(c),
        });
    }
    pieces
}

/// Whether `text` matches the `LIKE` pattern, by the usual wildcard walk that goes back to the
/// last `%` on a mismatch.
fn like(text: &str, pattern: &str, escape: Option<char>) -> bool {
    let pieces = pieces(pattern, escape);
    let text: Vec<char> = text.chars().collect();
    let (mut at, mut piece) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while at < text.len() {
        match pieces.get(piece) {
            Some(Piece::Run) => {
                resume = Some((piece, at));
                piece += 1;
            }
            Some(Piece::One) => {
                at += 1;
                piece += 1;
            }
            Some(Piece::Char(c)) if *c == text[at] => {
                at += 1;
                piece += 1;
            }
            _ => match resume {
                Some((run, from)) => {
                    piece = run + 1;
                    at = from + 1;
                    resume = Some((run, from + 1));
                }
                None => return false,
            },
        }
    }
    pieces[piece..].iter().all(|piece| *piece == Piece::Run)
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_patterns_match_as_sql_says() {
        assert!(like("eu.orders", "eu.%", None));
        assert!(!like("us.orders", "eu.%", None));
        assert!(like("abc", "a_c", None));
        assert!(!like("abbc", "a_c", None));
        assert!(like("", "%", None));
        assert!(!like("", "_", None));
        assert!(like("50%", "50!%", Some('!')));
        assert!(!like("500", "50!%", Some('!')));
        assert!(like("a%b_c", "%!%%!_%", Some('!')));
        assert!(like("mississippi", "%iss%ppi", None));
        assert!(like("città", "citt_", None));
    }
}
