//! Property tests of the filter language: any tree written out parses back to itself, and
//! `Filter::matches` agrees with a reference evaluator written from the language's rules
//! (Kleene logic as a min/max over false < unknown < true, `LIKE` through a regular
//! expression, arithmetic in 128-bit integers).

use postino_core::Filter;
use postino_core::filter::{Arithmetic, Comparison, Expr, Literal, Property};
use postino_types::{HeaderValue, Message};
use proptest::prelude::*;

const HEADERS: [&str; 4] = ["a", "b", "c", "x-y"];

fn small_text() -> BoxedStrategy<String> {
    proptest::string::string_regex("[ab%_!']{0,4}")
        .expect("regex")
        .boxed()
}

fn any_text() -> BoxedStrategy<String> {
    prop_oneof![small_text(), any::<String>()].boxed()
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-8i32..8).prop_map(|value| f64::from(value) / 2.0),
        any::<f64>().prop_filter("finite", |value| value.is_finite()),
    ]
}

fn number() -> impl Strategy<Value = Literal> {
    prop_oneof![
        (-5i64..5).prop_map(Literal::Int),
        Just(Literal::Int(i64::MIN)),
        Just(Literal::Int(i64::MAX)),
        float().prop_map(Literal::Float),
    ]
}

fn literal(texts: BoxedStrategy<String>) -> BoxedStrategy<Literal> {
    prop_oneof![
        number(),
        texts.prop_map(Literal::Text),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
    ]
    .boxed()
}

fn listed(texts: BoxedStrategy<String>) -> BoxedStrategy<Literal> {
    prop_oneof![number(), texts.prop_map(Literal::Text)].boxed()
}

fn comparison() -> impl Strategy<Value = Comparison> {
    prop_oneof![
        Just(Comparison::Eq),
        Just(Comparison::Ne),
        Just(Comparison::Lt),
        Just(Comparison::Le),
        Just(Comparison::Gt),
        Just(Comparison::Ge),
    ]
}

fn arithmetic() -> impl Strategy<Value = Arithmetic> {
    prop_oneof![
        Just(Arithmetic::Add),
        Just(Arithmetic::Sub),
        Just(Arithmetic::Mul),
        Just(Arithmetic::Div),
        Just(Arithmetic::Rem),
    ]
}

/// Trees over `names` and `texts`.
fn expr(names: BoxedStrategy<String>, texts: BoxedStrategy<String>) -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        literal(texts.clone()).prop_map(Expr::Literal),
        proptest::sample::select(Property::ALL.to_vec()).prop_map(Expr::Property),
        names.prop_map(Expr::Header),
    ];
    leaf.prop_recursive(4, 24, 3, move |inner| {
        let boxed = || inner.clone().prop_map(Box::new);
        prop_oneof![
            boxed().prop_map(Expr::Neg),
            (arithmetic(), boxed(), boxed()).prop_map(|(op, l, r)| Expr::Arithmetic(op, l, r)),
            (comparison(), boxed(), boxed()).prop_map(|(op, l, r)| Expr::Compare(op, l, r)),
            (boxed(), boxed(), boxed(), any::<bool>()).prop_map(|(value, low, high, negated)| {
                Expr::Between {
                    value,
                    low,
                    high,
                    negated,
                }
            }),
            (
                boxed(),
                proptest::collection::vec(listed(texts.clone()), 1..4),
                any::<bool>()
            )
                .prop_map(|(value, list, negated)| Expr::In {
                    value,
                    list,
                    negated
                }),
            (
                boxed(),
                texts.clone(),
                proptest::option::of(prop_oneof![Just('!'), any::<char>()]),
                any::<bool>()
            )
                .prop_map(|(value, pattern, escape, negated)| Expr::Like {
                    value,
                    pattern,
                    escape,
                    negated,
                }),
            (boxed(), any::<bool>()).prop_map(|(value, negated)| Expr::IsNull { value, negated }),
            boxed().prop_map(Expr::Not),
            (boxed(), boxed()).prop_map(|(l, r)| Expr::And(l, r)),
            (boxed(), boxed()).prop_map(|(l, r)| Expr::Or(l, r)),
        ]
    })
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        Just(HeaderValue::Void),
        any::<bool>().prop_map(HeaderValue::Bool),
        (-5i64..5).prop_map(HeaderValue::Int),
        (-8i32..8).prop_map(|value| HeaderValue::Float(f64::from(value) / 2.0)),
        small_text().prop_map(HeaderValue::Text),
        (0i64..3).prop_map(HeaderValue::Timestamp),
        Just(HeaderValue::Bytes(vec![1])),
    ]
}

