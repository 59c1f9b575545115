//! Content filters: a small expression language over a message's properties and headers, in
//! the spirit of JMS selectors (SQL-92 conditional expressions), evaluated by the broker before
//! a message is routed or delivered.
//!
//! ```text
//! country IN ('IT', 'FR') AND amount BETWEEN 10 AND 100 AND NOT "x-test" IS NOT NULL
//! properties.priority > 4 OR properties.routing_key LIKE 'eu.%'
//! ```
//!
//! - Literals: integers (`42`), decimals (`1.5`, `2e3`), strings in single quotes (`'it''s'`),
//!   `TRUE`, `FALSE`, `NULL`. Keywords are case-insensitive.
//! - Names: `properties.NAME` is a message property (see [`Property`]); any other name is an
//!   application header, and a header whose name is not a plain identifier is written in double
//!   quotes (`"x-country"`).
//! - Operators, loosest first: `OR`; `AND`; `NOT`; comparisons `= <> != < <= > >=`, `[NOT]
//!   BETWEEN a AND b`, `[NOT] IN (literal, …)`, `[NOT] LIKE 'pattern' [ESCAPE 'c']` (`%` any run,
//!   `_` one character), `IS [NOT] NULL`; `+ -`; `* / %`; unary `-` and `+`.
//! - Logic is SQL's three-valued one: a missing header is NULL, a comparison with NULL or
//!   between unlike types is unknown, and a message matches only when the whole expression is
//!   true.
//!
//! Main items: [`Filter::parse`] (errors name the character position), [`Filter::matches`],
//! [`Expr`] (the syntax tree; its `Display` writes text that parses back to the same tree).

mod eval;
mod parse;

use std::fmt;
use std::sync::Arc;

use postino_types::Message;

/// The longest filter text accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 8 * 1024;

/// The deepest nesting accepted (parentheses, operators, `NOT`s).
pub const MAX_FILTER_DEPTH: usize = 64;

/// A parsed filter, cheap to clone and to share between bindings and consumers.
#[derive(Debug, Clone)]
pub struct Filter {
    text: Arc<str>,
    expr: Arc<Expr>,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Filter {
    /// Parses `text`.
    ///
    /// # Errors
    /// A [`FilterError`] naming the position of the first thing that is wrong.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        Ok(Self {
            expr: Arc::new(parse::parse(text)?),
            text: Arc::from(text),
        })
    }

    /// Whether `message`, published with `routing_key` to `exchange`, matches: the expression
    /// is true (not false, not unknown).
    #[must_use]
    pub fn matches(&self, message: &Message, exchange: &str, routing_key: &str) -> bool {
        let fields = Fields {
            message,
            exchange,
            routing_key,
        };
        eval::truth(&self.expr, &fields) == Some(true)
    }

    /// The text it was parsed from.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    #[must_use]
    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}

/// What a filter is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub message: &'a Message,
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// Why a filter text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter error at position {position}: {reason}")]
pub struct FilterError {
    /// 1-based, in characters.
    pub position: usize,
    pub reason: String,
}

/// A literal value, and the value of an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// The message properties a filter can name, as `properties.NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    ContentType,
    ContentEncoding,
    /// 1 transient, 2 persistent.
    DeliveryMode,
    Priority,
    CorrelationId,
    ReplyTo,
    /// Milliseconds.
    Expiration,
    MessageId,
    /// Milliseconds since the epoch.
    Timestamp,
    Type,
    UserId,
    AppId,
    /// The routing key it was published with.
    RoutingKey,
    /// The exchange it was published to (`""` for the default one).
    Exchange,
}

impl Property {
    pub const ALL: [Property; 14] = [
        Property::ContentType,
        Property::ContentEncoding,
        Property::DeliveryMode,
        Property::Priority,
        Property::CorrelationId,
        Property::ReplyTo,
        Property::Expiration,
        Property::MessageId,
        Property::Timestamp,
        Property::Type,
        Property::UserId,
        Property::AppId,
        Property::RoutingKey,
        Property::Exchange,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Property::ContentType => "content_type",
            Property::ContentEncoding => "content_encoding",
            Property::DeliveryMode => "delivery_mode",
            Property::Priority => "priority",
            Property::CorrelationId => "correlation_id",
            Property::ReplyTo => "reply_to",
            Property::Expiration => "expiration",
            Property::MessageId => "message_id",
            Property::Timestamp => "timestamp",
            Property::Type => "type",
            Property::UserId => "user_id",
            Property::AppId => "app_id",
            Property::RoutingKey => "routing_key",
            Property::Exchange => "exchange",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Property::ALL
            .into_iter()
            .find(|property| property.name().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// The syntax tree of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Literal),
    Property(Property),
    Header(String),
    Neg(Box<Expr>),
    Arithmetic(Arithmetic, Box<Expr>, Box<Expr>),
    Compare(Comparison, Box<Expr>, Box<Expr>),
    Between {
        value: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    In {
        value: Box<Expr>,
        list: Vec<Literal>,
        negated: bool,
    },
    Like {
        value: Box<Expr>,
        pattern: String,
        escape: Option<char>,
        negated: bool,
    },
    IsNull {
        value: Box<Expr>,
        negated: bool,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

fn quoted(f: &mut fmt::Formatter<'_>, text: &str, quote: char) -> fmt::Result {
    write!(f, "{quote}")?;
    for c in text.chars() {
        if c == quote {
            write!(f, "{quote}")?;
        }
        write!(f, "{c}")?;
    }
    write!(f, "{quote}")
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("NULL"),
            Literal::Bool(true) => f.write_str("TRUE"),
            Literal::Bool(false) => f.write_str("FALSE"),
            Literal::Int(value) => write!(f, "{value}"),
            // `{:?}` writes the shortest text that reads back to the same number, with a `.`
            // or an exponent, so it reads back as a decimal.
            Literal::Float(value) => write!(f, "{value:?}"),
            Literal::Text(text) => quoted(f, text, '\''),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparison::Eq => "=",
            Comparison::Ne => "<>",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        })
    }
}

impl fmt::Display for Arithmetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arithmetic::Add => "+",
            Arithmetic::Sub => "-",
            Arithmetic::Mul => "*",
            Arithmetic::Div => "/",
            Arithmetic::Rem => "%",
        })
    }
}

/// Writes every compound expression in parentheses, so the text parses back to the same tree
/// whatever the precedence.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |negated: bool| if negated { "NOT " } else { "" };
        match self {
            Expr::Literal(literal) => literal.fmt(f),
            Expr::Property(property) => write!(f, "properties.{}", property.name()),
            Expr::Header(name) => quoted(f, name, '"'),
            Expr::Neg(value) => write!(f, "(-({value}))"),
            Expr::Arithmetic(op, left, right) => write!(f, "({left} {op} {right})"),
            Expr::Compare(op, left, right) => write!(f, "({left} {op} {right})"),
            Expr::Between {
                value,
                low,
                high,
                negated,
            } => write!(f, "({value} {}BETWEEN {low} AND {high})", not(*negated)),
            Expr::In {
                value,
                list,
                negated,
            } => {
                write!(f, "({value} {}IN (", not(*negated))?;
                for (index, literal) in list.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    literal.fmt(f)?;
                }
                f.write_str("))")
            }
            Expr::Like {
                value,
                pattern,
                escape,
                negated,
            } => {
                write!(f, "({value} {}LIKE ", not(*negated))?;
                quoted(f, pattern, '\'')?;
                if let Some(escape) = escape {
                    f.write_str(" ESCAPE ")?;
                    quoted(f, &escape.to_string(), '\'')?;
                }
                f.write_str(")")
            }
            Expr::IsNull { value, negated } => write!(f, "({value} IS {}NULL)", not(*negated)),
            Expr::Not(value) => write!(f, "(NOT {value})"),
            Expr::And(left, right) => write!(f, "({left} AND {right})"),
            Expr::Or(left, right) => write!(f, "({left} OR {right})"),
        }
    }
}