fn message() -> impl Strategy<Value = (Message, String)> {
    (
        proptest::collection::vec(proptest::option::of(header_value()), HEADERS.len()),
        proptest::option::of(0u8..10),
        proptest::option::of(small_text()),
        small_text(),
    )
        .prop_map(|(values, priority, message_id, routing_key)| {
            let mut message = Message::new(&b"body"[..]);
            for (name, value) in HEADERS.iter().zip(values) {
                if let Some(value) = value {
                    message = message.with_header(name, value);
                }
            }
            message.properties.priority = priority;
            message.properties.message_id = message_id;
            (message, routing_key)
        })
}

/// The reference's values: numbers are exact integers or decimals.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    Other,
}

const FALSE: u8 = 0;
const UNKNOWN: u8 = 1;
const TRUE: u8 = 2;

fn tri(value: Option<bool>) -> u8 {
    match value {
        Some(true) => TRUE,
        Some(false) => FALSE,
        None => UNKNOWN,
    }
}

fn from_literal(literal: &Literal) -> Value {
    match literal {
        Literal::Null => Value::Null,
        Literal::Bool(value) => Value::Bool(*value),
        Literal::Int(value) => Value::Int(i128::from(*value)),
        Literal::Float(value) => Value::Float(*value),
        Literal::Text(text) => Value::Text(text.clone()),
    }
}

fn numeric(value: i128) -> Value {
    if i64::try_from(value).is_ok() {
        Value::Int(value)
    } else {
        Value::Float(value as f64)
    }
}

fn as_float(value: &Value) -> Option<f64> {
    match value {
        Value::Int(value) => Some(*value as i64 as f64),
        Value::Float(value) => Some(*value),
        _ => None,
    }
}

struct Reference<'a> {
    message: &'a Message,
    routing_key: &'a str,
}

impl Reference<'_> {
    fn property(&self, property: Property) -> Value {
        let properties = &self.message.properties;
        let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::Text);
        match property {
            Property::ContentType => text(&properties.content_type),
            Property::ContentEncoding => text(&properties.content_encoding),
            Property::DeliveryMode => Value::Int(1),
            Property::Priority => properties
                .priority
                .map_or(Value::Null, |priority| Value::Int(i128::from(priority))),
            Property::CorrelationId => text(&properties.correlation_id),
            Property::ReplyTo => text(&properties.reply_to),
            Property::Expiration => Value::Null,
            Property::MessageId => text(&properties.message_id),
            Property::Timestamp => Value::Null,
            Property::Type => text(&properties.kind),
            Property::UserId => text(&properties.user_id),
            Property::AppId => text(&properties.app_id),
            Property::RoutingKey => Value::Text(self.routing_key.to_owned()),
            Property::Exchange => Value::Text("ex".to_owned()),
        }
    }

    fn value(&self, expr: &Expr) -> Value {
        match expr {
            Expr::Literal(literal) => from_literal(literal),
            Expr::Property(property) => self.property(*property),
            Expr::Header(name) => match self.message.properties.headers.get(name) {
                None | Some(HeaderValue::Void) => Value::Null,
                Some(HeaderValue::Bool(value)) => Value::Bool(*value),
                Some(HeaderValue::Int(value) | HeaderValue::Timestamp(value)) => {
                    Value::Int(i128::from(*value))
                }
                Some(HeaderValue::Float(value)) => Value::Float(*value),
                Some(HeaderValue::Text(text)) => Value::Text(text.clone()),
                Some(_) => Value::Other,
            },
            Expr::Neg(inner) => match self.value(inner) {
                Value::Int(value) => numeric(-value),
                Value::Float(value) => Value::Float(-value),
                _ => Value::Null,
            },
            Expr::Arithmetic(op, left, right) => {
                let (left, right) = (self.value(left), self.value(right));
                if let (Value::Int(l), Value::Int(r)) = (&left, &right) {
                    let exact = match op {
                        Arithmetic::Add => l + r,
                        Arithmetic::Sub => l - r,
                        Arithmetic::Mul => l * r,
                        Arithmetic::Div | Arithmetic::Rem if *r == 0 => return Value::Null,
                        Arithmetic::Div => l / r,
                        Arithmetic::Rem => l % r,
                    };
                    if i64::try_from(exact).is_ok() {
                        return Value::Int(exact);
                    }
                }
                let (Some(l), Some(r)) = (as_float(&left), as_float(&right)) else {
                    return Value::Null;
                };
                let result = match op {
                    Arithmetic::Add => l + r,
                    Arithmetic::Sub => l - r,
                    Arithmetic::Mul => l * r,
                    Arithmetic::Div => l / r,
                    Arithmetic::Rem => l % r,
                };
                if result.is_finite() {
                    Value::Float(result)
                } else {
                    Value::Null
                }
            }
            _ => match self.truth(expr) {
                TRUE => Value::Bool(true),
                FALSE => Value::Bool(false),
                _ => Value::Null,
            },
        }
    }

    fn compare(op: Comparison, left: &Value, right: &Value) -> u8 {
        use std::cmp::Ordering;
        let ordering: Option<Ordering> = match (left, right) {
            (Value::Int(l), Value::Int(r)) => Some(l.cmp(r)),
            (Value::Text(l), Value::Text(r)) => Some(l.cmp(r)),
            (Value::Bool(l), Value::Bool(r)) => {
                return match op {
                    Comparison::Eq => tri(Some(l == r)),
                    Comparison::Ne => tri(Some(l != r)),
                    _ => UNKNOWN,
                };
            }
            _ => match (as_float(left), as_float(right)) {
                (Some(l), Some(r)) => l.partial_cmp(&r),
                _ => None,
            },
        };
        let Some(ordering) = ordering else {
            return UNKNOWN;
        };
        let holds = match op {
            Comparison::Eq => ordering.is_eq(),
            Comparison::Ne => ordering.is_ne(),
            Comparison::Lt => ordering.is_lt(),
            Comparison::Le => ordering.is_le(),
            Comparison::Gt => ordering.is_gt(),
            Comparison::Ge => ordering.is_ge(),
        };
        tri(Some(holds))
    }

    fn truth(&self, expr: &Expr) -> u8 {
        let negate = |value: u8, negated: bool| if negated { TRUE - value } else { value };
        match expr {
            Expr::Not(inner) => TRUE - self.truth(inner),
            Expr::And(l, r) => self.truth(l).min(self.truth(r)),
            Expr::Or(l, r) => self.truth(l).max(self.truth(r)),
            Expr::Compare(op, l, r) => Self::compare(*op, &self.value(l), &self.value(r)),
            Expr::Between {
                value,
                low,
                high,
                negated,
            } => {
                let value = self.value(value);
                let inside = Self::compare(Comparison::Ge, &value, &self.value(low))
                    .min(Self::compare(Comparison::Le, &value, &self.value(high)));
                negate(inside, *negated)
            }
            Expr::In {
                value,
                list,
                negated,
            } => {
                let value = self.value(value);
                let found = list
                    .iter()
                    .map(|literal| Self::compare(Comparison::Eq, &value, &from_literal(literal)))
                    .max()
                    .unwrap_or(FALSE);
                negate(found, *negated)
            }
            Expr::Like {
                value,
                pattern,
                escape,
                negated,
            } => match self.value(value) {
                Value::Text(text) => {
                    let mut regex = String::from("(?s)^");
                    let mut chars = pattern.chars();
                    while let Some(c) = chars.next() {
                        if Some(c) == *escape {
                            let literal = chars.next().unwrap_or(c);
                            regex.push_str(&regex::escape(&literal.to_string()));
                        } else if c == '%' {
                            regex.push_str(".*");
                        } else if c == '_' {
                            regex.push('.');
                        } else {
                            regex.push_str(&regex::escape(&c.to_string()));
                        }
                    }
                    regex.push('$');
                    let matched = regex::Regex::new(&regex).expect("regex").is_match(&text);
                    negate(tri(Some(matched)), *negated)
                }
                _ => UNKNOWN,
            },
            Expr::IsNull { value, negated } => {
                negate(tri(Some(self.value(value) == Value::Null)), *negated)
            }
            _ => match self.value(expr) {
                Value::Bool(value) => tri(Some(value)),
                _ => UNKNOWN,
            },
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn a_written_filter_parses_back_to_the_same_tree(
        tree in expr(any_text().boxed(), any_text()),
    ) {
        let text = tree.to_string();
        let parsed = Filter::parse(&text)
            .unwrap_or_else(|error| panic!("{text}: {error}"));
        prop_assert_eq!(parsed.expr(), &tree, "{}", text);
    }

    #[test]
    fn matching_agrees_with_the_reference(
        tree in expr(proptest::sample::select(HEADERS.to_vec()).prop_map(str::to_owned).boxed(), small_text()),
        (message, routing_key) in message(),
    ) {
        let filter = Filter::parse(&tree.to_string()).expect("parse");
        let reference = Reference { message: &message, routing_key: &routing_key };
        prop_assert_eq!(
            filter.matches(&message, "ex", &routing_key),
            reference.truth(&tree) == TRUE,
            "{}",
            tree
        );
    }
}
